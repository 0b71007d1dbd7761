// AVX-512 instantiation of the merge/triad kernels (chosen at run time when the CPU has
// AVX-512F/BW/VL/DQ). Standard headers come before the target pragma so no inline library code
// is compiled for AVX-512 and shared with the other files.
#include "cpu_common.h"  // SHARDMIX_X86: off x86-64 this file compiles to nothing
#if SHARDMIX_X86
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "merge_cpu.h"
#include "shardmix_kernels.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")

namespace shardmix {
namespace {

struct V {
  using reg = __m512;
  static constexpr int W = 16;  // floats per register
  static constexpr int U = 4;   // registers per tile and output (4 x 4 accumulators + 4 inputs of 32 zmm)
  // No software prefetch of fp32 inputs: on the one AVX-512 machine measured (AMD EPYC, 2 cores,
  // 2026-12-06, four interleaved runs of bench merge) it cost the fused merge 0.80-0.81 of the
  // triad against 0.90-0.95 without it, and the mapped files 0.64-0.66 against 0.73-0.81.
  static constexpr bool kPrefetchF32 = false;

  static SM_INLINE reg zero() { return _mm512_setzero_ps(); }
  static SM_INLINE reg set1(float s) { return _mm512_set1_ps(s); }
  static SM_INLINE reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static SM_INLINE reg load_f32(const float* p) { return _mm512_loadu_ps(p); }
  static SM_INLINE reg load_bf16(const uint16_t* p) {
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
  static SM_INLINE reg load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static SM_INLINE void store_f32(float* p, reg v, bool nt) {
    if (nt) _mm512_stream_ps(p, v);
    else _mm512_storeu_ps(p, v);
  }
  static SM_INLINE void store_u16(uint16_t* p, __m256i h, bool nt) {
    if (nt) _mm256_stream_si256(reinterpret_cast<__m256i*>(p), h);
    else _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  }
  // Round to nearest even like torch; NaN -> 0x7FC0.
  static SM_INLINE void store_bf16(uint16_t* p, reg v, bool nt) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
    store_u16(p, _mm512_cvtepi32_epi16(r), nt);
  }
  static SM_INLINE void store_f16(uint16_t* p, reg v, bool nt) {
    store_u16(p, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nt);
  }
  // fp64 accumulation for the multi-dot: a register of W floats is two of W/2 doubles.
  static constexpr int kDotP = 8;  // multi-dot inputs per group: 2 x 8 accumulators + 2 of g in 32 zmm
  using dreg = __m512d;
  static SM_INLINE dreg dzero() { return _mm512_setzero_pd(); }
  static SM_INLINE __m256 upper(reg v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }
  static SM_INLINE dreg cvt_lo(reg v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }  // exact
  static SM_INLINE dreg cvt_hi(reg v) { return _mm512_cvtps_pd(upper(v)); }
  static SM_INLINE dreg dload(const double* p) { return _mm512_load_pd(p); }  // 64-byte aligned
  static SM_INLINE void dstore(double* p, dreg v) { _mm512_store_pd(p, v); }
  static SM_INLINE dreg dfma(dreg a, dreg b, dreg c) { return _mm512_fmadd_pd(a, b, c); }
  static SM_INLINE double dsum(dreg v) { return _mm512_reduce_add_pd(v); }
};

}  // namespace

#include "merge_simd.h"

void merge_range_avx512(const MergeArgs& a, int64_t lo, int64_t hi) { merge_range_simd(a, lo, hi); }

void dot_range_avx512(const DotArgs& a, int64_t lo, int64_t hi, double* acc) { dot_range_simd(a, lo, hi, acc); }

void triad_range_avx512(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool nt) {
  triad_range_simd(a, b, c, s, lo, hi, nt);
}

}  // namespace shardmix

#pragma GCC pop_options
#endif  // SHARDMIX_X86
