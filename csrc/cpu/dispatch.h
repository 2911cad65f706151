// Dtype dispatch shared by the CPU bindings (attention.cpp, norm.cpp).
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace fastattn {
namespace cpu {

// Runs `f` with a value of the C++ type of `dtype` (float, double, Half,
// BFloat16); any other dtype raises, naming the op `what`.
template <typename F>
void dispatch_float(at::ScalarType dtype, const char* what, F&& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kHalf: f(at::Half{}); break;
    case at::kBFloat16: f(at::BFloat16{}); break;
    default: TORCH_CHECK(false, what, ": unsupported dtype ", dtype,
                         " (expected float16, bfloat16, float32 or float64)");
  }
}

}  // namespace cpu
}  // namespace fastattn
