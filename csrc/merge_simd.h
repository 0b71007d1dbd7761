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

// The multi-dot over [lo, hi), in blocks of kDotBlock elements. The K inputs go in groups of up to
// V::kDotP (8 on AVX-512, 4 on AVX2: as many as the registers hold) whose streams advance side by
// side (one stream at a time leaves most of the memory bandwidth idle: measured 0.55x the triad,
// against ~0.9x for 4). The first group also reads g: it converts each piece to fp64 in registers
// and, when more groups follow, keeps the block's fp64 copy in a per-thread buffer (L1/L2) for
// them, so g is read once, converted once and never streamed alone (a pass over g alone, before
// the inputs, left the multi-dot compute-bound at 16 GB/s per core on AVX-512 against 28 for the
// merge). Products are exact (fp32 x fp32 in fp64), sums fp64: every input has two accumulators of
// W/2 lanes, fed in element order, so the result is the same whatever the grouping.
constexpr int64_t kDotBlock = 4096;

// Elements [j, j + W) of the block of g as two fp64 registers: converted from g itself (FromG;
// also kept in g64 when `keep`), or loaded from g64.
template <bool FromG>
SM_INLINE void dot_g(const float* g, double* g64, bool keep, int64_t j, typename V::dreg& gl, typename V::dreg& gh) {
  if constexpr (FromG) {
    const typename V::reg v = V::load_f32(g + j);
    gl = V::cvt_lo(v);
    gh = V::cvt_hi(v);
    if (keep) {
      V::dstore(g64 + j, gl);
      V::dstore(g64 + j + V::W / 2, gh);
    }
  } else {
    gl = V::dload(g64 + j);
    gh = V::dload(g64 + j + V::W / 2);
  }
}

// One register of input k from element `at`, as fp32.
SM_INLINE typename V::reg dot_load(const DotArgs& a, int k, int64_t at) {
  switch (a.in_dtypes[k]) {
    case kFloat32: {
      const float* q = static_cast<const float*>(a.inputs[k]) + at;
      if constexpr (V::kPrefetchF32) prefetch_ahead(q);
      return V::load_f32(q);
    }
    case kBFloat16: {
      const uint16_t* q = static_cast<const uint16_t*>(a.inputs[k]) + at;
      prefetch_ahead(q);
      return V::load_bf16(q);
    }
    default: {
      const uint16_t* q = static_cast<const uint16_t*>(a.inputs[k]) + at;
      prefetch_ahead(q);
      return V::load_f16(q);
    }
  }
}

// acc[k0 .. k0 + P) += the dots of one block of len elements (a multiple of W) from element i, one
// register of each input a step (unrolled by 2 or 4 it ran slower on AVX-512: registers spilled).
template <int P, bool FromG>
SM_INLINE void dot_group(const DotArgs& a, int k0, double* g64, bool keep, int64_t i, int64_t len, double* acc) {
  constexpr int W = V::W;
  typename V::dreg lo[P], hi[P];
  for (int p = 0; p < P; ++p) lo[p] = hi[p] = V::dzero();
  const float* g = a.g + i;
  for (int64_t j = 0; j < len; j += W) {
    typename V::dreg gl, gh;
    dot_g<FromG>(g, g64, keep, j, gl, gh);
    for (int p = 0; p < P; ++p) {
      const typename V::reg x = dot_load(a, k0 + p, i + j);
      lo[p] = V::dfma(gl, V::cvt_lo(x), lo[p]);
      hi[p] = V::dfma(gh, V::cvt_hi(x), hi[p]);
    }
  }
  for (int p = 0; p < P; ++p) acc[k0 + p] += V::dsum(lo[p]) + V::dsum(hi[p]);
}

template <bool FromG>
SM_INLINE void dot_group_of(int P, const DotArgs& a, int k0, double* g64, bool keep, int64_t i, int64_t len,
                            double* acc) {
  static_assert(V::kDotP <= 8, "groups of up to 8 inputs");
  switch (P) {
    case 8: if constexpr (V::kDotP >= 8) dot_group<8, FromG>(a, k0, g64, keep, i, len, acc); break;
    case 7: if constexpr (V::kDotP >= 7) dot_group<7, FromG>(a, k0, g64, keep, i, len, acc); break;
    case 6: if constexpr (V::kDotP >= 6) dot_group<6, FromG>(a, k0, g64, keep, i, len, acc); break;
    case 5: if constexpr (V::kDotP >= 5) dot_group<5, FromG>(a, k0, g64, keep, i, len, acc); break;
    case 4: dot_group<4, FromG>(a, k0, g64, keep, i, len, acc); break;
    case 3: dot_group<3, FromG>(a, k0, g64, keep, i, len, acc); break;
    case 2: dot_group<2, FromG>(a, k0, g64, keep, i, len, acc); break;
    default: dot_group<1, FromG>(a, k0, g64, keep, i, len, acc); break;
  }
}

SM_INLINE void dot_range_simd(const DotArgs& a, int64_t lo, int64_t hi, double* acc) {
  constexpr int64_t W = V::W;
  alignas(64) static thread_local double g64[kDotBlock];
  const int groups = (a.K + V::kDotP - 1) / V::kDotP;  // of sizes as equal as they can be
  int64_t i = lo;
  while (hi - i >= W) {
    const int64_t len = std::min<int64_t>(kDotBlock, (hi - i) / W * W);
    for (int grp = 0, k0 = 0; grp < groups; ++grp) {
      const int P = a.K / groups + (grp < a.K % groups);
      if (grp == 0) dot_group_of<true>(P, a, k0, g64, groups > 1, i, len, acc);
      else dot_group_of<false>(P, a, k0, g64, false, i, len, acc);
      k0 += P;
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
