// Helpers shared by the CPU kernels: run-time ISA choice, inline dtype conversions, target
// attributes. No torch headers.
//
// The .so is built with portable flags (no -march=native) and still uses AVX-512 where the CPU
// has it: ISA-specific code is compiled for AVX-512 / AVX2 / baseline x86-64 side by side and
// the best one the CPU reports is picked at run time (active_isa). Plain-loop kernels (xent_cpu.cpp)
// are always_inline bodies instantiated in SM_TARGET_* wrappers; intrinsic kernels (merge) live in
// per-ISA files under `#pragma GCC target` (merge_avx512.cpp, merge_avx2.cpp).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#define SM_INLINE inline __attribute__((always_inline))
// x86-64 only: the per-ISA code paths. Elsewhere (aarch64: a GH200 host, say) the ISA-specific
// files compile to nothing, the target attributes vanish, and every kernel takes the baseline path.
#if defined(__x86_64__) || defined(_M_X64)
#define SHARDMIX_X86 1
#define SM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define SM_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define SHARDMIX_X86 0
#define SM_TARGET_AVX512
#define SM_TARGET_AVX2
#endif

namespace shardmix {

enum class Isa : int { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// Best ISA of this CPU, lowered by the env var SHARDMIX_CPU_ISA=generic|avx2|avx512 (tests use it
// to exercise every code path); it can never raise it above what the CPU supports.
inline Isa active_isa() {
  static const Isa best = [] {
#if !SHARDMIX_X86
    return Isa::kGeneric;
#else
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
      return Isa::kAvx2;
    return Isa::kGeneric;
#endif
  }();
  Isa want = best;
  if (const char* env = std::getenv("SHARDMIX_CPU_ISA")) {
    if (std::strcmp(env, "generic") == 0) want = Isa::kGeneric;
    else if (std::strcmp(env, "avx2") == 0) want = Isa::kAvx2;
  }
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

inline const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512 ? "avx512" : isa == Isa::kAvx2 ? "avx2" : "generic";
}

// bfloat16 <-> float32 as torch does it (round to nearest even; NaN -> 0x7FC0).
SM_INLINE float bf16_to_f32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

SM_INLINE uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

// float16 <-> float32 through the compiler's half type (F16C instructions where enabled on x86-64;
// aarch64 gcc's C++ spells it __fp16, IEEE format, round to nearest even).
#if defined(__aarch64__)
using half_t = __fp16;
#else
using half_t = _Float16;
#endif

SM_INLINE float f16_to_f32(uint16_t h) {
  half_t v;
  std::memcpy(&v, &h, sizeof v);
  return static_cast<float>(v);
}

SM_INLINE uint16_t f32_to_f16(float f) {
  const half_t v = static_cast<half_t>(f);
  uint16_t h;
  std::memcpy(&h, &v, sizeof h);
  return h;
}

}  // namespace shardmix
