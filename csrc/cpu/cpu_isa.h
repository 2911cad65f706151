// Instruction-set variants of the CPU kernels, chosen at run time.
//
// The build uses no -march flag (the wheel must run on any x86-64 CPU), so
// by default gcc emits SSE2 code. The hot attention loops are therefore
// compiled a few times: once per target below, each an ordinary function
// with a gcc `target` attribute whose body inlines the same generic template
// code (FASTATTN_INLINE), so the auto-vectorizer uses that target's vectors
// and FMA. `cpu_isa()` picks the widest one the running CPU supports;
// FASTATTN_CPU_ISA=default|avx2|avx512 lowers the choice (tests use it to run
// every variant on one machine). Other architectures get the default only.
#pragma once

#include <cstdlib>
#include <cstring>

#define FASTATTN_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTATTN_X86_VARIANTS 1
#define FASTATTN_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define FASTATTN_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")))
#else
#define FASTATTN_X86_VARIANTS 0
#endif

namespace fastattn {
namespace cpu {

enum class Isa { kDefault, kAvx2, kAvx512 };

// Vector width in bytes that a variant's register blocks are sized for.
constexpr int vector_bytes(Isa isa) {
  return isa == Isa::kAvx512 ? 64 : (isa == Isa::kAvx2 ? 32 : 16);
}

inline Isa detected_isa() {
#if FASTATTN_X86_VARIANTS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
    return Isa::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::kAvx2;
  }
#endif
  return Isa::kDefault;
}

// The variant to run: the detected one, lowered by FASTATTN_CPU_ISA.
inline Isa cpu_isa() {
  static const Isa detected = detected_isa();
  Isa isa = detected;
  if (const char* env = std::getenv("FASTATTN_CPU_ISA")) {
    Isa wanted = isa;
    if (std::strcmp(env, "default") == 0) wanted = Isa::kDefault;
    if (std::strcmp(env, "avx2") == 0) wanted = Isa::kAvx2;
    if (static_cast<int>(wanted) < static_cast<int>(isa)) isa = wanted;
  }
  return isa;
}

#if FASTATTN_X86_VARIANTS
// The variant to run of a function compiled as NAME_default, NAME_avx2 and
// NAME_avx512 (templates on T): FASTATTN_PICK_VARIANT(NAME, T).
template <typename F>
F pick_variant(F fallback, F avx2, F avx512) {
  switch (cpu_isa()) {
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    default: return fallback;
  }
}
#define FASTATTN_PICK_VARIANT(NAME, T) \
  ::fastattn::cpu::pick_variant(&NAME##_default<T>, &NAME##_avx2<T>, &NAME##_avx512<T>)
#else
#define FASTATTN_PICK_VARIANT(NAME, T) (&NAME##_default<T>)
#endif

}  // namespace cpu
}  // namespace fastattn
