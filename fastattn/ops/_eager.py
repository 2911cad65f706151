"""When a call may bypass the ``torch.library`` op layer.

Each public function reaches its kernels through a ``torch.library`` custom
op, which is what torch.compile, fake tensors, dispatch modes and
functorch see. Its Python wrapper costs about 20 us per call without
autograd and about 60 us with it, several times a small kernel's run time
(decoding, small models). In plain eager execution none of what it
provides is needed, so the frontends call the backend directly (inference)
or through an equivalent ``torch.autograd.Function`` (training): the same
kernels with the same arguments, so the same results.
"""

from __future__ import annotations

import torch

# Tensor types the kernels take as they are (Parameter: a module's weight).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager_ok(*tensors) -> bool:
    """True in plain eager execution: no torch.compile or torch.jit.trace
    tracing, no dispatch mode or functorch transform active, plain tensors
    (no fake, meta or subclass tensors). None entries are skipped."""
    if torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        return False
    if torch._C._len_torch_dispatch_stack() or torch._C._functorch.peek_interpreter_stack():
        return False
    return all(t is None or (type(t) in _PLAIN and not t.is_meta) for t in tensors)


def needs_grad(*tensors) -> bool:
    """Whether autograd records this call: grad mode on and some input
    requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
