"""Triton kernels, one module per op family. Imported lazily by fastattn.ops."""

from __future__ import annotations

import functools
import inspect

import torch


def on_device_of(name: str):
    """Decorator of a launcher: run it with the current CUDA device set to
    the device of its tensor argument `name`.

    Triton compiles for, and launches on, the current device and that
    device's current stream, whatever device the tensors live on. Without
    the guard, tensors on cuda:1 while cuda:0 is current would be read by a
    kernel on cuda:0 (an illegal address, or a race with the cuda:1 stream
    that produced them). Inside the guard the current stream is the current
    stream of the tensors' device, the one torch's own ops on them use.
    CPU tensors (the interpreter) need no guard.
    """
    def wrap(fn):
        index = list(inspect.signature(fn).parameters).index(name)

        @functools.wraps(fn)
        def launcher(*args, **kwargs):
            t = args[index] if index < len(args) else kwargs[name]
            if t.device.type != "cuda":
                return fn(*args, **kwargs)
            with torch.cuda.device(t.device):
                return fn(*args, **kwargs)
        return launcher
    return wrap
