// The fused SAB-RNN (LSTM or GRU cell): one call runs a whole sequence (SPEC section 2), one call its reverse
// sweep. The cell is a template parameter (kGru) of forward_typed/backward_typed; everything after the cell
// (attention, slot writes, mailboxes, sparse replay) is shared.
//
// Forward, step t (global step tg = step0 + t), with h, c the previous state:
//   gates = x_t W_ih^T + b + h W_hh^T (the input half for all steps in one matmul); c = f c + i g;
//   h_hat = o tanh(c); q = W_q h_hat + b_q; (s, a, idx, thr) = sparse attention of q over the n slots
//   (the kernel table of sparse_attention.cpp, called directly); h = h_hat + s;
//   every k_att steps ((tg+1) % k_att == 0) slot n = h, key n = W_m h.
// Truncation ((tg+1) % k_trunc == 0) cuts the main chain before step t's cell; it changes only the backward.
// k_top = 0: no memory (truncated-BPTT LSTM; k_trunc = 0: full BPTT).
// GRU (nn.GRUCell's gates r, z, n): gi = x_t W_ih^T + b_ih (all steps in one matmul), gh = h W_hh^T + b_hh;
//   r = sig(gi_r + gh_r), z = sig(gi_z + gh_z), n = tanh(gi_n + r gh_n), h_hat = (1 - z) n + z h; no c. b_hh
//   sits inside r (.), so the backward keeps dL/dgh apart from dL/dgi (two bias gradients).
// Bounded memory (recent = W > 0, relevant = M; sab_kernels/kernels/bounded_slots.py is the contract): each row
//   attends over its active slots only, compact copies of their keys and values (B, W + M + 1, .) kept up to
//   date incrementally (a write appends a row, an eviction shifts the rows after it: O(W + M) per step). The
//   compact indices are mapped to global slot ids before they are saved, and every slot is still written into
//   the buffers at its global index, so the backward is the unbounded one. The index (active ids, relevance,
//   count, kept) is cloned in, updated per step (relevance, then write), and returned.
//
// Backward, one reverse sweep. The gradient of h_t is the output's, plus the main chain's (unless step t+1
// was truncated), plus the gradient of the slot step t wrote, collected from every later attention that
// selected it (or used it as the threshold). Each attention's backward is the op's compact (k_top+1)-row
// problem: the selected rows and the threshold row are gathered and the kernel runs on them alone; their value
// and key gradients go to per-slot mailboxes (B, S, H) and (B, S, D), and a slot's key gradient is folded
// through W_m (dm = dv + dk W_m, dW_m += dk^T m) once, when the sweep reaches the step that wrote it. Steps
// that no gradient reaches are skipped (sparse replay): no output gradient, no live chain, no selected slot.
// Everything runs in a fixed order, so results are bitwise reproducible for any thread count.
//
// Memory: the caller owns the slot buffers values (B, cap, H) and keys (B, cap, D) (sab_kernels/kernels/
// slot_buffers.py). Rows [0, n0) hold the slots and keys the call starts from; the forward appends rows
// [n0, S) in place and copies nothing of the past, so a stream of one step per call costs one step.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <cmath>
#include <vector>

#include "sab_host.h"

// Fortran BLAS, exported by libtorch_cpu when torch is built with MKL or OpenBLAS. Weak: a torch without them
// still loads the extension, and gemm() below falls back to ATen. At SAB-LSTM's per-step sizes the
// dispatcher costs as much as the multiplication itself.
extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*) __attribute__((weak));
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*,
            const int*, const double*, const int*, const double*, double*, const int*) __attribute__((weak));
// MKL's per-thread thread count (returns the previous one; 0: the global count), exported with MKL's BLAS.
// The C entry point: the lower-case mkl_set_num_threads_local symbol is the Fortran one, taking a pointer.
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace sab {
namespace {

// Holds MKL to one thread in this scope, then restores the caller's setting (nothing without MKL).
class SingleThreadedMkl {
 public:
  SingleThreadedMkl() : previous_(MKL_Set_Num_Threads_Local != nullptr ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SingleThreadedMkl() {
    if (MKL_Set_Num_Threads_Local != nullptr) {
      MKL_Set_Num_Threads_Local(previous_);
    }
  }
  SingleThreadedMkl(const SingleThreadedMkl&) = delete;
  SingleThreadedMkl& operator=(const SingleThreadedMkl&) = delete;

 private:
  int previous_;
};

// Row-major C (M x N) = alpha op(A) op(B) + beta C, op(A) M x K, op(B) K x N; lda/ldb/ldc are row strides.
// Fortran BLAS takes 32-bit sizes: a size or stride past INT_MAX (a memory whose rows are more than 2^31
// elements apart: B = 1, D = 65536, 32768 slots) takes ATen, which handles 64-bit strides, instead of being
// narrowed into a negative leading dimension that BLAS rejects.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) {
    return;
  }
  // One MKL thread per call, on either route: with more, MKL splits the long reductions of the weight gradients
  // (K = T * B) by the thread count, so their bits changed with torch.set_num_threads (seen on AVX-512 CPUs).
  const SingleThreadedMkl one_thread;
  // SAB_KERNELS_ATEN_GEMM=1 takes the ATen route even where BLAS is exported (tests hold the two equal).
  static const bool aten_only = [] {
    const char* v = std::getenv("SAB_KERNELS_ATEN_GEMM");
    return v != nullptr && std::string(v) == "1";
  }();
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  const bool fits_int = std::max({M, N, K, lda, ldb, ldc}) <= kIntMax;
  auto* blas = std::is_same_v<T, float> ? reinterpret_cast<void*>(&sgemm_) : reinterpret_cast<void*>(&dgemm_);
  if (blas != nullptr && !aten_only && K > 0 && fits_int) {
    // Column-major BLAS sees the row-major matrices transposed: C^T = op(B)^T op(A)^T.
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int m = int(N), n = int(M), k = int(K), la = int(lda), lb = int(ldb), lc = int(ldc);
    if constexpr (std::is_same_v<T, float>) {
      sgemm_(&tb, &ta, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    } else {
      dgemm_(&tb, &ta, &m, &n, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
    }
    return;
  }
  // A matrix stored rows x cols (row stride ld), used transposed or not.
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto mat = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    at::Tensor v = at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
    return trans ? v.t() : v;
  };
  at::Tensor c = mat(C, M, N, ldc, false);
  if (beta == T(0)) {
    c.zero_();
  } else if (beta != T(1)) {
    c.mul_(beta);
  }
  if (K > 0) {
    c.addmm_(mat(A, trans_a ? K : M, trans_a ? M : K, lda, trans_a), mat(B, trans_b ? N : K, trans_b ? K : N, ldb, trans_b),
             1, alpha);
  }
}

// Python passes an empty tensor for "no gradient" / "no such input".
bool given(const at::Tensor& t) {
  return t.defined() && t.numel() > 0;
}

bool truncated_at(int64_t tg, int64_t k_trunc) {
  return k_trunc > 0 && (tg + 1) % k_trunc == 0;
}

bool writes_at(int64_t tg, int64_t k_att) {
  return (tg + 1) % k_att == 0;
}

template <typename scalar_t>
Dtype dtype_tag() {
  return std::is_same_v<scalar_t, double> ? Dtype::F64 : Dtype::F32;
}

template <typename scalar_t>
bool any_nonzero(const scalar_t* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (p[i] != scalar_t(0)) {
      return true;
    }
  }
  return false;
}

// Slot j's key mailbox dk (B rows S*D apart) folded through W_m: out (B rows ld_out apart) += dk W_m, and
// dW_m += dk^T m_j (the slot's rows of the value buffer, cap*H apart).
template <typename scalar_t>
void fold_key_mail(const scalar_t* dk, const scalar_t* m, const scalar_t* wm, scalar_t* out, int64_t ld_out,
                   scalar_t* g_wm, int64_t B, int64_t S, int64_t cap, int64_t D, int64_t H) {
  gemm<scalar_t>(false, false, B, H, D, 1, dk, S * D, wm, H, 1, out, ld_out);
  gemm<scalar_t>(true, false, D, H, B, 1, dk, S * D, m, cap * H, 1, g_wm, H);
}

void check_2d(const at::Tensor& t, const char* name, int64_t d0, int64_t d1) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == d0 && t.size(1) == d1, "sab_kernels._C.lstm: ", name,
              " must have shape (", d0, ", ", d1, "), got ", t.sizes());
}

// The number of slots after a call of T steps from global step step0 that starts with n0 slots.
int64_t slots_after(int64_t n0, int64_t T, int64_t step0, int64_t k_att) {
  return n0 + (step0 + T) / k_att - step0 / k_att;
}

// The GRU cell (nn.GRUCell's gates r, z, n), scalar code: gi (B, 3H) holds the input half x W_ih^T + b_ih and
// is activated in place to (r, z, n); gh (B, 3H) = h W_hh^T + b_hh; ghn (B, H) receives gh's n block (the
// backward's dL/dr needs it); h_hat = (1 - z) n + z h, rows ld_hh apart; h rows ld_h apart.
template <typename scalar_t>
inline scalar_t sigmoid(scalar_t v) {
  return scalar_t(1) / (scalar_t(1) + std::exp(-v));
}

template <typename scalar_t>
void gru_cell_forward(scalar_t* gi, const scalar_t* gh, const scalar_t* h, int64_t ld_h, scalar_t* ghn, scalar_t* hh,
                      int64_t ld_hh, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    scalar_t* g = gi + b * 3 * H;
    const scalar_t* u = gh + b * 3 * H;
    const scalar_t* hp = h + b * ld_h;
    scalar_t* hn = ghn + b * H;
    scalar_t* out = hh + b * ld_hh;
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t r = sigmoid(g[j] + u[j]);
      const scalar_t z = sigmoid(g[H + j] + u[H + j]);
      const scalar_t n = std::tanh(g[2 * H + j] + r * u[2 * H + j]);
      g[j] = r;
      g[H + j] = z;
      g[2 * H + j] = n;
      hn[j] = u[2 * H + j];
      out[j] = (scalar_t(1) - z) * n + z * hp[j];
    }
  }
}

// Its backward: g (B, 3H) activated (r, z, n), ghn (B, H), h the previous state (rows ld_h apart), dhh = dL/dh_hat.
// Out: dgi = dL/d(input half), dgh = dL/d(h W_hh^T + b_hh), dh = the direct part of dL/dh (z dL/dh_hat).
template <typename scalar_t>
void gru_cell_backward(const scalar_t* g, const scalar_t* ghn, const scalar_t* h, int64_t ld_h, const scalar_t* dhh,
                       scalar_t* dgi, scalar_t* dgh, scalar_t* dh, int64_t B, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* gb = g + b * 3 * H;
    const scalar_t* hn = ghn + b * H;
    const scalar_t* hp = h + b * ld_h;
    const scalar_t* d = dhh + b * H;
    scalar_t* di = dgi + b * 3 * H;
    scalar_t* du = dgh + b * 3 * H;
    scalar_t* dhp = dh + b * H;
    for (int64_t j = 0; j < H; ++j) {
      const scalar_t r = gb[j], z = gb[H + j], n = gb[2 * H + j];
      const scalar_t dz = d[j] * (hp[j] - n);
      const scalar_t dan = d[j] * (scalar_t(1) - z) * (scalar_t(1) - n * n);
      const scalar_t dar = dan * hn[j] * r * (scalar_t(1) - r);
      const scalar_t daz = dz * z * (scalar_t(1) - z);
      di[j] = dar;
      di[H + j] = daz;
      di[2 * H + j] = dan;
      du[j] = dar;
      du[H + j] = daz;
      du[2 * H + j] = dan * r;
      dhp[j] = d[j] * z;
    }
  }
}

// A bounded memory's active slots (sab_kernels/kernels/bounded_slots.py, the contract): per row the global ids
// active[b, :count] in write order (kept ones first) and their relevance, plus compact copies of their keys
// (B, A, D) and values (B, A, H), A = W + M + 1, which the attention reads as a memory of `count` slots. All
// of it is updated in place as the sweep goes: a write appends one row, an eviction shifts the rows after it.
template <typename scalar_t>
struct Bounded {
  int64_t W = 0, M = 0, A = 0, count = 0, kept = 0, B = 0, H = 0, D = 0;
  int64_t* active = nullptr;
  scalar_t* rel = nullptr;
  scalar_t* ck = nullptr;
  scalar_t* cv = nullptr;

  // After an attention: weights (B, k) given to compact indices (B, k) add to the recent slots' relevance.
  void add_relevance(const scalar_t* w, const int64_t* idx, int64_t k) {
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t r = 0; r < k; ++r) {
        const int64_t ci = idx[b * k + r];
        if (ci >= kept) {
          rel[b * A + ci] += w[b * k + r];
        }
      }
    }
  }

  void remove(int64_t b, int64_t p) {
    const int64_t tail = count - 1 - p;
    if (tail > 0) {
      std::copy_n(active + b * A + p + 1, tail, active + b * A + p);
      std::copy_n(rel + b * A + p + 1, tail, rel + b * A + p);
      std::copy(ck + (b * A + p + 1) * D, ck + (b * A + count) * D, ck + (b * A + p) * D);
      std::copy(cv + (b * A + p + 1) * H, cv + (b * A + count) * H, cv + (b * A + p) * H);
    }
  }

  // Global slot `slot` was written: value rows ld_v apart, key rows ld_k apart.
  void write(int64_t slot, const scalar_t* v, int64_t ld_v, const scalar_t* key, int64_t ld_k) {
    for (int64_t b = 0; b < B; ++b) {
      active[b * A + count] = slot;
      rel[b * A + count] = scalar_t(0);
      std::copy_n(v + b * ld_v, H, cv + (b * A + count) * H);
      std::copy_n(key + b * ld_k, D, ck + (b * A + count) * D);
    }
    ++count;
    if (count - kept <= W) {
      return;
    }
    if (kept < M) {  // the oldest recent slot joins the kept ones
      ++kept;
      return;
    }
    for (int64_t b = 0; b < B; ++b) {
      const scalar_t* rb = rel + b * A;
      int64_t leaving = kept;
      if (kept > 0) {
        int64_t least = 0;  // the first (oldest) of equal minima
        for (int64_t i = 1; i < kept; ++i) {
          if (rb[i] < rb[least]) {
            least = i;
          }
        }
        if (rb[kept] > rb[least]) {
          leaving = least;
        }
      }
      remove(b, leaving);
    }
    --count;
  }
};

template <typename scalar_t, bool kGru>
std::vector<at::Tensor> forward_typed(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& VALUES, const at::Tensor& KEYS, int64_t n0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& b_ih,
                                      const at::Tensor& b_hh, const at::Tensor& wq, const at::Tensor& bq,
                                      const at::Tensor& wm, const at::Tensor& w, int64_t k_top, int64_t k_att,
                                      int64_t k_trunc, int64_t step0, double eps, int64_t recent, int64_t relevant,
                                      const at::Tensor& active_in, const at::Tensor& relevance_in, int64_t count0,
                                      int64_t kept0, bool keep) {
  (void)k_trunc;  // truncation only shapes the backward
  constexpr int64_t NG = kGru ? 3 : 4;  // gate blocks of H
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const bool mem = k_top > 0;
  const bool bounded = mem && recent > 0;
  const int64_t D = mem ? wq.size(0) : 0;
  // The slot buffers (B, cap, H) and (B, cap, D): rows [0, n0) hold the slots and keys this call starts from,
  // rows [n0, S) are written here (in place: the caller reserved them, see slot_buffers.py).
  const int64_t cap = mem ? VALUES.size(1) : 0;
  const int64_t S = mem ? slots_after(n0, T, step0, k_att) : 0;
  // A bounded memory attends over at most W + M slots.
  const int64_t span = bounded ? std::min(S, recent + relevant) : S;
  const int64_t k = mem ? std::min(k_top, span) : 0;
  const auto opts = x.options();
  const Kernels& kern = kernels(dtype_tag<scalar_t>());

  // The input half of every gate at once; the gates of step t are then completed in place.
  const at::Tensor bias = kGru ? b_ih : at::add(b_ih, b_hh);
  at::Tensor G = at::addmm(bias, x.reshape({T * B, I}), w_ih.t()).view({T, B, NG * H});
  // LSTM: c_t and tanh(c_t). GRU: W_hn h_{t-1} + b_hn (C), nothing (TC).
  // keep = false (no backward will run): the per-step arrays are scratch of one step (two for C, which the
  // next step reads), not (T, ...) arrays, and what is returned for the backward is meaningless.
  const int64_t Ts = keep ? T : std::min<int64_t>(T, 1), Tc = keep ? T : std::min<int64_t>(T, 2);
  at::Tensor C = at::empty({Tc, B, H}, opts), TC = at::empty({kGru ? 0 : Ts, B, H}, opts);
  // The output (T, B, 2H), written in place: h_t in its first half, the summary s_t in its second.
  at::Tensor out = at::empty({T, B, 2 * H}, opts);
  at::Tensor HH = mem ? at::empty({Ts, B, H}, opts) : at::empty({0}, opts);  // h_hat (without memory: h itself)
  at::Tensor Q = at::empty({mem ? Ts : 0, B, D}, opts);
  at::Tensor W = at::empty({mem ? Ts : 0, B, k}, opts);
  at::Tensor IDX = at::empty({mem ? Ts : 0, B, k}, opts.dtype(at::kLong));
  at::Tensor THR = at::empty({mem ? Ts : 0, B}, opts.dtype(at::kLong));
  at::Tensor summary = at::empty({B, H}, opts);
  at::Tensor GH = at::empty({kGru ? B : 0, 3 * H}, opts);  // GRU: the hidden half of one step
  std::vector<int64_t> slot_of(T, -1);  // the slot step t wrote, or -1

  // Bounded memory: the index this call starts from, cloned (the caller's is a value), and compact copies of
  // the active slots' keys and values; the attention's compact indices are mapped back to global slot ids
  // before they are saved, so the backward is the unbounded one.
  Bounded<scalar_t> bm;
  at::Tensor active, relevance, CK, CV;
  std::vector<int64_t> cidx(bounded ? B * k : 0), cthr(bounded ? B : 0);
  if (bounded) {
    bm.W = recent;
    bm.M = relevant;
    bm.A = recent + relevant + 1;
    bm.count = count0;
    bm.kept = kept0;
    bm.B = B;
    bm.H = H;
    bm.D = D;
    active = active_in.clone();
    relevance = relevance_in.clone();
    CK = at::zeros({B, bm.A, D}, opts);
    CV = at::zeros({B, bm.A, H}, opts);
    bm.active = active.data_ptr<int64_t>();
    bm.rel = relevance.data_ptr<scalar_t>();
    bm.ck = CK.data_ptr<scalar_t>();
    bm.cv = CV.data_ptr<scalar_t>();
    const scalar_t* v0 = VALUES.data_ptr<scalar_t>();
    const scalar_t* k0 = KEYS.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < count0; ++i) {
        const int64_t s = bm.active[b * bm.A + i];
        std::copy_n(v0 + (b * cap + s) * H, H, bm.cv + (b * bm.A + i) * H);
        std::copy_n(k0 + (b * cap + s) * D, D, bm.ck + (b * bm.A + i) * D);
      }
    }
  }

  scalar_t* Gp = G.data_ptr<scalar_t>();
  scalar_t* Cp = C.data_ptr<scalar_t>();
  scalar_t* TCp = kGru ? nullptr : TC.data_ptr<scalar_t>();
  scalar_t* GHp = kGru ? GH.data_ptr<scalar_t>() : nullptr;
  const scalar_t* bhh = kGru ? b_hh.data_ptr<scalar_t>() : nullptr;
  scalar_t* outp = out.data_ptr<scalar_t>();
  scalar_t* HHp = mem ? HH.data_ptr<scalar_t>() : nullptr;
  scalar_t* vals = mem ? VALUES.data_ptr<scalar_t>() : nullptr;
  scalar_t* keys = mem ? KEYS.data_ptr<scalar_t>() : nullptr;
  scalar_t* sum = summary.data_ptr<scalar_t>();
  const scalar_t* whh = w_hh.data_ptr<scalar_t>();
  const scalar_t* wqp = mem ? wq.data_ptr<scalar_t>() : nullptr;
  const scalar_t* bqp = mem ? bq.data_ptr<scalar_t>() : nullptr;
  const scalar_t* wmp = mem ? wm.data_ptr<scalar_t>() : nullptr;
  std::vector<int64_t> lengths(B, n0);
  int64_t n = n0;
  const scalar_t* h = h0.data_ptr<scalar_t>();
  const scalar_t* c = kGru ? nullptr : c0.data_ptr<scalar_t>();
  int64_t ldh = H;
  for (int64_t t = 0; t < T; ++t) {
    scalar_t* gt = Gp + t * B * NG * H;
    scalar_t* ht = outp + t * B * 2 * H;  // h_t, rows 2H apart; s_t at ht + H
    const int64_t ts = keep ? t : 0, tc = keep ? t : t % 2;  // rows of the per-step arrays
    scalar_t* hh = mem ? HHp + ts * B * H : ht;
    if constexpr (kGru) {
      for (int64_t b = 0; b < B; ++b) {
        std::copy_n(bhh, 3 * H, GHp + b * 3 * H);
      }
      gemm<scalar_t>(false, true, B, 3 * H, H, 1, h, ldh, whh, H, 1, GHp, 3 * H);
      gru_cell_forward<scalar_t>(gt, GHp, h, ldh, Cp + tc * B * H, hh, mem ? H : 2 * H, B, H);
    } else {
      gemm<scalar_t>(false, true, B, 4 * H, H, 1, h, ldh, whh, H, 1, gt, 4 * H);
      CellArgs ca{gt, c, Cp + tc * B * H, TCp + ts * B * H, hh, mem ? H : 2 * H, B, H};
      kern.cell_forward(ca);
    }
    if (!mem) {
      for (int64_t b = 0; b < B; ++b) {
        std::fill_n(ht + b * 2 * H + H, H, scalar_t(0));
      }
    } else {
      scalar_t* qt = Q.data_ptr<scalar_t>() + ts * B * D;
      for (int64_t b = 0; b < B; ++b) {
        std::copy_n(bqp, D, qt + b * D);
      }
      gemm<scalar_t>(false, true, B, D, H, 1, hh, H, wqp, H, 1, qt, D);
      std::fill(lengths.begin(), lengths.end(), bounded ? bm.count : n);
      scalar_t* wt = W.data_ptr<scalar_t>() + ts * B * k;
      int64_t* it = IDX.data_ptr<int64_t>() + ts * B * k;
      int64_t* tht = THR.data_ptr<int64_t>() + ts * B;
      ForwardArgs a{};
      a.q = qt;
      a.keys = bounded ? bm.ck : keys;
      a.values = bounded ? bm.cv : vals;
      a.w = w.data_ptr();
      a.lengths = lengths.data();
      a.B = B;
      a.T = bounded ? bm.A : cap;  // the rows' stride; the kernel reads the first n (lengths) of each
      a.D = D;
      a.H = H;
      a.k_top = k;  // k_top >= span behaves as k_top = span: every row n <= span is in the softmax regime
      a.k = k;
      a.cap = std::min(k, span - 1) + 1;
      a.eps = eps;
      a.summary = sum;
      a.weights = wt;
      a.indices = bounded ? cidx.data() : it;
      a.threshold = bounded ? cthr.data() : tht;
      attention_forward_rows(a, dtype_tag<scalar_t>());
      if (bounded) {  // compact indices -> global slot ids (saved), then the relevance update
        for (int64_t b = 0; b < B; ++b) {
          const int64_t* ab = bm.active + b * bm.A;
          for (int64_t r = 0; r < k; ++r) {
            const int64_t ci = cidx[b * k + r];
            it[b * k + r] = ci >= 0 ? ab[ci] : -1;
          }
          tht[b] = cthr[b] >= 0 ? ab[cthr[b]] : -1;
        }
        bm.add_relevance(wt, cidx.data(), k);
      }
      for (int64_t b = 0; b < B; ++b) {  // h = h_hat + s
        scalar_t* row = ht + b * 2 * H;
        for (int64_t j = 0; j < H; ++j) {
          row[H + j] = sum[b * H + j];
          row[j] = hh[b * H + j] + sum[b * H + j];
        }
      }
      if (writes_at(step0 + t, k_att)) {
        for (int64_t b = 0; b < B; ++b) {
          std::copy_n(ht + b * 2 * H, H, vals + (b * cap + n) * H);
        }
        gemm<scalar_t>(false, true, B, D, H, 1, ht, 2 * H, wmp, H, 0, keys + n * D, cap * D);
        if (bounded) {
          bm.write(n, ht, 2 * H, keys + n * D, cap * D);
        }
        slot_of[t] = n++;
      }
    }
    h = ht;
    ldh = 2 * H;
    if constexpr (!kGru) {
      c = Cp + tc * B * H;
    }
  }
  at::Tensor h_n = T > 0 ? out[T - 1].narrow(1, 0, H).clone() : h0.clone();
  at::Tensor c_n = kGru ? at::empty({0}, opts) : (T > 0 ? C[keep ? T - 1 : (T - 1) % 2].clone() : c0.clone());
  at::Tensor SLOT = at::tensor(slot_of, opts.dtype(at::kLong));
  if (!bounded) {
    active = at::empty({0}, opts.dtype(at::kLong));
    relevance = at::empty({0}, opts);
  }
  at::Tensor counts = at::tensor(std::vector<int64_t>{bm.count, bm.kept}, opts.dtype(at::kLong));
  // The backward reads h_t from the output itself (saved as such: an in-place change of it fails the
  // backward's version check).
  return {out, h_n, c_n, G, C, TC, HH, out, Q, W, IDX, THR, SLOT, active, relevance, counts};
}

template <typename scalar_t, bool kGru>
std::vector<at::Tensor> backward_typed(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                       const at::Tensor& grad_memory, const std::vector<at::Tensor>& in,
                                       const std::vector<at::Tensor>& sv, int64_t n0, int64_t k_top,
                                       int64_t k_att, int64_t k_trunc, int64_t step0, bool need_grad_x, double eps) {
  const at::Tensor &x = in[0], &h0 = in[1], &c0 = in[2], &VALUES = in[3], &KEYS = in[4], &w_ih = in[5];
  const at::Tensor &w_hh = in[6], &wq = in[8], &wm = in[10], &w = in[11];
  const at::Tensor &G = sv[0], &C = sv[1], &TC = sv[2], &HH = sv[3], &out = sv[4], &Q = sv[5];
  const at::Tensor &IDX = sv[7], &THR = sv[8], &SLOT = sv[9];
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  constexpr int64_t NG = kGru ? 3 : 4;  // gate blocks of H
  const bool mem = k_top > 0;
  const int64_t D = mem ? wq.size(0) : 0;
  // The slots of this call are rows [0, S) of the buffers (B, cap, .); rows [0, n0) it received.
  const int64_t cap = mem ? VALUES.size(1) : 0;
  const int64_t S = mem ? slots_after(n0, T, step0, k_att) : 0;
  const int64_t k = mem ? IDX.size(2) : 0, R = k + 1;
  const auto opts = x.options();
  const Kernels& kern = kernels(dtype_tag<scalar_t>());

  const at::Tensor go = given(grad_out) ? grad_out.contiguous() : at::Tensor();  // (T, B, 2H)
  const scalar_t* gop = go.defined() ? go.data_ptr<scalar_t>() : nullptr;
  at::Tensor g_h = given(grad_h) ? grad_h.contiguous().clone() : at::zeros({B, H}, opts);  // the chain's dL/dh
  at::Tensor g_c = given(grad_c) ? grad_c.contiguous().clone() : at::zeros({B, H}, opts);  // the chain's dL/dc
  scalar_t* ghp = g_h.data_ptr<scalar_t>();
  bool chain_live = any_nonzero(ghp, B * H) || any_nonzero(g_c.data_ptr<scalar_t>(), B * H);

  // The mailboxes of every slot, filled by the attentions that selected it: dL/dv (B, S, H) and dL/dk
  // (B, S, D). The key half is folded through W_m once per slot, when the sweep reaches the step that wrote
  // it (dL/dm = dL/dv + dL/dk W_m, dL/dW_m += dL/dk^T m), not once per attention that chose it.
  at::Tensor mail = at::zeros({B, S, H}, opts), mail_k = at::zeros({B, S, D}, opts);
  scalar_t* mailp = mail.data_ptr<scalar_t>();
  scalar_t* mailkp = mail_k.data_ptr<scalar_t>();
  std::vector<char> touched(S, 0);
  if (given(grad_memory) && S > 0) {
    mail.copy_(grad_memory);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < S; ++j) {
        touched[j] |= any_nonzero(mailp + (b * S + j) * H, H);
      }
    }
  }

  at::Tensor dG = at::empty({T, B, NG * H}, opts);  // dL/d(input half of the gates)
  // GRU: dL/d(h W_hh^T + b_hh) differs from dG in its n block (r multiplies W_hn h + b_hn).
  at::Tensor dGH = at::empty({kGru ? T : 0, B, NG * H}, opts);
  at::Tensor dQ = at::empty({mem ? T : 0, B, D}, opts);
  at::Tensor g_w = at::zeros({D}, opts), g_wm = at::zeros({mem ? D : 0, H}, opts);
  // The compact attention problem of one step: rows 0..k-1 the selected entries, row k the threshold slot.
  at::Tensor kc = at::zeros({B, R, D}, opts), vc = at::zeros({B, R, H}, opts);
  at::Tensor ic = at::empty({B, k}, opts.dtype(at::kLong)), tc_idx = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor gw_zero = at::zeros({B, k}, opts), gq = at::empty({B, D}, opts);
  at::Tensor gk = at::empty({B, R, D}, opts), gv = at::empty({B, R, H}, opts), part = at::empty({B, D}, opts);
  at::Tensor g_hh = at::empty({B, H}, opts), g_s = at::empty({B, H}, opts);
  scalar_t *kcp = kc.data_ptr<scalar_t>(), *vcp = vc.data_ptr<scalar_t>();
  scalar_t *gqp = gq.data_ptr<scalar_t>(), *gkp = gk.data_ptr<scalar_t>(), *gvp = gv.data_ptr<scalar_t>();
  scalar_t *partp = part.data_ptr<scalar_t>(), *gwp = g_w.data_ptr<scalar_t>(), *gwmp = g_wm.data_ptr<scalar_t>();
  scalar_t *ghhp = g_hh.data_ptr<scalar_t>(), *gsp = g_s.data_ptr<scalar_t>();
  int64_t* icp = ic.data_ptr<int64_t>();
  int64_t* tcp = tc_idx.data_ptr<int64_t>();
  const scalar_t* keys = mem ? KEYS.data_ptr<scalar_t>() : nullptr;
  const scalar_t* values = mem ? VALUES.data_ptr<scalar_t>() : nullptr;
  const scalar_t* whh = w_hh.data_ptr<scalar_t>();
  const scalar_t* wqp = mem ? wq.data_ptr<scalar_t>() : nullptr;
  const scalar_t* wmp = mem ? wm.data_ptr<scalar_t>() : nullptr;
  const scalar_t* Gp = G.data_ptr<scalar_t>();
  const scalar_t* Cp = C.data_ptr<scalar_t>();
  const scalar_t* TCp = kGru ? nullptr : TC.data_ptr<scalar_t>();
  const scalar_t* outp = out.data_ptr<scalar_t>();
  scalar_t* dGp = dG.data_ptr<scalar_t>();
  scalar_t* dGHp = kGru ? dGH.data_ptr<scalar_t>() : nullptr;
  scalar_t* dQp = mem ? dQ.data_ptr<scalar_t>() : nullptr;
  const int64_t* slot_of = SLOT.data_ptr<int64_t>();
  int64_t visited = 0;

  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t slot = slot_of[t];
    const bool mail_live = slot >= 0 && touched[slot];
    const scalar_t* got = gop ? gop + t * B * 2 * H : nullptr;  // dL/d(h_t, s_t), rows 2H apart
    const bool out_live = got != nullptr && any_nonzero(got, B * 2 * H);
    if (!chain_live && !mail_live && !out_live) {
      // Nothing reaches this step: its cell and attention are never replayed.
      std::fill_n(dGp + t * B * NG * H, B * NG * H, scalar_t(0));
      if (kGru) {
        std::fill_n(dGHp + t * B * NG * H, B * NG * H, scalar_t(0));
      }
      if (mem) {
        std::fill_n(dQp + t * B * D, B * D, scalar_t(0));
      }
      continue;
    }
    ++visited;
    // dL/dh_t = the chain's + the output's + the mailbox's; h = h_hat + s, so dL/dh_hat starts as dL/dh_t.
    for (int64_t b = 0; b < B; ++b) {
      scalar_t* gh = ghp + b * H;
      if (out_live) {
        for (int64_t j = 0; j < H; ++j) {
          gh[j] += got[b * 2 * H + j];
        }
      }
      if (mail_live) {
        const scalar_t* ml = mailp + (b * S + slot) * H;
        for (int64_t j = 0; j < H; ++j) {
          gh[j] += ml[j];
        }
      }
    }
    if (mail_live) {
      fold_key_mail<scalar_t>(mailkp + slot * D, values + slot * H, wmp, ghp, H, gwmp, B, S, cap, D, H);
    }
    std::copy_n(ghp, B * H, ghhp);
    if (mem) {
      for (int64_t b = 0; b < B; ++b) {  // dL/ds = dL/dh + the output's dL/ds
        for (int64_t j = 0; j < H; ++j) {
          gsp[b * H + j] = ghp[b * H + j] + (out_live ? got[b * 2 * H + H + j] : scalar_t(0));
        }
      }
      const int64_t* idx = IDX.data_ptr<int64_t>() + t * B * k;
      const int64_t* thr = THR.data_ptr<int64_t>() + t * B;
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t r = 0; r < R; ++r) {
          const int64_t s = r < k ? idx[b * k + r] : thr[b];
          if (r < k) {
            icp[b * k + r] = s >= 0 ? r : -1;
          } else {
            tcp[b] = s >= 0 ? k : -1;
          }
          if (s >= 0) {
            std::copy_n(keys + (b * cap + s) * D, D, kcp + (b * R + r) * D);
            std::copy_n(values + (b * cap + s) * H, H, vcp + (b * R + r) * H);
          }
        }
      }
      BackwardArgs a{};
      a.grad_summary = gsp;
      a.grad_weights = gw_zero.data_ptr();
      a.q = Q.data_ptr<scalar_t>() + t * B * D;
      a.keys = kcp;
      a.values = vcp;
      a.w = w.data_ptr();
      a.indices = icp;
      a.threshold = tcp;
      a.B = B;
      a.T = R;
      a.D = D;
      a.H = H;
      a.k = k;
      a.eps = eps;
      a.grad_query = gqp;
      a.grad_keys = gkp;
      a.grad_values = gvp;
      a.grad_w_partial = partp;
      // The kernel writes the key gradient of every selected and threshold row and the value gradient of every
      // selected row: the rows read below, but the threshold's value row, zeroed here. So the kernel need not
      // clear all R rows of each problem, which for dense attention (R = every slot) was a fifth of the step.
      for (int64_t b = 0; b < B; ++b) {
        std::fill_n(gvp + (b * R + k) * H, H, scalar_t(0));
      }
      a.keys_zeroed = true;
      a.values_zeroed = true;
      attention_backward_rows(a, dtype_tag<scalar_t>());
      for (int64_t b = 0; b < B; ++b) {  // row order: deterministic
        for (int64_t d = 0; d < D; ++d) {
          gwp[d] += partp[b * D + d];
        }
      }
      std::copy_n(gqp, B * D, dQp + t * B * D);
      gemm<scalar_t>(false, false, B, H, D, 1, gqp, D, wqp, H, 1, ghhp, H);  // q = W_h h_hat + b
      for (int64_t b = 0; b < B; ++b) {  // into the mailboxes, in a fixed order
        for (int64_t r = 0; r < R; ++r) {
          const int64_t s = r < k ? idx[b * k + r] : thr[b];
          if (s < 0) {
            continue;
          }
          scalar_t* dv = mailp + (b * S + s) * H;
          const scalar_t* gvr = gvp + (b * R + r) * H;
          for (int64_t j = 0; j < H; ++j) {
            dv[j] += gvr[j];
          }
          scalar_t* dk = mailkp + (b * S + s) * D;
          const scalar_t* gkr = gkp + (b * R + r) * D;
          for (int64_t d = 0; d < D; ++d) {
            dk[d] += gkr[d];
          }
          touched[s] = 1;
        }
      }
    }
    scalar_t* dgt = dGp + t * B * NG * H;
    scalar_t* dght = dgt;  // LSTM: the hidden half's gradient is the input half's
    if constexpr (kGru) {
      dght = dGHp + t * B * NG * H;
      const scalar_t* hp = t > 0 ? outp + (t - 1) * B * 2 * H : h0.data_ptr<scalar_t>();
      gru_cell_backward<scalar_t>(Gp + t * B * NG * H, Cp + t * B * H, hp, t > 0 ? 2 * H : H, ghhp, dgt, dght, ghp,
                                  B, H);
    } else {
      CellBackwardArgs cb{Gp + t * B * 4 * H, TCp + t * B * H, t > 0 ? Cp + (t - 1) * B * H : c0.data_ptr<scalar_t>(),
                          ghhp, g_c.data_ptr<scalar_t>(), dgt, B, H};
      kern.cell_backward(cb);
    }
    if (truncated_at(step0 + t, k_trunc)) {
      // h_{t-1} (and c_{t-1}) were detached before this step's cell.
      g_h.zero_();
      g_c.zero_();
      chain_live = false;
    } else {
      // GRU: ghp holds the direct part z dL/dh_hat already.
      gemm<scalar_t>(false, false, B, H, NG * H, 1, dght, NG * H, whh, H, kGru ? 1 : 0, ghp, H);
      chain_live = true;
    }
  }

  // Weight gradients as single matmuls over all steps (unvisited steps contribute zero rows), on one MKL thread
  // so that their bits do not depend on the thread count (see gemm).
  const SingleThreadedMkl one_thread;
  const at::Tensor dGf = dG.view({T * B, NG * H});
  const at::Tensor dGHf = kGru ? dGH.view({T * B, NG * H}) : dGf;
  at::Tensor grad_x = need_grad_x ? at::mm(dGf, w_ih).view({T, B, I}) : at::empty({0}, opts);
  // dW_ih = dG^T x, computed as (x^T dG)^T: with few inputs MKL runs the (I, T B) x (T B, 4H) shape far faster
  // than (4H, T B) x (T B, I): 75 ms against 1,418 ms at T B = 65,536, I = 10, H = 128, one thread (measured
  // for kernels/input_projection.py, the per-step path's twin).
  at::Tensor g_w_ih = at::mm(x.reshape({T * B, I}).t(), dGf).t().contiguous();
  // dW_hh = sum_t dG_t^T h_{t-1}: h_0 .. h_{T-2} are rows of the output, h_{-1} = h0.
  const at::Tensor& dGh = kGru ? dGH : dG;
  at::Tensor g_w_hh = at::mm(dGh[0].t(), h0);
  if (T > 1) {
    gemm<scalar_t>(true, false, NG * H, H, (T - 1) * B, 1, dGh.data_ptr<scalar_t>() + B * NG * H, NG * H, outp, 2 * H, 1,
                   g_w_hh.data_ptr<scalar_t>(), H);
  }
  at::Tensor g_bias = dGf.sum(0);
  // LSTM: one bias gradient (b_ih and b_hh enter as their sum); GRU: b_hh's own.
  at::Tensor g_bias_hh = kGru ? dGHf.sum(0) : at::empty({0}, opts);
  at::Tensor g_wq, g_bq, g_mem;
  if (mem) {
    const at::Tensor dQf = dQ.view({T * B, D});
    g_wq = at::mm(dQf.t(), HH.reshape({T * B, H}));
    g_bq = dQf.sum(0);
    for (int64_t j = 0; j < n0; ++j) {  // the slots this call received: their key gradients fold in here
      if (touched[j]) {
        fold_key_mail<scalar_t>(mailkp + j * D, values + j * H, wmp, mailp + j * H, S * H, gwmp, B, S, cap, D, H);
      }
    }
    g_mem = mail.narrow(1, 0, n0).clone();
  } else {
    // Distinct empty tensors: a custom op's outputs may not alias each other (sab_lstm_op.py).
    g_wq = at::empty({0}, opts);
    g_bq = at::empty({0}, opts);
    g_wm = at::empty({0}, opts);
    g_mem = at::empty({0}, opts);
  }
  if (kGru) {
    g_c = at::empty({0}, opts);
  }
  return {grad_x, g_h, g_c, g_mem, g_w_ih, g_w_hh, g_bias, g_wq, g_bq, g_wm, g_w,
          at::scalar_tensor(visited, opts.dtype(at::kLong)), g_bias_hh};
}

}  // namespace

std::vector<at::Tensor> rnn_forward(int64_t cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                    const at::Tensor& values, const at::Tensor& keys, int64_t n0,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                                    const at::Tensor& query_weight, const at::Tensor& query_bias,
                                    const at::Tensor& key_weight, const at::Tensor& score_weight, int64_t k_top,
                                    int64_t k_att, int64_t k_trunc, int64_t step0, double eps, int64_t recent,
                                    int64_t relevant, const at::Tensor& active, const at::Tensor& relevance,
                                    int64_t count, int64_t kept, bool keep) {
  TORCH_CHECK(cell == kCellLstm || cell == kCellGru, "sab_kernels._C.rnn: cell must be 0 (LSTM) or 1 (GRU), got ",
              cell);
  const bool gru = cell == kCellGru;
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu() && x.is_contiguous(), "sab_kernels._C.rnn: x must be a "
              "contiguous CPU tensor (T, B, I), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "sab_kernels._C.rnn: float32 or float64 expected, got ", x.scalar_type());
  TORCH_CHECK(k_top >= 0, "sab_kernels._C.rnn: k_top must be >= 0, got ", k_top);
  TORCH_CHECK(k_att >= 1, "sab_kernels._C.rnn: k_att must be >= 1, got ", k_att);
  TORCH_CHECK(k_trunc >= 0, "sab_kernels._C.rnn: k_trunc must be >= 0, got ", k_trunc);
  TORCH_CHECK(step0 >= 0, "sab_kernels._C.rnn: step0 must be >= 0, got ", step0);
  TORCH_CHECK(h0.dim() == 2, "sab_kernels._C.rnn: h0 must be (B, H), got ", h0.sizes());
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1), NG = gru ? 3 : 4;
  check_2d(h0, "h0", B, H);
  if (!gru) {
    check_2d(c0, "c0", B, H);
  }
  check_2d(weight_ih, "weight_ih", NG * H, I);
  check_2d(weight_hh, "weight_hh", NG * H, H);
  TORCH_CHECK(bias_ih.numel() == NG * H && bias_hh.numel() == NG * H, "sab_kernels._C.rnn: bias_ih and bias_hh "
              "must have ", NG, "H = ", NG * H, " elements, got ", bias_ih.numel(), " and ", bias_hh.numel());
  if (k_top > 0) {
    const int64_t D = query_weight.size(0);
    check_2d(query_weight, "query_weight", D, H);
    check_2d(key_weight, "key_weight", D, H);
    TORCH_CHECK(query_bias.numel() == D && score_weight.numel() == D, "sab_kernels._C.rnn: query_bias and "
                "score_weight must have D elements");
    TORCH_CHECK(values.dim() == 3 && values.size(0) == B && values.size(2) == H, "sab_kernels._C.rnn: values "
                "must be (B, capacity, H), got ", values.sizes());
    TORCH_CHECK(keys.dim() == 3 && keys.size(0) == B && keys.size(1) == values.size(1) && keys.size(2) == D,
                "sab_kernels._C.rnn: keys must be (B, capacity, D) = (", B, ", ", values.size(1), ", ", D, "), got ",
                keys.sizes());
    TORCH_CHECK(n0 >= 1 && slots_after(n0, T, step0, k_att) <= values.size(1), "sab_kernels._C.rnn: the buffers "
                "hold ", values.size(1), " slots, but the call starts from ", n0, " (>= 1) and writes ",
                slots_after(n0, T, step0, k_att) - n0);
  }
  TORCH_CHECK(recent >= 0 && relevant >= 0, "sab_kernels._C.rnn: recent and relevant must be >= 0, got ", recent,
              " and ", relevant);
  if (recent > 0 && k_top > 0) {  // a bounded memory: check the index it starts from
    const int64_t A = recent + relevant + 1;
    TORCH_CHECK(active.dim() == 2 && active.size(0) == B && active.size(1) == A && active.scalar_type() == at::kLong &&
                    active.is_contiguous() && active.device().is_cpu(),
                "sab_kernels._C.rnn: the index's active slots must be a contiguous CPU int64 tensor (B, W + M + 1) = (",
                B, ", ", A, "), got ", active.sizes(), " ", active.scalar_type());
    TORCH_CHECK(relevance.dim() == 2 && relevance.size(0) == B && relevance.size(1) == A &&
                    relevance.scalar_type() == x.scalar_type() && relevance.is_contiguous() && relevance.device().is_cpu(),
                "sab_kernels._C.rnn: the index's relevance must be a contiguous CPU tensor (B, W + M + 1) = (", B, ", ",
                A, ") of x's dtype, got ", relevance.sizes(), " ", relevance.scalar_type());
    TORCH_CHECK(count >= 1 && kept >= 0 && kept <= relevant && kept <= count && count - kept <= recent,
                "sab_kernels._C.rnn: the index (count ", count, ", kept ", kept, ") does not describe a memory of at "
                "most W = ", recent, " recent and M = ", relevant, " kept slots (count >= 1)");
    const int64_t* ap = active.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t s = ap[b * A + i];
        TORCH_CHECK(s >= 0 && s < n0 && (i == 0 || s > ap[b * A + i - 1]), "sab_kernels._C.rnn: the index's active "
                    "slots must be increasing slot ids below the ", n0, " slots the call starts from; row ", b,
                    " lists ", s, " at position ", i);
      }
    }
  }
  for (const at::Tensor* t : {&h0, &c0, &weight_ih, &weight_hh, &bias_ih, &bias_hh, &query_weight, &query_bias,
                              &key_weight, &score_weight, &values, &keys}) {
    TORCH_CHECK(!t->defined() || t->numel() == 0 || (t->scalar_type() == x.scalar_type() && t->is_contiguous() &&
                                                     t->device().is_cpu()),
                "sab_kernels._C.rnn: every tensor must be contiguous, on the CPU and of x's dtype");
  }
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sab_rnn_forward", [&] {
    auto run = [&](auto gru_tag) {
      return forward_typed<scalar_t, decltype(gru_tag)::value>(
          x, h0, c0, values, keys, n0, weight_ih, weight_hh, bias_ih, bias_hh, query_weight, query_bias, key_weight,
          score_weight, k_top, k_att, k_trunc, step0, eps, k_top > 0 ? recent : 0, relevant, active, relevance, count,
          kept, keep);
    };
    return gru ? run(std::true_type{}) : run(std::false_type{});
  });
}

std::vector<at::Tensor> rnn_backward(int64_t cell, const at::Tensor& grad_out, const at::Tensor& grad_h,
                                     const at::Tensor& grad_c, const at::Tensor& grad_memory,
                                     const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& saved,
                                     int64_t n0, int64_t k_top, int64_t k_att, int64_t k_trunc, int64_t step0,
                                     bool need_grad_x, double eps) {
  TORCH_CHECK(cell == kCellLstm || cell == kCellGru, "sab_kernels._C.rnn_backward: cell must be 0 (LSTM) or 1 (GRU), "
              "got ", cell);
  TORCH_CHECK(inputs.size() == 13 && saved.size() == 10, "sab_kernels._C.rnn_backward: expected 13 inputs and "
              "10 saved tensors, got ", inputs.size(), " and ", saved.size());
  return AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "sab_rnn_backward", [&] {
    return cell == kCellGru
               ? backward_typed<scalar_t, true>(grad_out, grad_h, grad_c, grad_memory, inputs, saved, n0, k_top, k_att,
                                                k_trunc, step0, need_grad_x, eps)
               : backward_typed<scalar_t, false>(grad_out, grad_h, grad_c, grad_memory, inputs, saved, n0, k_top,
                                                 k_att, k_trunc, step0, need_grad_x, eps);
  });
}

// The LSTM entry points of the original contract (the Triton backend's too): one bias (b_ih + b_hh), 12 inputs.
std::vector<at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& values, const at::Tensor& keys, int64_t n0,
                                     const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias,
                                     const at::Tensor& query_weight, const at::Tensor& query_bias,
                                     const at::Tensor& key_weight, const at::Tensor& score_weight, int64_t k_top,
                                     int64_t k_att, int64_t k_trunc, int64_t step0, double eps) {
  const at::Tensor zero = at::zeros_like(bias);  // b_ih + 0 = b_ih, bitwise
  std::vector<at::Tensor> outs = rnn_forward(kCellLstm, x, h0, c0, values, keys, n0, weight_ih, weight_hh, bias, zero,
                                             query_weight, query_bias, key_weight, score_weight, k_top, k_att, k_trunc,
                                             step0, eps, 0, 0, at::Tensor(), at::Tensor(), 0, 0, true);
  outs.resize(13);
  return outs;
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                      const at::Tensor& grad_memory, const std::vector<at::Tensor>& inputs,
                                      const std::vector<at::Tensor>& saved, int64_t n0, int64_t k_top, int64_t k_att,
                                      int64_t k_trunc, int64_t step0, bool need_grad_x, double eps) {
  TORCH_CHECK(inputs.size() == 12 && saved.size() == 10, "sab_kernels._C.lstm_backward: expected 12 inputs and "
              "10 saved tensors, got ", inputs.size(), " and ", saved.size());
  std::vector<at::Tensor> in = inputs;
  in.push_back(inputs[7]);
  std::vector<at::Tensor> outs = rnn_backward(kCellLstm, grad_out, grad_h, grad_c, grad_memory, in, saved, n0, k_top,
                                              k_att, k_trunc, step0, need_grad_x, eps);
  outs.resize(12);
  return outs;
}

}  // namespace sab
