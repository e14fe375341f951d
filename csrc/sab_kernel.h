// The interface between the host code (sparse_attention.cpp: checks, allocation, threading) and the
// per-CPU-capability kernels (kernel_{default,avx2,avx512}.cpp, all built from sab_kernel_impl.h).
//
// Kept free of ATen includes on purpose: the capability translation units are compiled for AVX2/AVX-512
// and must share no inline code with the host translation unit beyond this plain-data header.
#pragma once

#include <cstdint>

namespace sab {

// Storage type of keys / values / outputs. Scores and every accumulation use float for F16/BF16.
enum class Dtype : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3 };
constexpr int kNumDtypes = 4;

struct ForwardArgs {
  // Inputs. q and w are already in the compute dtype (float for F16/BF16); keys/values in the storage dtype.
  const void* q;         // (B, D)
  const void* keys;      // (B, T, D)
  const void* values;    // (B, T, H)
  const void* w;         // (D,)
  const int64_t* lengths;  // (B,) in [0, T]
  int64_t B, T, D, H, k_top, k;  // k = min(k_top, T)
  int64_t cap;                   // min(k_top + 1, T): the running top list of one row
  double eps;                    // the sparsifier's epsilon: a = relu(s - tau) / (sum + eps)
  // Outputs.
  void* summary;       // (B, H) storage dtype
  void* weights;       // (B, k) storage dtype
  int64_t* indices;    // (B, k)
  int64_t* threshold;  // (B,)
};

struct BackwardArgs {
  const void* grad_summary;  // (B, H) compute dtype
  const void* grad_weights;  // (B, k) compute dtype
  const void* q;             // (B, D) compute dtype
  const void* keys;          // (B, T, D)
  const void* values;        // (B, T, H)
  const void* w;             // (D,) compute dtype
  const int64_t* indices;    // (B, k)
  const int64_t* threshold;  // (B,)
  int64_t B, T, D, H, k;
  double eps;
  void* grad_query;       // (B, D) storage dtype
  void* grad_keys;        // (B, T, D) storage dtype, written in full (zeros + touched rows)
  void* grad_values;      // (B, T, H) storage dtype, written in full
  void* grad_w_partial;   // (B, D) compute dtype: per-row contribution, reduced by the host in row order
  bool keys_zeroed;       // grad_keys arrives zero-filled (fresh OS pages): write the touched rows only
  bool values_zeroed;     // the same for grad_values
};

// Split forward (rows with T much larger than the work per thread): `chunks` chunks of `chunk_len` slots
// per row. Item t = b * chunks + c scans slots [c * chunk_len, (c + 1) * chunk_len) of row b and leaves its
// sorted top list in part_s/part_i[t * cap ...] with its length in part_n[t].
struct Partials {
  int64_t chunks, chunk_len;
  void* part_s;     // compute dtype, (B * chunks * cap)
  int64_t* part_i;  // (B * chunks * cap)
  int64_t* part_n;  // (B * chunks)
};

// One LSTM cell step of the fused SAB-LSTM (csrc/sab_lstm.cpp), all B rows. Gates are (i, f, g, o) blocks of
// H, as in nn.LSTMCell.
struct CellArgs {
  void* gates;         // (B, 4H) pre-activation in, activated out
  const void* c_prev;  // (B, H)
  void* c;             // (B, H) f c_prev + i g
  void* tanh_c;        // (B, H)
  void* h_hat;         // (B, H) o tanh(c), rows h_stride apart
  int64_t h_stride;
  int64_t B, H;
};

struct CellBackwardArgs {
  const void* gates;   // (B, 4H) activated
  const void* tanh_c;  // (B, H)
  const void* c_prev;  // (B, H)
  const void* g_hhat;  // (B, H) dL/dh_hat
  void* g_c;           // (B, H) in: dL/dc from the later steps; out: dL/dc_prev
  void* g_gates;       // (B, 4H) dL/d(pre-activation gates)
  int64_t B, H;
};

struct Kernels {
  // Rows [b0, b1): scores, running top list, weights, summary.
  void (*forward_rows)(const ForwardArgs&, int64_t b0, int64_t b1);
  // Items [t0, t1) of the split forward, then rows [b0, b1) merged (in chunk order) and finished.
  void (*forward_partial)(const ForwardArgs&, const Partials&, int64_t t0, int64_t t1);
  void (*forward_merge)(const ForwardArgs&, const Partials&, int64_t b0, int64_t b1);
  // Rows [b0, b1) of the backward.
  void (*backward_rows)(const BackwardArgs&, int64_t b0, int64_t b1);
  // The LSTM cell of the fused SAB-LSTM.
  void (*cell_forward)(const CellArgs&);
  void (*cell_backward)(const CellBackwardArgs&);
};

struct KernelTable {
  const char* name;  // "default", "avx2", "avx512"
  Kernels by_dtype[kNumDtypes];
};

// Each returns nullptr when that capability was not compiled in (non-x86 builds).
const KernelTable* kernels_default();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();

}  // namespace sab
