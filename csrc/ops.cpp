// Schemas of the compiled (native) ops and the Python module fastattn._C.
//
// Loading fastattn._C runs the static registrations of every translation
// unit linked into it: this file defines the op schemas once, csrc/cpu/*.cpp
// register CPU kernels and csrc/cuda/*_binding.cpp register CUDA kernels for
// them (TORCH_LIBRARY_IMPL), so one op serves both devices through torch's
// dispatcher. The Python side (fastattn/ops/) wraps them in the public,
// autograd-aware custom ops; the contracts are documented there.
#include <Python.h>
#include <torch/library.h>

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
  // Contract: fastattn/ops/attention.py (the Python ops minus `backend`).
  m.def(
      "attention_fwd_native(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
      "Tensor? q_lengths, Tensor? kv_lengths, Tensor? seed, bool causal, float scale, "
      "float dropout_p) -> (Tensor, Tensor)");
  m.def(
      "attention_bwd_native(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, "
      "Tensor out, Tensor lse, Tensor? attn_mask, Tensor? q_lengths, Tensor? kv_lengths, "
      "Tensor? seed, bool causal, float scale, float dropout_p, bool mask_grad) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
}

static struct PyModuleDef fastattn_c_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "Compiled kernels of fastattn; importing registers them with torch.library.",
    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fastattn_c_module); }
