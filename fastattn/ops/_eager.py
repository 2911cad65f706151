"""When a call may skip the ``torch.library`` op layer.

Each public function reaches its kernels through a ``torch.library`` custom
op, which is what torch.compile, fake tensors, dispatch modes and autograd
see. Going through that layer's Python wrapper costs about 20 us per call,
several times a small kernel's run time (decoding, tiny models). When none
of what it provides is needed, the frontend calls the backend directly:
the same kernels with the same arguments, so the results are identical.
"""

from __future__ import annotations

import torch

# Tensor types the kernels take as they are (Parameter: a module's weight).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def direct_call_ok(*tensors) -> bool:
    """True when the op layer would add nothing: eager execution (no
    torch.compile tracing), no autograd graph to record (grad mode off or no
    input requiring grad), plain tensors (no fake, meta or subclass
    tensors), and no dispatch mode or functorch transform active."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._functorch.peek_interpreter_stack():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is None:
            continue
        if type(t) not in _PLAIN or t.is_meta or (grad and t.requires_grad):
            return False
    return True
