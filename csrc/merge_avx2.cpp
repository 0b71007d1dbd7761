// AVX2 instantiation of the merge/triad kernels (chosen at run time on CPUs with AVX2 + FMA +
// F16C but no AVX-512). Standard headers come before the target pragma (see merge_avx512.cpp).
#include "cpu_common.h"  // SHARDMIX_X86: off x86-64 this file compiles to nothing
#if SHARDMIX_X86
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "merge_cpu.h"
#include "shardmix_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace shardmix {
namespace {

struct V {
  using reg = __m256;
  static constexpr int W = 8;  // floats per register
  static constexpr int U = 2;  // registers per tile and output (4 x 2 accumulators + 2 inputs of 16 ymm)
  static constexpr bool kPrefetchF32 = true;  // fp32 inputs prefetched (merge_simd.h: measured on AVX2 machines)

  static SM_INLINE reg zero() { return _mm256_setzero_ps(); }
  static SM_INLINE reg set1(float s) { return _mm256_set1_ps(s); }
  static SM_INLINE reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static SM_INLINE reg load_f32(const float* p) { return _mm256_loadu_ps(p); }
  static SM_INLINE reg load_bf16(const uint16_t* p) {
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static SM_INLINE reg load_f16(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static SM_INLINE void store_f32(float* p, reg v, bool nt) {
    if (nt) _mm256_stream_ps(p, v);
    else _mm256_storeu_ps(p, v);
  }
  static SM_INLINE void store_u16(uint16_t* p, __m128i h, bool nt) {
    if (nt) _mm_stream_si128(reinterpret_cast<__m128i*>(p), h);
    else _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h);
  }
  // Round to nearest even like torch; NaN -> 0x7FC0.
  static SM_INLINE void store_bf16(uint16_t* p, reg v, bool nt) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);  // lanes 0, 2 -> low half
    store_u16(p, _mm256_castsi256_si128(packed), nt);
  }
  static SM_INLINE void store_f16(uint16_t* p, reg v, bool nt) {
    store_u16(p, _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nt);
  }
  // fp64 accumulation for the multi-dot: a register of W floats is two of W/2 doubles.
  static constexpr int kDotP = 4;  // multi-dot inputs per group: 2 x 4 accumulators + 2 of g in 16 ymm
  using dreg = __m256d;
  static SM_INLINE dreg dzero() { return _mm256_setzero_pd(); }
  static SM_INLINE dreg cvt_lo(reg v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }  // exact
  static SM_INLINE dreg cvt_hi(reg v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
  static SM_INLINE dreg dload(const double* p) { return _mm256_load_pd(p); }  // 32-byte aligned
  static SM_INLINE void dstore(double* p, dreg v) { _mm256_store_pd(p, v); }
  static SM_INLINE dreg dfma(dreg a, dreg b, dreg c) { return _mm256_fmadd_pd(a, b, c); }
  static SM_INLINE double dsum(dreg v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

}  // namespace

#include "merge_simd.h"

void merge_range_avx2(const MergeArgs& a, int64_t lo, int64_t hi) { merge_range_simd(a, lo, hi); }

void dot_range_avx2(const DotArgs& a, int64_t lo, int64_t hi, double* acc) { dot_range_simd(a, lo, hi, acc); }

void triad_range_avx2(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool nt) {
  triad_range_simd(a, b, c, s, lo, hi, nt);
}

}  // namespace shardmix

#pragma GCC pop_options
#endif  // SHARDMIX_X86
