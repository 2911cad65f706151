// Schemas of the compiled (native) ops and the Python module fastattn._C.
//
// Loading fastattn._C runs the static registrations of every translation
// unit linked into it: this file defines the op schemas once, csrc/cpu/*.cpp
// register CPU kernels and csrc/cuda/*_binding.cpp register CUDA kernels for
// them (TORCH_LIBRARY_IMPL), so one op serves both devices through torch's
// dispatcher. The Python side (fastattn/ops/) wraps them in the public,
// autograd-aware custom ops; the contracts are documented there.
//
// The module itself carries the compiled fast path of the public ops
// (csrc/fast_path.cpp). It is named by TORCH_EXTENSION_NAME, which torch's
// build helpers define: "_C" for fastattn._C built at install, the name
// fastattn/_extension.py gives the same sources built on first use (that
// build is imported as a Python module too: fastattn/_backends.py,
// fast_module).
#include <Python.h>
#include <torch/library.h>

#include "fast_path.h"

TORCH_LIBRARY_FRAGMENT(fastattn, m) {
  // Contract: fastattn/ops/norm.py.
  m.def(
      "norm_fwd_native(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, "
      "Tensor? seed, float eps, float dropout_p, bool is_rms, bool store_h) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "norm_bwd_native(Tensor dy, Tensor? dh_out, Tensor h, Tensor? weight, "
      "Tensor? bias, Tensor mean, Tensor rstd, Tensor? seed, float dropout_p, "
      "bool is_rms, bool has_residual) -> (Tensor, Tensor, Tensor, Tensor)");
  // Contract: fastattn/ops/attention.py (the Python ops minus `backend`);
  // the variant arguments: fastattn/ops/variants.py, KernelVariants (off by
  // default; rel_per_row for packed sequences). The backward's fifth output
  // is the score gradient summed per relative position, (Hq, 2 R + 1)
  // float64, when rel_grad; (0,) otherwise.
  m.def(
      "attention_fwd_native(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
      "Tensor? q_lengths, Tensor? kv_lengths, Tensor? seed, bool causal, float scale, "
      "float dropout_p, int window_left=-1, int window_right=-1, float softcap=0., "
      "Tensor? alibi_slopes=None, Tensor? rel_table=None, Tensor? rel_buckets=None, "
      "int rel_radius=0, bool rel_per_row=False) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd_native(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, Tensor? attn_mask, Tensor? q_lengths, Tensor? kv_lengths, "
      "Tensor? seed, bool causal, float scale, float dropout_p, bool mask_grad, "
      "int window_left=-1, int window_right=-1, float softcap=0., Tensor? alibi_slopes=None, "
      "Tensor? rel_table=None, Tensor? rel_buckets=None, int rel_radius=0, "
      "bool rel_per_row=False, bool rel_grad=False) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Contract: fastattn/ops/attention_varlen.py (the Python ops minus
  // `backend` and `deterministic`; the variants always per sequence). lse
  // (Hq, total_q) float64; the backward reads a float32 or float64 lse and
  // returns drel as attention_bwd_native does.
  m.def(
      "attention_varlen_fwd_native(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "
      "Tensor cu_seqlens_k, Tensor? seed, int max_seqlen_q, int max_seqlen_k, bool causal, "
      "float scale, float dropout_p, int window_left=-1, int window_right=-1, "
      "float softcap=0., Tensor? alibi_slopes=None, Tensor? rel_table=None, "
      "Tensor? rel_buckets=None, int rel_radius=0) -> (Tensor, Tensor)");
  m.def(
      "attention_varlen_bwd_native(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k, Tensor? seed, "
      "int max_seqlen_q, int max_seqlen_k, bool causal, float scale, float dropout_p, "
      "int window_left=-1, int window_right=-1, float softcap=0., "
      "Tensor? alibi_slopes=None, Tensor? rel_table=None, Tensor? rel_buckets=None, "
      "int rel_radius=0, bool rel_grad=False) -> (Tensor, Tensor, Tensor, Tensor)");
}

#ifndef TORCH_EXTENSION_NAME
#define TORCH_EXTENSION_NAME _C
#endif
#define FASTATTN_STR2(x) #x
#define FASTATTN_STR(x) FASTATTN_STR2(x)
#define FASTATTN_CAT2(a, b) a##b
#define FASTATTN_CAT(a, b) FASTATTN_CAT2(a, b)

static struct PyModuleDef fastattn_c_module = {
    PyModuleDef_HEAD_INIT, FASTATTN_STR(TORCH_EXTENSION_NAME),
    "Compiled kernels of fastattn; importing registers them with torch.library.\n"
    "Its functions are the compiled fast path of the public ops "
    "(fastattn/ops/_eager.py).",
    -1, nullptr};

PyMODINIT_FUNC FASTATTN_CAT(PyInit_, TORCH_EXTENSION_NAME)(void) {
  fastattn_c_module.m_methods = fastattn::fast::methods();
  return PyModule_Create(&fastattn_c_module);
}
