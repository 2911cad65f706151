// The compiled fast path of fastattn's public ops.
//
// fastattn.layer_norm, rms_norm, add_layer_norm, add_rms_norm, attention
// (and attention_with_own_lengths) and attention_varlen first call the
// function of the same name here (fastattn/ops/_eager.py says when). In
// plain eager execution, for the compiled backends (cpu; cuda, and varlen
// on cpu only), with arguments of the common shape, it does everything the
// Python frontend does: the argument checks, the backend choice (cached:
// below), the dropout seed, and the native kernels through the dispatcher,
// under a C++ autograd Function equivalent to the Python ops' registered
// autograd when the call is recorded. The kernels, their arguments and the
// order of the random draws are those of the Python path, so results and
// gradients are the same bits.
//
// Anything else returns NotImplemented *before any side effect*, and the
// Python frontend serves the call as before: invalid arguments (so the
// errors still name the argument, raised by the Python checks), tensor
// subclasses, tracing (torch.jit.trace), dispatch modes, torch function
// modes, functorch transforms, autocast, forward-mode AD, python dispatcher
// keys, DEBUG logging (the Python path logs the backend), the triton and
// reference backends, empty inputs, and a few rarer cases (CUDA head dims
// that need padding, length values on CUDA, ...). torch.compile never
// reaches here: the Python prelude tests torch.compiler.is_compiling()
// first (dynamo cannot trace this module).
//
// Backend choice. resolve() caches, per (op family, device type, dtype,
// `backend` argument, FASTATTN_BACKEND value), what
// fastattn._backends.resolve answered (through fast_resolve). The
// environment is read on every call (getenv sees os.environ's changes); the
// cache is dropped whenever fastattn._backends._native_errors or
// fastattn._extension._status is another object than when it was filled
// (what the kernels' availability is computed from; tests replace them).
// Calls whose resolution raises are not cached: the Python path raises.
#include "fast_path.h"

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/Device.h>
#include <torch/csrc/DynamicTypes.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fastattn {
namespace fast {
namespace {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ------------------------------------------------------------ native ops

using T2 = std::tuple<Tensor, Tensor>;
using T4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using T5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;

const auto& norm_fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastattn::norm_fwd_native", "")
          .typed<T4(const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                    const OptTensor&, double, double, bool, bool)>();
  return op;
}

const auto& norm_bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastattn::norm_bwd_native", "")
          .typed<T4(const Tensor&, const OptTensor&, const Tensor&, const OptTensor&,
                    const OptTensor&, const Tensor&, const Tensor&, const OptTensor&, double,
                    bool, bool)>();
  return op;
}

const auto& attention_fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastattn::attention_fwd_native", "")
          .typed<T2(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                    const OptTensor&, const OptTensor&, const OptTensor&, bool, double, double,
                    int64_t, int64_t, double, const OptTensor&, const OptTensor&,
                    const OptTensor&, int64_t, bool)>();
  return op;
}

const auto& attention_varlen_fwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastattn::attention_varlen_fwd_native", "")
          .typed<T2(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const OptTensor&, int64_t, int64_t, bool, double, double, int64_t, int64_t,
                    double, const OptTensor&, const OptTensor&, const OptTensor&, int64_t)>();
  return op;
}

const auto& attention_varlen_bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastattn::attention_varlen_bwd_native", "")
          .typed<T4(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                    const OptTensor&, int64_t, int64_t, bool, double, double, int64_t, int64_t,
                    double, const OptTensor&, const OptTensor&, const OptTensor&, int64_t,
                    bool)>();
  return op;
}

const auto& attention_bwd_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastattn::attention_bwd_native", "")
          .typed<T5(const Tensor&, const OptTensor&, const Tensor&, const Tensor&,
                    const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                    const OptTensor&, const OptTensor&, const OptTensor&, bool, double, double,
                    bool, int64_t, int64_t, double, const OptTensor&, const OptTensor&,
                    const OptTensor&, int64_t, bool, bool)>();
  return op;
}

// The GIL released for a kernel's run (as torch.ops calls release it).
struct NoGil {
  PyThreadState* state;
  NoGil() : state(PyEval_SaveThread()) {}
  ~NoGil() { PyEval_RestoreThread(state); }
  NoGil(const NoGil&) = delete;
  NoGil& operator=(const NoGil&) = delete;
};

// The native ops are called below autograd (they have no autograd kernel;
// the Functions below are their autograd), as the Python path's calls
// reach them: no input requires grad there, or grad mode is off.
T4 norm_fwd(const Tensor& x, const OptTensor& res, const OptTensor& w, const OptTensor& b,
            const OptTensor& seed, double eps, double p, bool is_rms, bool store_h,
            bool release_gil) {
  at::AutoDispatchBelowADInplaceOrView below;
  if (release_gil) {
    NoGil no_gil;
    return norm_fwd_op().call(x, res, w, b, seed, eps, p, is_rms, store_h);
  }
  return norm_fwd_op().call(x, res, w, b, seed, eps, p, is_rms, store_h);
}

T4 norm_bwd(const Tensor& dy, const OptTensor& dh_out, const Tensor& h, const OptTensor& w,
            const OptTensor& b, const Tensor& mean, const Tensor& rstd, const OptTensor& seed,
            double p, bool is_rms, bool has_residual) {
  at::AutoDispatchBelowADInplaceOrView below;
  return norm_bwd_op().call(dy, dh_out, h, w, b, mean, rstd, seed, p, is_rms, has_residual);
}

T2 attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& mask,
                 const OptTensor& ql, const OptTensor& kl, const OptTensor& seed, bool causal,
                 double scale, double p, bool release_gil) {
  at::AutoDispatchBelowADInplaceOrView below;
  if (release_gil) {
    NoGil no_gil;
    return attention_fwd_op().call(q, k, v, mask, ql, kl, seed, causal, scale, p, -1, -1, 0.0,
                                   std::nullopt, std::nullopt, std::nullopt, 0, false);
  }
  return attention_fwd_op().call(q, k, v, mask, ql, kl, seed, causal, scale, p, -1, -1, 0.0,
                                 std::nullopt, std::nullopt, std::nullopt, 0, false);
}

T4 attention_bwd(const Tensor& dout, const OptTensor& dlse, const Tensor& q, const Tensor& k,
                 const Tensor& v, const Tensor& out, const Tensor& lse, const OptTensor& mask,
                 const OptTensor& ql, const OptTensor& kl, const OptTensor& seed, bool causal,
                 double scale, double p, bool mask_grad) {
  at::AutoDispatchBelowADInplaceOrView below;
  // (the fast path serves no variants: their arguments off, no fifth output)
  auto [dq, dk, dv, dmask, drel] =
      attention_bwd_op().call(dout, dlse, q, k, v, out, lse, mask, ql, kl, seed, causal, scale,
                              p, mask_grad, -1, -1, 0.0, std::nullopt, std::nullopt,
                              std::nullopt, 0, false, false);
  return {dq, dk, dv, dmask};
}

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }


// fastattn._rng.draw_seed: torch.randint(0, 2**62, (1,), dtype=int64) on
// the device, from its default generator.
Tensor draw_seed(const at::Device& device) {
  return at::randint(0, int64_t{1} << 62, {1}, at::TensorOptions().dtype(at::kLong).device(device));
}

// --------------------------------------------------------------- state

struct Globals {
  bool tried = false, ok = false;
  PyObject* backends_dict = nullptr;   // fastattn._backends.__dict__
  PyObject* extension_dict = nullptr;  // fastattn._extension.__dict__
  PyObject* fast_resolve = nullptr;    // fastattn._backends.fast_resolve
  PyObject* logger_dict = nullptr;     // logging.getLogger("fastattn").__dict__
  PyObject* logger = nullptr;
  PyObject* s_native_errors = nullptr;
  PyObject* s_status = nullptr;
  PyObject* s_cache = nullptr;
  PyObject* s_is_enabled_for = nullptr;
  PyObject* debug_level = nullptr;     // 10
  PyObject* family_names[2] = {nullptr, nullptr};
};
Globals g;

// The native ops' schemas as the typed handles above call them (csrc/ops.cpp).
constexpr const char* kSchemas[][2] = {
    {"fastattn::norm_fwd_native",
     "fastattn::norm_fwd_native(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, "
     "Tensor? seed, float eps, float dropout_p, bool is_rms, bool store_h) -> "
     "(Tensor, Tensor, Tensor, Tensor)"},
    {"fastattn::norm_bwd_native",
     "fastattn::norm_bwd_native(Tensor dy, Tensor? dh_out, Tensor h, Tensor? weight, "
     "Tensor? bias, Tensor mean, Tensor rstd, Tensor? seed, float dropout_p, bool is_rms, "
     "bool has_residual) -> (Tensor, Tensor, Tensor, Tensor)"},
    {"fastattn::attention_fwd_native",
     "fastattn::attention_fwd_native(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
     "Tensor? q_lengths, Tensor? kv_lengths, Tensor? seed, bool causal, float scale, "
     "float dropout_p, int window_left=-1, int window_right=-1, float softcap=0., "
     "Tensor? alibi_slopes=None, Tensor? rel_table=None, Tensor? rel_buckets=None, "
     "int rel_radius=0, bool rel_per_row=False) -> (Tensor, Tensor)"},
    {"fastattn::attention_bwd_native",
     "fastattn::attention_bwd_native(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, "
     "Tensor out, Tensor lse, Tensor? attn_mask, Tensor? q_lengths, Tensor? kv_lengths, "
     "Tensor? seed, bool causal, float scale, float dropout_p, bool mask_grad, "
     "int window_left=-1, int window_right=-1, float softcap=0., Tensor? alibi_slopes=None, "
     "Tensor? rel_table=None, Tensor? rel_buckets=None, int rel_radius=0, "
     "bool rel_per_row=False, bool rel_grad=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"},
};

// The native ops exist with the schemas this file calls them with (if a
// schema changes without this file, the fast path turns itself off rather
// than call it wrongly; tests/test_fast_path.py notices).
bool schemas_match() {
  for (const auto& entry : kSchemas) {
    const auto op = c10::Dispatcher::singleton().findSchema({entry[0], ""});
    if (!op.has_value() || c10::toString(op->schema()) != entry[1]) return false;
  }
  return true;
}

// On first use (the fastattn package is imported by then); false if the
// fast path cannot work here (it then always declines).
bool ready() {
  if (g.tried) return g.ok;
  g.tried = true;
  if (!schemas_match()) return false;
  PyObject* backends = PyImport_ImportModule("fastattn._backends");
  PyObject* extension = backends ? PyImport_ImportModule("fastattn._extension") : nullptr;
  PyObject* logging = extension ? PyImport_ImportModule("logging") : nullptr;
  PyObject* logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "fastattn") : nullptr;
  if (logger) {
    g.backends_dict = PyModule_GetDict(backends);  // borrowed; the module lives on
    g.extension_dict = PyModule_GetDict(extension);
    Py_INCREF(g.backends_dict);
    Py_INCREF(g.extension_dict);
    g.fast_resolve = PyObject_GetAttrString(backends, "fast_resolve");
    g.logger_dict = PyObject_GetAttrString(logger, "__dict__");
    g.logger = logger;
    g.s_native_errors = PyUnicode_InternFromString("_native_errors");
    g.s_status = PyUnicode_InternFromString("_status");
    g.s_cache = PyUnicode_InternFromString("_cache");
    g.s_is_enabled_for = PyUnicode_InternFromString("isEnabledFor");
    g.debug_level = PyLong_FromLong(10);
    g.family_names[0] = PyUnicode_InternFromString("norm");
    g.family_names[1] = PyUnicode_InternFromString("attention");
    g.ok = g.fast_resolve && g.logger_dict && PyDict_Check(g.logger_dict);
  }
  Py_XDECREF(backends);
  Py_XDECREF(extension);
  Py_XDECREF(logging);
  if (!g.ok) PyErr_Clear();
  return g.ok;
}

// The fastattn logger's DEBUG is on (then the Python path serves: it logs
// the backend of each call). Logger.isEnabledFor caches its answers in
// Logger._cache; a cached False is read directly.
bool debug_logging() {
  PyObject* cache = PyDict_GetItemWithError(g.logger_dict, g.s_cache);  // borrowed
  if (cache && PyDict_Check(cache)) {
    PyObject* cached = PyDict_GetItemWithError(cache, g.debug_level);
    if (cached == Py_False) return false;
  }
  PyErr_Clear();
  PyObject* on = PyObject_CallMethodOneArg(g.logger, g.s_is_enabled_for, g.debug_level);
  if (!on) {
    PyErr_Clear();
    return true;
  }
  const int yes = PyObject_IsTrue(on);
  Py_DECREF(on);
  if (yes < 0) PyErr_Clear();
  return yes != 0;
}

// Plain eager execution, as fastattn/ops/_eager.eager_ok defines it (and
// more): no torch.jit tracing, dispatch mode, torch function mode, nor any
// TLS-included dispatch key beyond the default ones (functorch transforms
// include their FuncTorchDynamicLayer{Front,Back}Mode keys while their
// interpreter stack is not empty; the python dispatcher, functionalization
// etc. include theirs).
bool plain_eager() {
  if (torch::jit::tracer::isTracing()) return false;
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  if (at::impl::torch_function_mode_enabled()) return false;
  if (!(c10::impl::tls_local_dispatch_key_set().included_ - c10::default_included_set).empty()) {
    return false;
  }
  return true;
}

const c10::DispatchKeySet kWrapperKeys({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                        c10::DispatchKey::FuncTorchBatched,
                                        c10::DispatchKey::FuncTorchGradWrapper,
                                        c10::DispatchKey::Conjugate, c10::DispatchKey::Negative,
                                        c10::DispatchKey::ZeroTensor});

// `obj` is a plain tensor the fast path takes: torch.Tensor or
// nn.Parameter (no subclass), strided, on CPU or CUDA, no wrapper keys,
// no forward-mode tangent. Then *out points to it.
bool plain_tensor(PyObject* obj, const Tensor** out) {
  if (!THPVariable_CheckExact(obj)) return false;
  const Tensor& t = THPVariable_Unpack(obj);
  if (!t.defined() || t.layout() != c10::kStrided || t.is_nested()) return false;
  const auto dev = t.device().type();
  if (dev != c10::DeviceType::CPU && dev != c10::DeviceType::CUDA) return false;
  if (t.key_set().has_any(kWrapperKeys)) return false;
  if (t._fw_grad(0).defined()) return false;
  *out = &t;
  return true;
}

// None (-> nullptr) or a plain tensor.
bool opt_tensor(PyObject* obj, const Tensor** out) {
  if (obj == Py_None) {
    *out = nullptr;
    return true;
  }
  return plain_tensor(obj, out);
}

bool is_float(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

bool is_half(at::ScalarType s) { return s == at::kHalf || s == at::kBFloat16; }

// A Python int or float (not a bool) as float() gives it; false for
// anything else (symbolic numbers too) and for an int too large for a
// float (the Python checks raise OverflowError there).
bool real_arg(PyObject* obj, double* out) {
  if (PyFloat_Check(obj)) {
    *out = PyFloat_AS_DOUBLE(obj);
    return true;
  }
  if (PyLong_Check(obj) && !PyBool_Check(obj)) {
    const double d = PyLong_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return false;
    }
    *out = d;
    return true;
  }
  return false;
}

// A Python int (not a bool) that fits int64.
bool int_arg(PyObject* obj, int64_t* out) {
  if (!PyLong_Check(obj) || PyBool_Check(obj)) return false;
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return false;
  }
  *out = v;
  return true;
}

// A strict bool (fastattn._checks.check_flag).
bool flag_arg(PyObject* obj, bool* out) {
  if (obj == Py_True || obj == Py_False) {
    *out = obj == Py_True;
    return true;
  }
  return false;
}

// _checks.check_probability: a real in [0, 1).
bool probability_arg(PyObject* obj, double* out) {
  double p;
  if (!real_arg(obj, &p) || !(p >= 0.0 && p < 1.0)) return false;
  *out = p;
  return true;
}

// --------------------------------------------------------- backend cache

enum Family { kNorm = 0, kAttention = 1 };
enum class Served { kOther, kCpu, kCuda };

struct CacheEntry {
  Family family;
  c10::DeviceType device;
  at::ScalarType dtype;
  std::string requested, env;
  bool env_set;
  Served served;
};

std::vector<CacheEntry> cache;
PyObject* cache_native_errors = nullptr;  // owned: what the cache was filled under
PyObject* cache_status = nullptr;

// Drops the cache unless it was filled under the current objects.
void check_cache_owners() {
  PyObject* ne = PyDict_GetItemWithError(g.backends_dict, g.s_native_errors);
  PyObject* st = ne ? PyDict_GetItemWithError(g.extension_dict, g.s_status) : nullptr;
  if (!ne || !st) PyErr_Clear();
  if (ne == cache_native_errors && st == cache_status && ne) return;
  cache.clear();
  Py_XINCREF(ne);
  Py_XINCREF(st);
  Py_XDECREF(cache_native_errors);
  Py_XDECREF(cache_status);
  cache_native_errors = ne;
  cache_status = st;
}

// The backend fastattn._backends.resolve picks for `requested` (the
// `backend` argument: a str) for family on t's device and dtype, as far as
// the fast path cares: kCpu / kCuda, kOther for any other backend; false
// (decline) if the argument is not a str or resolution raises.
bool resolve(Family family, const Tensor& t, PyObject* requested, Served* out) {
  if (!PyUnicode_Check(requested)) return false;
  Py_ssize_t len = 0;
  const char* req = PyUnicode_AsUTF8AndSize(requested, &len);
  if (!req) {
    PyErr_Clear();
    return false;
  }
  const char* env = std::getenv("FASTATTN_BACKEND");
  const auto device = t.device().type();
  const auto dtype = t.scalar_type();
  check_cache_owners();
  for (const CacheEntry& e : cache) {
    if (e.family == family && e.device == device && e.dtype == dtype &&
        e.requested.size() == static_cast<size_t>(len) &&
        std::memcmp(e.requested.data(), req, len) == 0 && e.env_set == (env != nullptr) &&
        (!env || e.env == env)) {
      *out = e.served;
      return true;
    }
  }
  // Miss: ask Python.
  PyObject* dev = THPDevice_New(t.device());
  if (!dev) {
    PyErr_Clear();
    return false;
  }
  PyObject* dt = reinterpret_cast<PyObject*>(torch::getTHPDtype(dtype));
  PyObject* answer = PyObject_CallFunctionObjArgs(g.fast_resolve, requested,
                                                  g.family_names[family], dev, dt, nullptr);
  Py_DECREF(dev);
  if (!answer) {
    PyErr_Clear();
    return false;
  }
  if (!PyUnicode_Check(answer)) {  // None: resolve raised
    Py_DECREF(answer);
    return false;
  }
  const char* name = PyUnicode_AsUTF8(answer);
  Served served = Served::kOther;
  if (name && std::strcmp(name, "cpu") == 0) served = Served::kCpu;
  if (name && std::strcmp(name, "cuda") == 0) served = Served::kCuda;
  Py_DECREF(answer);
  PyErr_Clear();
  check_cache_owners();  // (resolving may have loaded the kernels)
  // getenv again: the pointer may have been invalidated by Python code.
  const char* env_now = std::getenv("FASTATTN_BACKEND");
  cache.push_back(CacheEntry{family, device, dtype, std::string(req, len),
                             env_now ? std::string(env_now) : std::string(), env_now != nullptr,
                             served});
  *out = served;
  return true;
}

// Everything every fast call needs; false to decline.
bool common_ok() { return ready() && plain_eager() && !debug_logging(); }

PyObject* decline() { Py_RETURN_NOTIMPLEMENTED; }

PyObject* wrap(const Tensor& t) { return THPVariable_Wrap(t); }

PyObject* pair(PyObject* a, PyObject* b) {
  if (!a || !b) {
    Py_XDECREF(a);
    Py_XDECREF(b);
    return nullptr;
  }
  PyObject* t = PyTuple_Pack(2, a, b);
  Py_DECREF(a);
  Py_DECREF(b);
  return t;
}

bool requires_grad(const Tensor* t) { return t && t->requires_grad(); }

// --------------------------------------------------------------- norms

struct NormCfg {
  double eps, dropout_p;
  bool is_rms, store_h;
};

// fastattn/ops/norm.py: _NormFunction (norm_fwd's registered autograd).
struct NormFunction : public torch::autograd::Function<NormFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const OptTensor& res,
                               const OptTensor& w, const OptTensor& b, const OptTensor& seed,
                               const NormCfg& cfg) {
    auto [y, h, mean, rstd] =
        norm_fwd(x, res, w, b, seed, cfg.eps, cfg.dropout_p, cfg.is_rms, cfg.store_h, true);
    ctx->save_for_backward({cfg.store_h ? h : x, w.value_or(Tensor()), b.value_or(Tensor()),
                            mean, rstd, seed.value_or(Tensor())});
    ctx->saved_data["p"] = cfg.dropout_p;
    ctx->saved_data["rms"] = cfg.is_rms;
    ctx->saved_data["res"] = res.has_value();
    // Outputs the caller did not use (h, mean, rstd) get no gradient.
    ctx->set_materialize_grads(false);
    return {y, h, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& normalized = saved[0];
    const Tensor &w = saved[1], &b = saved[2];
    const double p = ctx->saved_data["p"].toDouble();
    const bool is_rms = ctx->saved_data["rms"].toBool();
    const bool has_res = ctx->saved_data["res"].toBool();
    Tensor dy = grads[0];
    Tensor dh_out = grads[1];
    if (!dy.defined()) dy = at::zeros_like(normalized);  // only h was used
    if (dh_out.defined() && dh_out.numel() == 0) dh_out = Tensor();
    auto [dx, dres, dw, db] = norm_bwd(dy.contiguous(), opt(dh_out), normalized, opt(w),
                                       opt(b), saved[3], saved[4], opt(saved[5]), p, is_rms,
                                       has_res);
    if (has_res && dres.numel() == 0) dres = dx;
    return {dx, has_res ? dres : Tensor(), w.defined() ? dw : Tensor(),
            b.defined() ? db : Tensor(), Tensor(), Tensor()};
  }
};

// `t` as a 2-D (rows, n) view with a contiguous last dim, as norm.py's
// _norm makes it: x.reshape(-1, n), then .contiguous() if its last stride
// is not 1. A 2-D x normalized over its last dim is that view already.
Tensor rows_of(const Tensor& t, int64_t n, bool already_2d) {
  Tensor r = already_2d ? t : t.reshape({-1, n});
  return r.stride(-1) == 1 ? r : r.contiguous();
}

// weight.reshape(n).contiguous().
Tensor column_of(const Tensor& t, int64_t n) {
  Tensor c = t.dim() == 1 ? t : t.reshape({n});
  return c.is_contiguous() ? c : c.contiguous();
}

// A float tensor of `shape` on x's device (norm.py's _check_param).
bool param_ok(const Tensor* t, const Tensor& x, c10::IntArrayRef shape) {
  return !t || (is_float(t->scalar_type()) && t->device() == x.device() && t->sizes() == shape);
}

// norm.py: param_dtype_ok.
bool param_dtype_ok(at::ScalarType param, at::ScalarType data) {
  return param == data || (param == at::kFloat && is_half(data));
}

// The four norms after their argument parsing: norm.py's _check_norm_args
// and _norm. shape is the normalized shape (matched against x already).
PyObject* norm_call(PyObject* x_obj, const Tensor& x, const Tensor* residual, const Tensor* weight,
                    const Tensor* bias, const std::vector<int64_t>& shape, PyObject* eps_obj,
                    double dropout_p, bool is_rms, bool prenorm, PyObject* backend) {
  if (!is_float(x.scalar_type())) return decline();
  if (at::autocast::is_autocast_enabled(x.device().type())) {
    // norm.py, _autocast_fp32: half tensors are cast to float32 there.
    for (const Tensor* t : {&x, residual, weight, bias}) {
      if (t && is_half(t->scalar_type())) return decline();
    }
  }
  if (!param_ok(weight, x, shape) || !param_ok(bias, x, shape)) return decline();
  // norm.py, _param_dtypes: layer_norm takes weight and bias in x's dtype
  // (or float32 for half x), one dtype for both; rms_norm casts a weight
  // of another dtype to the one its product is computed in.
  const bool cast_weight =
      is_rms && weight && !param_dtype_ok(weight->scalar_type(), x.scalar_type());
  const at::ScalarType cast_dtype = is_half(x.scalar_type()) ? at::kFloat : x.scalar_type();
  if (!is_rms) {
    for (const Tensor* t : {weight, bias}) {
      if (t && !param_dtype_ok(t->scalar_type(), x.scalar_type())) return decline();
    }
    if (weight && bias && weight->scalar_type() != bias->scalar_type()) return decline();
  }
  if (residual && (residual->scalar_type() != x.scalar_type() ||
                   residual->device() != x.device() || residual->sizes() != x.sizes())) {
    return decline();
  }
  double eps;
  if (eps_obj == Py_None && is_rms) {
    // _checks.default_rms_eps: float32's epsilon for half and float32 data.
    eps = x.scalar_type() == at::kDouble
              ? std::numeric_limits<double>::epsilon()
              : static_cast<double>(std::numeric_limits<float>::epsilon());
  } else if (!real_arg(eps_obj, &eps) || !(eps >= 0.0)) {
    return decline();
  }
  Served served;
  if (!resolve(kNorm, x, backend, &served)) return decline();
  if (served == Served::kOther || x.numel() == 0) return decline();
  if (served == Served::kCuda) {
    // _call_limits: the cuda kernels take weight and bias in x's dtype only.
    if (weight && (cast_weight ? cast_dtype : weight->scalar_type()) != x.scalar_type()) {
      return decline();
    }
    if (bias && bias->scalar_type() != x.scalar_type()) return decline();
  }

  // From here on the call is served (side effects: seed, kernels).
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const bool x_2d = x.dim() == 2 && shape.size() == 1;
  Tensor weight_cast;
  if (cast_weight) {
    weight_cast = weight->to(cast_dtype);
    weight = &weight_cast;
  }
  const Tensor x2 = rows_of(x, n, x_2d);
  OptTensor res2, w1, b1, seed;
  if (residual) res2 = rows_of(*residual, n, x_2d);
  if (weight) w1 = column_of(*weight, n);
  if (bias) b1 = column_of(*bias, n);
  if (dropout_p > 0) seed = draw_seed(x.device());
  const bool uses_h = residual || dropout_p > 0;
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || requires_grad(residual) || requires_grad(weight) ||
                     requires_grad(bias));
  const bool store_h = uses_h && (prenorm || grad);

  Tensor y, h;
  if (grad) {
    variable_list outs =
        NormFunction::apply(x2, res2, w1, b1, seed, NormCfg{eps, dropout_p, is_rms, store_h});
    y = std::move(outs[0]);
    h = std::move(outs[1]);
  } else {
    std::tie(y, h, std::ignore, std::ignore) =
        norm_fwd(x2, res2, w1, b1, seed, eps, dropout_p, is_rms, store_h, true);
  }
  if (!x_2d) y = y.view(x.sizes());
  if (!prenorm) return wrap(y);
  if (!uses_h) {
    Py_INCREF(x_obj);
    return pair(wrap(y), x_obj);
  }
  return pair(wrap(y), wrap(x_2d ? h : h.view(x.sizes())));
}

// normalized_shape of layer_norm / rms_norm (_checks.normalize_shape): an
// int or a tuple/list of ints, non-empty, equal to x's trailing dims.
bool normalized_shape_arg(PyObject* obj, const Tensor& x, std::vector<int64_t>* out) {
  int64_t d;
  if (PyLong_Check(obj)) {
    if (!int_arg(obj, &d)) return false;
    out->assign(1, d);
  } else if (PyTuple_Check(obj) || PyList_Check(obj)) {
    const Py_ssize_t len = PySequence_Fast_GET_SIZE(obj);
    PyObject** items = PySequence_Fast_ITEMS(obj);
    out->resize(len);
    for (Py_ssize_t i = 0; i < len; ++i) {
      if (!int_arg(items[i], &(*out)[i])) return false;
    }
  } else {
    return false;
  }
  const int64_t k = static_cast<int64_t>(out->size());
  if (k == 0 || k > x.dim()) return false;
  for (int64_t i = 0; i < k; ++i) {
    if (x.size(x.dim() - k + i) != (*out)[i]) return false;
  }
  return true;
}

// add_*'s normalized shape (norm.py, _shape_from_weight): weight's shape
// (x's last dim without weight), equal to x's trailing dims.
bool shape_from_weight(const Tensor& x, const Tensor* weight, std::vector<int64_t>* out) {
  if (!weight) {
    if (x.dim() == 0) return false;
    out->assign(1, x.size(-1));
    return true;
  }
  const int64_t k = weight->dim();
  if (k == 0 || k > x.dim()) return false;
  out->assign(weight->sizes().begin(), weight->sizes().end());
  for (int64_t i = 0; i < k; ++i) {
    if (x.size(x.dim() - k + i) != (*out)[i]) return false;
  }
  return true;
}

// layer_norm(x, normalized_shape, weight, bias, eps, backend)
PyObject* py_layer_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *x, *w, *b;
  std::vector<int64_t> shape;
  if (nargs != 6 || !common_ok() || !plain_tensor(args[0], &x) || !opt_tensor(args[2], &w) ||
      !opt_tensor(args[3], &b) || !normalized_shape_arg(args[1], *x, &shape)) {
    return decline();
  }
  return norm_call(args[0], *x, nullptr, w, b, shape, args[4], 0.0, false, false, args[5]);
  END_HANDLE_TH_ERRORS
}

// rms_norm(x, normalized_shape, weight, eps, backend)
PyObject* py_rms_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *x, *w;
  std::vector<int64_t> shape;
  if (nargs != 5 || !common_ok() || !plain_tensor(args[0], &x) || !opt_tensor(args[2], &w) ||
      !normalized_shape_arg(args[1], *x, &shape)) {
    return decline();
  }
  return norm_call(args[0], *x, nullptr, w, nullptr, shape, args[3], 0.0, true, false, args[4]);
  END_HANDLE_TH_ERRORS
}

// add_layer_norm(x, residual, weight, bias, eps, dropout_p, prenorm, backend)
PyObject* py_add_layer_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *x, *r, *w, *b;
  std::vector<int64_t> shape;
  double p;
  bool prenorm;
  if (nargs != 8 || !common_ok() || !plain_tensor(args[0], &x) || !opt_tensor(args[1], &r) ||
      !opt_tensor(args[2], &w) || !opt_tensor(args[3], &b) || !probability_arg(args[5], &p) ||
      !flag_arg(args[6], &prenorm) || !shape_from_weight(*x, w, &shape)) {
    return decline();
  }
  return norm_call(args[0], *x, r, w, b, shape, args[4], p, false, prenorm, args[7]);
  END_HANDLE_TH_ERRORS
}

// add_rms_norm(x, residual, weight, eps, dropout_p, prenorm, backend)
PyObject* py_add_rms_norm(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *x, *r, *w;
  std::vector<int64_t> shape;
  double p;
  bool prenorm;
  if (nargs != 7 || !common_ok() || !plain_tensor(args[0], &x) || !opt_tensor(args[1], &r) ||
      !opt_tensor(args[2], &w) || !probability_arg(args[4], &p) ||
      !flag_arg(args[5], &prenorm) || !shape_from_weight(*x, w, &shape)) {
    return decline();
  }
  return norm_call(args[0], *x, r, w, nullptr, shape, args[3], p, true, prenorm, args[6]);
  END_HANDLE_TH_ERRORS
}

// ----------------------------------------------------------- attention

constexpr int64_t kMaxHeadDim = 256;  // attention.py: MAX_HEAD_DIM
constexpr int64_t kCudaHeadDimStep = 8;  // attention.py: CUDA_HEAD_DIM_STEP

struct AttnCfg {
  bool causal;
  double scale, dropout_p;
  bool mask_grad;  // a floating mask that requires grad
};

// fastattn/ops/attention.py: _AttentionFunction (attention_fwd's
// registered autograd). dlse of an unused lse stays undefined rather than
// zeros: the kernels subtract it (delta_i = dout_i . out_i - dlse_i), and
// x - 0 is x, so the bits are the same.
struct AttentionFunction : public torch::autograd::Function<AttentionFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const OptTensor& mask, const OptTensor& ql,
                               const OptTensor& kl, const OptTensor& seed, const AttnCfg& cfg) {
    auto [out, lse] = attention_fwd(q, k, v, mask, ql, kl, seed, cfg.causal, cfg.scale,
                                    cfg.dropout_p, true);
    ctx->save_for_backward({q, k, v, out, lse, mask.value_or(Tensor()), ql.value_or(Tensor()),
                            kl.value_or(Tensor()), seed.value_or(Tensor())});
    ctx->saved_data["causal"] = cfg.causal;
    ctx->saved_data["scale"] = cfg.scale;
    ctx->saved_data["p"] = cfg.dropout_p;
    ctx->saved_data["mask_grad"] = cfg.mask_grad;
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const bool mask_grad = ctx->saved_data["mask_grad"].toBool();
    Tensor dout = grads[0];
    Tensor dlse = grads[1];
    if (!dout.defined()) dout = at::zeros(s[3].sizes(), s[3].options());  // materialized
    if (dout.stride(-1) != 1) dout = dout.contiguous();
    if (dlse.defined()) dlse = dlse.contiguous();
    auto [dq, dk, dv, dmask] =
        attention_bwd(dout, opt(dlse), s[0], s[1], s[2], s[3], s[4], opt(s[5]), opt(s[6]),
                      opt(s[7]), opt(s[8]), ctx->saved_data["causal"].toBool(),
                      ctx->saved_data["scale"].toDouble(), ctx->saved_data["p"].toDouble(),
                      mask_grad);
    return {dq, dk, dv, mask_grad ? dmask : Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// q, k, v of attention (_check_qkv): float, one dtype and device, 4-D
// (B, H, L, D) or, packed, 3-D (total, H, D); same batch (padded), head
// dim, v shaped as k, Hq % Hkv == 0, D in [1, 256].
bool qkv_ok(const Tensor& q, const Tensor& k, const Tensor& v, bool packed) {
  const int64_t rank = packed ? 3 : 4;
  if (q.dim() != rank || k.dim() != rank || v.dim() != rank) return false;
  if (!is_float(q.scalar_type()) || k.scalar_type() != q.scalar_type() ||
      v.scalar_type() != q.scalar_type()) {
    return false;
  }
  if (k.device() != q.device() || v.device() != q.device()) return false;
  if (!packed && k.size(0) != q.size(0)) return false;
  const int64_t D = q.size(-1);
  if (k.size(-1) != D || v.sizes() != k.sizes()) return false;
  if (k.size(1) == 0 || q.size(1) % k.size(1) != 0) return false;
  return D >= 1 && D <= kMaxHeadDim;
}

// _check_lengths: None, or an int32/int64 (B,) tensor on q's device whose
// values (when checked) are in [0, limit]; returned contiguous.
bool lengths_arg(PyObject* obj, const Tensor& q, int64_t limit, bool check_values, OptTensor* out) {
  const Tensor* t;
  if (!opt_tensor(obj, &t)) return false;
  if (!t) return true;
  const auto st = t->scalar_type();
  if (st != at::kInt && st != at::kLong) return false;
  if (t->dim() != 1 || t->size(0) != q.size(0) || t->device() != q.device()) return false;
  if (check_values && t->numel() > 0) {
    if (!t->is_cpu()) return false;  // a device sync, and CUDA graph capture: Python's
    const int64_t n = t->size(0), stride = t->stride(0);
    for (int64_t i = 0; i < n; ++i) {
      const void* data = t->const_data_ptr();
      const int64_t value = st == at::kInt ? static_cast<const int32_t*>(data)[i * stride]
                                           : static_cast<const int64_t*>(data)[i * stride];
      if (value < 0 || value > limit) return false;
    }
  }
  *out = t->contiguous();
  return true;
}

// _checks.check_scale: None (1/sqrt(D)) or a finite real.
bool scale_arg(PyObject* obj, int64_t D, double* out) {
  if (obj == Py_None) {
    *out = 1.0 / std::sqrt(static_cast<double>(D));
    return true;
  }
  return real_arg(obj, out) && std::isfinite(*out);
}

Tensor last_dim_contiguous(const Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

// attention(q, k, v, causal, attn_mask, q_lengths, kv_lengths, dropout_p,
//           scale, return_lse, backend, deterministic, check_length_values)
PyObject* py_attention(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *q, *k, *v, *mask;
  bool causal, return_lse, deterministic, check_values;
  double dropout_p, scale;
  if (nargs != 13 || !common_ok() || !plain_tensor(args[0], &q) || !plain_tensor(args[1], &k) ||
      !plain_tensor(args[2], &v) || !qkv_ok(*q, *k, *v, false) || !flag_arg(args[3], &causal) ||
      !opt_tensor(args[4], &mask) || !probability_arg(args[7], &dropout_p) ||
      !flag_arg(args[9], &return_lse) || !flag_arg(args[11], &deterministic) ||
      !flag_arg(args[12], &check_values) || !scale_arg(args[8], q->size(3), &scale)) {
    return decline();
  }
  const int64_t B = q->size(0), Hq = q->size(1), Lq = q->size(2), D = q->size(3);
  const int64_t Lk = k->size(2);
  if (mask) {  // _check_mask
    const auto ms = mask->scalar_type();
    if ((ms != at::kBool && !at::isFloatingType(ms)) || mask->device() != q->device() ||
        mask->dim() > 4) {
      return decline();
    }
    const int64_t full[4] = {B, Hq, Lq, Lk};
    for (int64_t i = 1; i <= mask->dim(); ++i) {
      const int64_t s = mask->size(-i);
      if (s != 1 && s != full[4 - i]) return decline();
    }
  }
  OptTensor ql, kl;
  if (!lengths_arg(args[5], *q, Lq, check_values, &ql) ||
      !lengths_arg(args[6], *q, Lk, check_values, &kl)) {
    return decline();
  }
  // (Under autocast the Python path runs the same ops: attention casts
  // nothing, and the native ops and these views have no autocast rule.)
  Served served;
  if (!resolve(kAttention, *q, args[10], &served) || served == Served::kOther) return decline();
  if (served == Served::kCuda && D % kCudaHeadDimStep != 0) return decline();  // padded: Python

  // Served from here on.
  OptTensor mask4;
  if (mask) {
    if (mask->dim() == 4) {
      mask4 = *mask;
    } else {
      std::vector<int64_t> shape4(4 - mask->dim(), 1);
      shape4.insert(shape4.end(), mask->sizes().begin(), mask->sizes().end());
      mask4 = mask->view(shape4);
    }
  }
  OptTensor seed;
  if (dropout_p > 0) seed = draw_seed(q->device());
  const Tensor q2 = last_dim_contiguous(*q), k2 = last_dim_contiguous(*k),
               v2 = last_dim_contiguous(*v);
  const bool grad = at::GradMode::is_enabled() && (q->requires_grad() || k->requires_grad() ||
                                                   v->requires_grad() || requires_grad(mask));
  Tensor out, lse;
  if (grad) {
    const bool mask_grad = mask && mask->is_floating_point() && mask->requires_grad();
    variable_list outs = AttentionFunction::apply(q2, k2, v2, mask4, ql, kl, seed,
                                                  AttnCfg{causal, scale, dropout_p, mask_grad});
    out = std::move(outs[0]);
    lse = std::move(outs[1]);
  } else {
    std::tie(out, lse) =
        attention_fwd(q2, k2, v2, mask4, ql, kl, seed, causal, scale, dropout_p, true);
  }
  if (!return_lse) return wrap(out);
  // public_lse_dtype: float32, float64 for float64.
  return pair(wrap(out), wrap(lse.to(q->scalar_type() == at::kDouble ? at::kDouble : at::kFloat)));
  END_HANDLE_TH_ERRORS
}

// ----------------------------------------------------- attention_varlen

struct VarlenCfg {
  int64_t max_q, max_k;
  bool causal;
  double scale, dropout_p;
};

// attention_varlen_fwd of the cpu backend (attention_varlen.py: _run_fwd):
// the packed kernels, lse in the public dtype (float32, float64 for float64).
T2 varlen_fwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_q,
              const Tensor& cu_k, const OptTensor& seed, const VarlenCfg& c) {
  at::AutoDispatchBelowADInplaceOrView below;
  NoGil no_gil;
  auto [out, lse] = attention_varlen_fwd_op().call(q, k, v, cu_q, cu_k, seed, c.max_q, c.max_k,
                                                   c.causal, c.scale, c.dropout_p, -1, -1, 0.0,
                                                   std::nullopt, std::nullopt, std::nullopt, 0);
  return {out, lse.to(q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat)};
}

// attention_varlen.py: attention_varlen_fwd's registered autograd. As for
// attention, an unused lse's gradient stays undefined (zeros there).
struct VarlenFunction : public torch::autograd::Function<VarlenFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k,
                               const Tensor& v, const Tensor& cu_q, const Tensor& cu_k,
                               const OptTensor& seed, const VarlenCfg& cfg) {
    auto [out, lse] = varlen_fwd(q, k, v, cu_q, cu_k, seed, cfg);
    ctx->save_for_backward({q, k, v, out, lse, cu_q, cu_k, seed.value_or(Tensor())});
    ctx->saved_data["max_q"] = cfg.max_q;
    ctx->saved_data["max_k"] = cfg.max_k;
    ctx->saved_data["causal"] = cfg.causal;
    ctx->saved_data["scale"] = cfg.scale;
    ctx->saved_data["p"] = cfg.dropout_p;
    ctx->set_materialize_grads(false);
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list s = ctx->get_saved_variables();
    const Tensor &q = s[0], &k = s[1], &v = s[2], &out = s[3], &lse = s[4];
    const int64_t max_q = ctx->saved_data["max_q"].toInt();
    const int64_t max_k = ctx->saved_data["max_k"].toInt();
    Tensor dout = grads[0];
    Tensor dlse = grads[1];
    if (!dout.defined()) dout = at::zeros(out.sizes(), out.options());  // materialized
    if (dout.stride(-1) != 1) dout = dout.contiguous();
    if (dlse.defined()) dlse = dlse.contiguous();
    at::AutoDispatchBelowADInplaceOrView below;
    auto [dq, dk, dv, drel] = attention_varlen_bwd_op().call(
        dout, opt(dlse), q, k, v, out, lse, s[5], s[6], opt(s[7]), max_q, max_k,
        ctx->saved_data["causal"].toBool(), ctx->saved_data["scale"].toDouble(),
        ctx->saved_data["p"].toDouble(), -1, -1, 0.0, std::nullopt, std::nullopt, std::nullopt,
        0, false);
    return {dq, dk, dv, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

// attention_varlen.py: _check_cu_seqlens, on CPU: an int32 (batch + 1,)
// tensor (batch given: that of cu_seqlens_q) on q's device, from 0 to
// total, non-decreasing, no sequence longer than max_seqlen.
bool cu_seqlens_arg(PyObject* obj, const Tensor& q, int64_t total, int64_t max_seqlen,
                    int64_t batch, Tensor* out) {
  const Tensor* t;
  if (!plain_tensor(obj, &t)) return false;
  if (t->scalar_type() != at::kInt || t->dim() != 1 || t->numel() < 2) return false;
  if (batch >= 0 && t->numel() != batch + 1) return false;
  if (t->device() != q.device() || !t->is_cpu()) return false;
  const int64_t n = t->numel(), stride = t->stride(0);
  const int32_t* p = t->const_data_ptr<int32_t>();
  if (p[0] != 0 || p[(n - 1) * stride] != total) return false;
  for (int64_t i = 1; i < n; ++i) {
    const int64_t len = static_cast<int64_t>(p[i * stride]) - p[(i - 1) * stride];
    if (len < 0 || len > max_seqlen) return false;
  }
  *out = t->contiguous();
  return true;
}

// attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
//                  max_seqlen_k, causal, dropout_p, scale, return_lse,
//                  backend, deterministic)
PyObject* py_attention_varlen(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  const Tensor *q, *k, *v;
  int64_t max_q, max_k;
  bool causal, return_lse, deterministic;
  double dropout_p, scale;
  if (nargs != 13 || !common_ok() || !plain_tensor(args[0], &q) || !plain_tensor(args[1], &k) ||
      !plain_tensor(args[2], &v) || !qkv_ok(*q, *k, *v, true) || !q->is_cpu() ||
      !int_arg(args[5], &max_q) || !int_arg(args[6], &max_k) || max_q <= 0 || max_k <= 0 ||
      !flag_arg(args[7], &causal) || !probability_arg(args[8], &dropout_p) ||
      !scale_arg(args[9], q->size(2), &scale) || !flag_arg(args[10], &return_lse) ||
      !flag_arg(args[12], &deterministic) || q->size(0) == 0 || k->size(0) == 0) {
    return decline();
  }
  Tensor cu_q, cu_k;
  if (!cu_seqlens_arg(args[3], *q, q->size(0), max_q, -1, &cu_q) ||
      !cu_seqlens_arg(args[4], *q, k->size(0), max_k, cu_q.numel() - 1, &cu_k)) {
    return decline();
  }
  if (at::autocast::is_autocast_enabled(q->device().type())) return decline();
  Served served;
  if (!resolve(kAttention, *q, args[11], &served) || served != Served::kCpu) return decline();

  // Served from here on.
  OptTensor seed;
  if (dropout_p > 0) seed = draw_seed(q->device());
  const Tensor q2 = last_dim_contiguous(*q), k2 = last_dim_contiguous(*k),
               v2 = last_dim_contiguous(*v);
  const VarlenCfg cfg{max_q, max_k, causal, scale, dropout_p};
  const bool grad = at::GradMode::is_enabled() &&
                    (q->requires_grad() || k->requires_grad() || v->requires_grad());
  Tensor out, lse;
  if (grad) {
    variable_list outs = VarlenFunction::apply(q2, k2, v2, cu_q, cu_k, seed, cfg);
    out = std::move(outs[0]);
    lse = std::move(outs[1]);
  } else {
    std::tie(out, lse) = varlen_fwd(q2, k2, v2, cu_q, cu_k, seed, cfg);
  }
  if (!return_lse) return wrap(out);
  return pair(wrap(out), wrap(lse));
  END_HANDLE_TH_ERRORS
}

// Whether the fast path would look at a call at all here (tests).
PyObject* py_plain_eager(PyObject*, PyObject*) {
  HANDLE_TH_ERRORS
  if (ready() && plain_eager()) Py_RETURN_TRUE;
  Py_RETURN_FALSE;
  END_HANDLE_TH_ERRORS
}

// Forget the cached backend choices (tests).
PyObject* py_clear_cache(PyObject*, PyObject*) {
  cache.clear();
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"layer_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_layer_norm)),
     METH_FASTCALL, "fastattn.layer_norm's fast path, or NotImplemented."},
    {"rms_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_rms_norm)),
     METH_FASTCALL, "fastattn.rms_norm's fast path, or NotImplemented."},
    {"add_layer_norm",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_add_layer_norm)), METH_FASTCALL,
     "fastattn.add_layer_norm's fast path, or NotImplemented."},
    {"add_rms_norm", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_add_rms_norm)),
     METH_FASTCALL, "fastattn.add_rms_norm's fast path, or NotImplemented."},
    {"attention", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_attention)),
     METH_FASTCALL, "fastattn.attention's fast path, or NotImplemented."},
    {"attention_varlen",
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_attention_varlen)),
     METH_FASTCALL, "fastattn.attention_varlen's fast path, or NotImplemented."},
    {"plain_eager", py_plain_eager, METH_NOARGS,
     "Whether the fast path considers calls here (plain eager execution)."},
    {"clear_cache", py_clear_cache, METH_NOARGS, "Forget the cached backend choices."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* methods() { return kMethods; }

}  // namespace fast
}  // namespace fastattn
