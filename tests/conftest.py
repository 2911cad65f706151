import os
import zlib

import pytest
import torch

# Without a GPU the Triton kernels run on CPU tensors through the interpreter.
# Triton reads this when a kernel is defined, so set it before any import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # Fresh random inputs per test, reproducible from the test's name.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield
