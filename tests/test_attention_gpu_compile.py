"""The attention kernels compile for the GPUs they target, without a GPU.

The interpreter runs the kernels' Python, not Triton's GPU compiler: code
that only the compiler rejects (types of constexprs, scalar/tensor mixes,
shared-memory overflow) would first fail on a GPU. Triton compiles ahead of
time for a named target with its bundled ptxas, so each kernel is built here
for sm_80 and sm_90 with a representative configuration. It runs in a
subprocess because this process defines the kernels for the interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import os, sys
    os.environ.pop("TRITON_INTERPRET", None)
    import triton, triton.language as tl
    from triton.compiler import ASTSource
    from triton.backends.compiler import GPUTarget
    from fastattn.triton import attention_fwd as F, attention_bwd as Bw

    arch, dt, D, mask_kind = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    P = "*" + dt
    mask_ptr = "*u8" if mask_kind == 1 else P
    # dropout on two of the four cases, packed (varlen) sequences on the others
    dropout = mask_kind != 0
    common = dict(BLOCK_D=max(16, triton.next_power_of_2(D)), CAUSAL=True, MASK_KIND=mask_kind,
                  HAS_QLENS=True, HAS_KVLENS=True, ACC_DTYPE=tl.float32,
                  DOT_PRECISION="ieee" if dt == "fp32" else "tf32",
                  DROPOUT=dropout, VARLEN=not dropout, SOFTCAP=False, ALIBI=False,
                  REL_BIAS=False, WINDOW_LEFT=False, WINDOW_RIGHT=False)
    base = dict(Q=P, K=P, V=P, Lse="*fp32", Mask=mask_ptr, QLens="*i32", KVLens="*i32",
                Seed="*i64", Slopes="*fp32", RelBias="*fp32")
    kernels = [
        (F.attention_fwd_kernel, dict(base, Out=P), dict(common, BLOCK_M=64, BLOCK_N=32), 4, 2),
        (Bw.attention_bwd_dkdv_kernel, dict(base, DOut=P, Delta="*fp32", DK=P, DV=P),
         dict(common, BLOCK_M=16, BLOCK_N=32), 4, 2),
        (Bw.attention_bwd_dq_kernel,
         dict(base, DOut=P, Delta="*fp32", DQ=P, DBias="*fp32", DRel="*fp32"),
         dict(common, STORE_DBIAS=mask_kind == 2, STORE_DREL=False, BLOCK_M=32, BLOCK_N=16),
         4, 2),
        (Bw.attention_bwd_preprocess_kernel,
         dict(Out=P, DOut=P, DLse="*fp32", Delta="*fp32"),
         dict(BLOCK_D=common["BLOCK_D"], HAS_DLSE=True, ACC_DTYPE=tl.float32, BLOCK_M=32), 4, 1),
    ]
    for fn, ptrs, consts, warps, stages in kernels:
        sig = {n: "constexpr" if n in consts else
               ptrs.get(n, "fp32" if n in ("qk_scale", "scale", "drop_scale", "softcap")
                        else "i32")
               for n in fn.arg_names}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", arch, 32),
                           options=dict(num_warps=warps, num_stages=stages))
        assert k.metadata.shared <= 160 * 1024, (fn.__name__, k.metadata.shared)
        print(fn.__name__, "ok", k.metadata.shared)
''')


@pytest.mark.parametrize("arch,dtype,head_dim,mask_kind", [
    (90, "fp16", 128, 2),
    (90, "bf16", 40, 1),
    (80, "fp16", 256, 0),
    (80, "fp32", 64, 2),
])
def test_kernels_compile_for_gpu_targets(arch, dtype, head_dim, mask_kind, tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(arch), dtype, str(head_dim),
                             str(mask_kind)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(" ok ") == 4, result.stdout
