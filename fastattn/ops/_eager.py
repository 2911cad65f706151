"""When a call may bypass the ``torch.library`` op layer.

Each public function reaches its kernels through a ``torch.library`` custom
op, which is what torch.compile, fake tensors, dispatch modes and
functorch see. Its Python wrapper costs about 20 us per call without
autograd and about 60 us with it, several times a small kernel's run time
(decoding, small models). In plain eager execution none of what it
provides is needed, so there are two shortcuts, both running the same
kernels with the same arguments (so giving the same bits):

1. The compiled fast path (csrc/fast_path.cpp). Each public function
   begins with

       if not _is_compiling():
           out = _eager.fast.<name>(<its arguments>)
           if out is not NotImplemented:
               return out

   and the C++ function does the whole call for the compiled backends:
   the argument checks, the (cached) backend choice, the kernels through
   the dispatcher, and in training a C++ autograd Function equivalent to
   the op's registered autograd. It returns NotImplemented, before any
   side effect, for anything else: invalid arguments (the Python checks
   then raise, naming the argument), tensor subclasses, tracing, dispatch
   and torch function modes, functorch, autocast casts, DEBUG logging,
   the triton and reference backends (its header lists them all).
   torch.compile must not reach it (dynamo cannot trace it): hence the
   torch.compiler.is_compiling() test in Python, which dynamo reads as
   True.
2. The Python frontends then check the arguments and, in plain eager
   execution (eager_ok), call the backend directly (inference) or through
   an equivalent ``torch.autograd.Function`` (training).
"""

from __future__ import annotations

import torch

from .. import _backends

# Tensor types the kernels take as they are (Parameter: a module's weight).
_PLAIN = (torch.Tensor, torch.nn.Parameter)

# What the frontends test first (one call; dynamo folds it to True).
is_compiling = torch.compiler.is_compiling

# The fast path's functions (csrc/fast_path.cpp) the frontends call.
FAST_FUNCTIONS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "attention",
                  "attention_varlen")


def _decline(*args):
    return NotImplemented


class _NoFastPath:
    """A compiled module without the fast path (built from older sources):
    every call declines."""

    def __getattr__(self, name):
        return _decline


class _Pending:
    """`fast` until the compiled kernels are loaded: calls decline (the
    Python path loads the kernels when it needs them; this never does).
    Once they are, `fast` becomes their module."""

    def __getattr__(self, name):
        global fast
        module = _backends.fast_module()
        if module is None:
            return _decline
        fast = module if all(hasattr(module, f) for f in FAST_FUNCTIONS) else _NoFastPath()
        return getattr(fast, name)


fast = _Pending()


def fast_path_active() -> bool:
    """Whether the compiled fast path would consider a call made here (plain
    eager execution, kernels loaded): for tests."""
    module = _backends.fast_module()
    return (module is not None and not is_compiling() and hasattr(module, "plain_eager")
            and module.plain_eager())


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
