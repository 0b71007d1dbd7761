// Register-blocked merge, multi-dot and triad kernels written once against a vector type `V` (see
// merge_avx512.cpp / merge_avx2.cpp, which define V and include this file under their
// `#pragma GCC target`). Not a normal header: include it only from those two files.
//
// One tile = V::U vectors of V::W elements. For every group of up to 4 outputs the tile keeps
// G x U accumulators in registers, loads each input's tile once (cast to fp32), FMAs it into all
// G accumulators, then converts and stores G output tiles (streaming stores when requested).
// All K input streams advance together, so every input byte is read from memory once. Each
// stream is also prefetched kPrefetchBytes ahead: with 9+ concurrent streams per core the hardware
// prefetchers alone left ~15% of the bandwidth unused (measured on an AVX2 machine: 18.9 -> 22.9
// GB/s, K=8 fp32). V::kPrefetchF32 turns it off for fp32 inputs where it was measured to cost
// (the AVX-512 build: see merge_avx512.cpp); prefetches never change a result.

namespace {

constexpr int kPrefetchBytes = 2048;

SM_INLINE void prefetch_ahead(const void* p) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchBytes, _MM_HINT_T0);
}

constexpr int kStaggerBytes = 512;
SM_INLINE void prefetch_staggered(const void* p, int k) {
  _mm_prefetch(static_cast<const char*>(p) + kPrefetchBytes / 2 + (k & 7) * kStaggerBytes, _MM_HINT_T0);
}

template <int G>
SM_INLINE void merge_tile(const MergeArgs& a, int m0, int64_t i) {
  constexpr int U = V::U, W = V::W;
  typename V::reg acc[G][U];
  for (int g = 0; g < G; ++g)
    for (int u = 0; u < U; ++u) acc[g][u] = V::zero();
  for (int k = 0; k < a.K; ++k) {
    typename V::reg x[U];
    switch (a.in_dtypes[k]) {
      case kFloat32: {
        const float* p = static_cast<const float*>(a.inputs[k]) + i;
        if constexpr (V::kPrefetchF32)
          for (int u = 0; u < U; ++u) prefetch_staggered(p + u * W, k);  // >= one per cache line
        for (int u = 0; u < U; ++u) x[u] = V::load_f32(p + u * W);
        break;
      }
      case kBFloat16: {
        const uint16_t* p = static_cast<const uint16_t*>(a.inputs[k]) + i;
        for (int u = 0; u < U; u += 2) prefetch_ahead(p + u * W);
        for (int u = 0; u < U; ++u) x[u] = V::load_bf16(p + u * W);
        break;
      }
      default: {
        const uint16_t* p = static_cast<const uint16_t*>(a.inputs[k]) + i;
        for (int u = 0; u < U; u += 2) prefetch_ahead(p + u * W);
        for (int u = 0; u < U; ++u) x[u] = V::load_f16(p + u * W);
        break;
      }
    }
    for (int g = 0; g < G; ++g) {
      const typename V::reg w = V::set1(a.weights[(m0 + g) * a.K + k]);
      for (int u = 0; u < U; ++u) acc[g][u] = V::fma(w, x[u], acc[g][u]);
    }
  }
  for (int g = 0; g < G; ++g) {
    const int m = m0 + g;
    const bool nt = a.stream[m];
    switch (a.out_dtypes[m]) {
      case kFloat32:
        for (int u = 0; u < U; ++u) V::store_f32(static_cast<float*>(a.outs[m]) + i + u * W, acc[g][u], nt);
        break;
      case kBFloat16:
        for (int u = 0; u < U; ++u) V::store_bf16(static_cast<uint16_t*>(a.outs[m]) + i + u * W, acc[g][u], nt);
        break;
      default:
        for (int u = 0; u < U; ++u) V::store_f16(static_cast<uint16_t*>(a.outs[m]) + i + u * W, acc[g][u], nt);
        break;
    }
  }
}

template <int G>
SM_INLINE void merge_tiles(const MergeArgs& a, int m0, int64_t lo, int64_t hi) {
  constexpr int64_t T = V::U * V::W;
  for (int64_t i = lo; i < hi; i += T) merge_tile<G>(a, m0, i);
}

// Outputs m0 .. m0 + g - 1 over whole tiles [lo, hi).
SM_INLINE void merge_group(const MergeArgs& a, int m0, int64_t lo, int64_t hi) {
  switch (std::min(4, a.M - m0)) {
    case 4: merge_tiles<4>(a, m0, lo, hi); break;
    case 3: merge_tiles<3>(a, m0, lo, hi); break;
    case 2: merge_tiles<2>(a, m0, lo, hi); break;
    default: merge_tiles<1>(a, m0, lo, hi); break;
  }
}

// Up to 4 outputs: every tile computes all of them from one read of the inputs. More outputs go
// block by block: over a block of kMultiBlock elements (K x 16 KiB of fp32 inputs, which stay in
// L2) the groups of 4 outputs run one after the other, so the inputs come from memory once while
// at most 4 output streams are written at a time (8 or more streaming-store streams per core
// overflow its write-combining buffers: measured M = 8, K = 8 on SmolLM2-135M, one tile pass over
// all 8 outputs ran at 9.3 GB/s, against 21 GB/s for M = 4).
constexpr int64_t kMultiBlock = 4096;

SM_INLINE void merge_range_simd(const MergeArgs& a, int64_t lo, int64_t hi) {
  constexpr int64_t T = V::U * V::W;
  static_assert(kMultiBlock % T == 0, "a block holds whole tiles");
  const int64_t full = lo + (hi - lo) / T * T;
  if (a.M <= 4) {
    merge_group(a, 0, lo, full);
  } else {
    for (int64_t b0 = lo; b0 < full; b0 += kMultiBlock) {
      const int64_t b1 = std::min(full, b0 + kMultiBlock);
      for (int m0 = 0; m0 < a.M; m0 += 4) merge_group(a, m0, b0, b1);
    }
  }
  if (full < hi) merge_range_generic(a, full, hi);  // fewer than one tile left
}

// The multi-dot over [lo, hi): blocks of kDotBlock elements. Each block of g is converted to fp64
// once into a per-thread buffer (L1/L2), then the inputs stream through the block in groups of up
// to 4, side by side (one stream at a time leaves most of the memory bandwidth idle: measured 0.55x
// the triad, against ~0.9x for 4): their fp32 values are converted to fp64 and multiplied exactly
// by g's, sums fp64 in registers. g is read from memory once and converted once, not K times.
constexpr int64_t kDotBlock = 4096;

template <int P>
SM_INLINE void dot_group(const DotArgs& a, int k0, const double* g64, int64_t i, int64_t len, double* acc) {
  constexpr int W = V::W;
  typename V::dreg lo[P], hi[P];
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = V::dzero();
  for (int64_t j = 0; j < len; j += W) {
    for (int p = 0; p < P; ++p) {
      const int k = k0 + p;
      typename V::reg x;
      switch (a.in_dtypes[k]) {
        case kFloat32: {
          const float* q = static_cast<const float*>(a.inputs[k]) + i + j;
          prefetch_ahead(q);
          x = V::load_f32(q);
          break;
        }
        case kBFloat16: {
          const uint16_t* q = static_cast<const uint16_t*>(a.inputs[k]) + i + j;
          prefetch_ahead(q);
          x = V::load_bf16(q);
          break;
        }
        default: {
          const uint16_t* q = static_cast<const uint16_t*>(a.inputs[k]) + i + j;
          prefetch_ahead(q);
          x = V::load_f16(q);
          break;
        }
      }
      V::fma_f64(g64 + j, x, lo[p], hi[p]);
    }
  }
  for (int p = 0; p < P; ++p) acc[k0 + p] += V::dsum(lo[p]) + V::dsum(hi[p]);
}

SM_INLINE void dot_range_simd(const DotArgs& a, int64_t lo, int64_t hi, double* acc) {
  constexpr int64_t W = V::W;
  alignas(64) static thread_local double g64[kDotBlock];
  int64_t i = lo;
  while (hi - i >= W) {
    const int64_t len = std::min<int64_t>(kDotBlock, (hi - i) / W * W);
    for (int64_t j = 0; j < len; j += W) V::to_f64(V::load_f32(a.g + i + j), g64 + j);
    int k0 = 0;
    for (; k0 + 4 <= a.K; k0 += 4) dot_group<4>(a, k0, g64, i, len, acc);
    switch (a.K - k0) {
      case 3: dot_group<3>(a, k0, g64, i, len, acc); break;
      case 2: dot_group<2>(a, k0, g64, i, len, acc); break;
      case 1: dot_group<1>(a, k0, g64, i, len, acc); break;
      default: break;
    }
    i += len;
  }
  if (i < hi) dot_range_generic(a, i, hi, acc);  // fewer than one vector left
}

SM_INLINE void triad_range_simd(float* a, const float* b, const float* c, float s, int64_t lo, int64_t hi, bool nt) {
  constexpr int64_t W = V::W;
  const typename V::reg sv = V::set1(s);
  int64_t i = lo;
  for (; i + W <= hi; i += W) V::store_f32(a + i, V::fma(sv, V::load_f32(c + i), V::load_f32(b + i)), nt);
  for (; i < hi; ++i) a[i] = b[i] + s * c[i];
}

}  // namespace
