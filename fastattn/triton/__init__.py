"""Triton kernels, one module per op family. Imported lazily by fastattn.ops."""
