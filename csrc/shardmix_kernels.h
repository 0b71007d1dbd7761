// Raw-pointer kernel API of shardmix: no torch headers, so the CPU files and the CUDA .cu files
// compile on their own (plain g++ / nvcc). The torch binding layer (ops.cpp, ops_cuda.cpp)
// checks arguments and calls these.
#pragma once

#include <cstdint>

namespace shardmix {

// Element types understood by the merge kernels (values shared with the binding layer).
enum DType : int32_t { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// ---------------------------------------------------------------------------------------------
// CPU (merge_cpu.cpp, xent_cpu.cpp)
// ---------------------------------------------------------------------------------------------

// outs[m][j] = sum_k weights[m * K + k] * inputs[k][j] for j < n, fp32 accumulation, one pass
// over the inputs. Inputs are only read. An output may alias an input (every block of all inputs
// is read before that block of the outputs is written); outputs must not alias each other.
void weighted_sum_cpu(const void* const* inputs, const int32_t* in_dtypes, int K, void* const* outs,
                      const int32_t* out_dtypes, int M, const float* weights, int64_t n, int num_threads);

// STREAM-like triad a[j] = b[j] + s * c[j], same ISA and threads as the merge (for benchmarks).
// nontemporal=true uses streaming stores for `a` (when aligned).
void triad_cpu(float* a, const float* b, const float* c, float s, int64_t n, int num_threads, bool nontemporal);

// Instruction set the CPU kernels dispatched to at run time: "avx512", "avx2" or "generic".
const char* cpu_isa();

// Online log-sum-exp update over one [rows x cols] tile of logits (row stride ld) holding
// vocabulary columns [col0, col0 + cols): per row r, run_max/run_sum become the running max and
// sum of exp(logit - max) over all columns seen so far (start from -inf / 0), and tgt_logit[r]
// receives the logit of targets[r] when it falls inside the tile.
void lse_tile_update_cpu(const float* logits, int64_t rows, int64_t cols, int64_t ld, const int64_t* targets,
                         int64_t col0, float* run_max, float* run_sum, float* tgt_logit, int num_threads);

// nll[r] = run_max[r] + log(run_sum[r]) - tgt_logit[r], or 0 where targets[r] == ignore_index.
void lse_finalize_cpu(const float* run_max, const float* run_sum, const float* tgt_logit, const int64_t* targets,
                      int64_t rows, int64_t ignore_index, float* nll);

// ---------------------------------------------------------------------------------------------
// CUDA (merge_cuda.cu, xent_cuda.cu). `stream` is a cudaStream_t; the return value is a
// cudaError_t (0 = success) from the launch check. All pointer arguments are device pointers
// except where noted.
// ---------------------------------------------------------------------------------------------

// desc: device array of 2 * (K + M) uint64 slots: K input pointers, M output pointers, K input
// DType codes, M output DType codes. weights: device [M * K] fp32, row-major. aligned16: the host
// checked that every input/output pointer is 16-byte aligned (enables vector loads/stores).
int weighted_sum_cuda(const uint64_t* desc, const float* weights, int K, int M, int64_t n, bool aligned16,
                      void* stream);

// CUDA twins of lse_tile_update_cpu / lse_finalize_cpu (one block per row, warp/block reductions).
int lse_tile_update_cuda(const float* logits, int64_t rows, int64_t cols, int64_t ld, const int64_t* targets,
                         int64_t col0, float* run_max, float* run_sum, float* tgt_logit, void* stream);
int lse_finalize_cuda(const float* run_max, const float* run_sum, const float* tgt_logit, const int64_t* targets,
                      int64_t rows, int64_t ignore_index, float* nll, void* stream);

}  // namespace shardmix
