// Internal interface between the merge and multi-dot dispatchers (merge_cpu.cpp, dot_cpu.cpp) and
// their per-ISA kernels (merge_avx512.cpp, merge_avx2.cpp, each under its own `#pragma GCC target`).
#pragma once

#include <cstdint>

namespace shardmix {

struct MergeArgs {
  const void* const* inputs;  // K input pointers
  const int32_t* in_dtypes;   // K DType codes
  int K;
  void* const* outs;          // M output pointers
  const int32_t* out_dtypes;  // M DType codes
  const uint8_t* stream;      // M flags: use non-temporal stores for this output
  int M;
  const float* weights;       // [M * K], row-major
};

// Each computes outs[m][j] for j in [lo, hi). lo must be a multiple of 64 elements.
void merge_range_generic(const MergeArgs& a, int64_t lo, int64_t hi);
void merge_range_avx2(const MergeArgs& a, int64_t lo, int64_t hi);
void merge_range_avx512(const MergeArgs& a, int64_t lo, int64_t hi);

struct DotArgs {
  const void* const* inputs;  // K input pointers
  const int32_t* in_dtypes;   // K DType codes
  int K;
  const float* g;             // the vector every input is dotted with
};

// Each adds sum_{j in [lo, hi)} g[j] * inputs[k][j] to acc[k] (fp64), for every k.
void dot_range_generic(const DotArgs& a, int64_t lo, int64_t hi, double* acc);
void dot_range_avx2(const DotArgs& a, int64_t lo, int64_t hi, double* acc);
void dot_range_avx512(const DotArgs& a, int64_t lo, int64_t hi, double* acc);

// a[j] = b[j] + s * c[j] for j in [lo, hi), optionally with non-temporal stores.
void triad_range_generic(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool nt);
void triad_range_avx2(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool nt);
void triad_range_avx512(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool nt);

}  // namespace shardmix
