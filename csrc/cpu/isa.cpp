// fastattn::cpu_isa_native() -> str: the instruction-set variant the CPU
// kernels run ("avx512", "avx2" or "default": cpu_isa.h), for
// fastattn.backends() and python -m fastattn.info.
#include <torch/library.h>

#include <string>

#include "cpu/cpu_isa.h"

namespace {

std::string cpu_isa_name() {
  switch (fastattn::cpu::cpu_isa()) {
    case fastattn::cpu::Isa::kAvx512: return "avx512";
    case fastattn::cpu::Isa::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastattn, m) { m.def("cpu_isa_native() -> str", &cpu_isa_name); }
