// The fused SAB-LSTM: one call runs a whole sequence (SPEC section 2), one call its reverse sweep.
//
// Forward, step t (global step tg = step0 + t), with h, c the previous state:
//   gates = x_t W_ih^T + b + h W_hh^T (the input half for all steps in one matmul); c = f c + i g;
//   h_hat = o tanh(c); q = W_q h_hat + b_q; (s, a, idx, thr) = sparse attention of q over the n slots
//   (the kernel table of sparse_attention.cpp, called directly); h = h_hat + s;
//   every k_att steps ((tg+1) % k_att == 0) slot n = h, key n = W_m h.
// Truncation ((tg+1) % k_trunc == 0) cuts the main chain before step t's cell; it changes only the backward.
// k_top = 0: no memory (truncated-BPTT LSTM; k_trunc = 0: full BPTT).
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
}

namespace sab {
namespace {

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

template <typename scalar_t>
std::vector<at::Tensor> forward_typed(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& VALUES, const at::Tensor& KEYS, int64_t n0,
                                      const at::Tensor& w_ih, const at::Tensor& w_hh, const at::Tensor& bias,
                                      const at::Tensor& wq, const at::Tensor& bq, const at::Tensor& wm,
                                      const at::Tensor& w, int64_t k_top, int64_t k_att, int64_t k_trunc,
                                      int64_t step0, double eps) {
  (void)k_trunc;  // truncation only shapes the backward
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const bool mem = k_top > 0;
  const int64_t D = mem ? wq.size(0) : 0;
  // The slot buffers (B, cap, H) and (B, cap, D): rows [0, n0) hold the slots and keys this call starts from,
  // rows [n0, S) are written here (in place: the caller reserved them, see slot_buffers.py).
  const int64_t cap = mem ? VALUES.size(1) : 0;
  const int64_t S = mem ? slots_after(n0, T, step0, k_att) : 0;
  const int64_t k = mem ? std::min(k_top, S) : 0;
  const auto opts = x.options();
  const Kernels& kern = kernels(dtype_tag<scalar_t>());

  // The input half of every gate at once; the gates of step t are then completed in place.
  at::Tensor G = at::addmm(bias, x.reshape({T * B, I}), w_ih.t()).view({T, B, 4 * H});
  at::Tensor C = at::empty({T, B, H}, opts), TC = at::empty({T, B, H}, opts);
  // The output (T, B, 2H), written in place: h_t in its first half, the summary s_t in its second.
  at::Tensor out = at::empty({T, B, 2 * H}, opts);
  at::Tensor HH = mem ? at::empty({T, B, H}, opts) : at::empty({0}, opts);  // h_hat (without memory: h itself)
  at::Tensor Q = at::empty({mem ? T : 0, B, D}, opts);
  at::Tensor W = at::empty({mem ? T : 0, B, k}, opts);
  at::Tensor IDX = at::empty({mem ? T : 0, B, k}, opts.dtype(at::kLong));
  at::Tensor THR = at::empty({mem ? T : 0, B}, opts.dtype(at::kLong));
  at::Tensor summary = at::empty({B, H}, opts);
  std::vector<int64_t> slot_of(T, -1);  // the slot step t wrote, or -1

  scalar_t* Gp = G.data_ptr<scalar_t>();
  scalar_t* Cp = C.data_ptr<scalar_t>();
  scalar_t* TCp = TC.data_ptr<scalar_t>();
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
  const scalar_t* c = c0.data_ptr<scalar_t>();
  int64_t ldh = H;
  for (int64_t t = 0; t < T; ++t) {
    scalar_t* gt = Gp + t * B * 4 * H;
    scalar_t* ht = outp + t * B * 2 * H;  // h_t, rows 2H apart; s_t at ht + H
    gemm<scalar_t>(false, true, B, 4 * H, H, 1, h, ldh, whh, H, 1, gt, 4 * H);
    scalar_t* hh = mem ? HHp + t * B * H : ht;
    CellArgs ca{gt, c, Cp + t * B * H, TCp + t * B * H, hh, mem ? H : 2 * H, B, H};
    kern.cell_forward(ca);
    if (!mem) {
      for (int64_t b = 0; b < B; ++b) {
        std::fill_n(ht + b * 2 * H + H, H, scalar_t(0));
      }
    } else {
      scalar_t* qt = Q.data_ptr<scalar_t>() + t * B * D;
      for (int64_t b = 0; b < B; ++b) {
        std::copy_n(bqp, D, qt + b * D);
      }
      gemm<scalar_t>(false, true, B, D, H, 1, hh, H, wqp, H, 1, qt, D);
      std::fill(lengths.begin(), lengths.end(), n);
      ForwardArgs a{};
      a.q = qt;
      a.keys = keys;
      a.values = vals;
      a.w = w.data_ptr();
      a.lengths = lengths.data();
      a.B = B;
      a.T = cap;  // the rows' stride; the kernel reads the first n (lengths) of each
      a.D = D;
      a.H = H;
      a.k_top = k;  // k_top >= S behaves as k_top = S: every row n <= S is in the softmax regime
      a.k = k;
      a.cap = std::min(k, S - 1) + 1;
      a.eps = eps;
      a.summary = sum;
      a.weights = W.data_ptr<scalar_t>() + t * B * k;
      a.indices = IDX.data_ptr<int64_t>() + t * B * k;
      a.threshold = THR.data_ptr<int64_t>() + t * B;
      attention_forward_rows(a, dtype_tag<scalar_t>());
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
        slot_of[t] = n++;
      }
    }
    h = ht;
    ldh = 2 * H;
    c = Cp + t * B * H;
  }
  at::Tensor h_n = T > 0 ? out[T - 1].narrow(1, 0, H).clone() : h0.clone();
  at::Tensor c_n = T > 0 ? C[T - 1].clone() : c0.clone();
  at::Tensor SLOT = at::tensor(slot_of, opts.dtype(at::kLong));
  // The backward reads h_t from the output itself (saved as such: an in-place change of it fails the
  // backward's version check).
  return {out, h_n, c_n, G, C, TC, HH, out, Q, W, IDX, THR, SLOT};
}

template <typename scalar_t>
std::vector<at::Tensor> backward_typed(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                       const at::Tensor& grad_memory, const std::vector<at::Tensor>& in,
                                       const std::vector<at::Tensor>& sv, int64_t n0, int64_t k_top,
                                       int64_t k_att, int64_t k_trunc, int64_t step0, bool need_grad_x, double eps) {
  const at::Tensor &x = in[0], &h0 = in[1], &c0 = in[2], &VALUES = in[3], &KEYS = in[4], &w_ih = in[5];
  const at::Tensor &w_hh = in[6], &wq = in[8], &wm = in[10], &w = in[11];
  const at::Tensor &G = sv[0], &C = sv[1], &TC = sv[2], &HH = sv[3], &out = sv[4], &Q = sv[5];
  const at::Tensor &IDX = sv[7], &THR = sv[8], &SLOT = sv[9];
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
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

  at::Tensor dG = at::empty({T, B, 4 * H}, opts);
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
  const scalar_t* TCp = TC.data_ptr<scalar_t>();
  scalar_t* dGp = dG.data_ptr<scalar_t>();
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
      std::fill_n(dGp + t * B * 4 * H, B * 4 * H, scalar_t(0));
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
      a.keys_zeroed = false;
      a.values_zeroed = false;
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
    scalar_t* dgt = dGp + t * B * 4 * H;
    CellBackwardArgs cb{Gp + t * B * 4 * H, TCp + t * B * H, t > 0 ? Cp + (t - 1) * B * H : c0.data_ptr<scalar_t>(),
                        ghhp, g_c.data_ptr<scalar_t>(), dgt, B, H};
    kern.cell_backward(cb);
    if (truncated_at(step0 + t, k_trunc)) {
      // h_{t-1} and c_{t-1} were detached before this step's cell.
      g_h.zero_();
      g_c.zero_();
      chain_live = false;
    } else {
      gemm<scalar_t>(false, false, B, H, 4 * H, 1, dgt, 4 * H, whh, H, 0, ghp, H);
      chain_live = true;
    }
  }

  // Weight gradients as single matmuls over all steps (unvisited steps contribute zero rows).
  const at::Tensor dGf = dG.view({T * B, 4 * H});
  at::Tensor grad_x = need_grad_x ? at::mm(dGf, w_ih).view({T, B, I}) : at::empty({0}, opts);
  // dW_ih = dG^T x, computed as (x^T dG)^T: with few inputs MKL runs the (I, T B) x (T B, 4H) shape far faster
  // than (4H, T B) x (T B, I): 75 ms against 1,418 ms at T B = 65,536, I = 10, H = 128, one thread (measured
  // for kernels/input_projection.py, the per-step path's twin).
  at::Tensor g_w_ih = at::mm(x.reshape({T * B, I}).t(), dGf).t().contiguous();
  // dW_hh = sum_t dG_t^T h_{t-1}: h_0 .. h_{T-2} are rows of the output, h_{-1} = h0.
  at::Tensor g_w_hh = at::mm(dG[0].t(), h0);
  if (T > 1) {
    gemm<scalar_t>(true, false, 4 * H, H, (T - 1) * B, 1, dGp + B * 4 * H, 4 * H, out.data_ptr<scalar_t>(), 2 * H, 1,
                   g_w_hh.data_ptr<scalar_t>(), H);
  }
  at::Tensor g_bias = dGf.sum(0);
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
  return {grad_x, g_h, g_c, g_mem, g_w_ih, g_w_hh, g_bias, g_wq, g_bq, g_wm, g_w,
          at::scalar_tensor(visited, opts.dtype(at::kLong))};
}

}  // namespace

std::vector<at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& values, const at::Tensor& keys, int64_t n0,
                                     const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias,
                                     const at::Tensor& query_weight, const at::Tensor& query_bias,
                                     const at::Tensor& key_weight, const at::Tensor& score_weight, int64_t k_top,
                                     int64_t k_att, int64_t k_trunc, int64_t step0, double eps) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu() && x.is_contiguous(), "sab_kernels._C.lstm: x must be a "
              "contiguous CPU tensor (T, B, I), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "sab_kernels._C.lstm: float32 or float64 expected, got ", x.scalar_type());
  TORCH_CHECK(k_top >= 0, "sab_kernels._C.lstm: k_top must be >= 0, got ", k_top);
  TORCH_CHECK(k_att >= 1, "sab_kernels._C.lstm: k_att must be >= 1, got ", k_att);
  TORCH_CHECK(k_trunc >= 0, "sab_kernels._C.lstm: k_trunc must be >= 0, got ", k_trunc);
  TORCH_CHECK(step0 >= 0, "sab_kernels._C.lstm: step0 must be >= 0, got ", step0);
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  check_2d(h0, "h0", B, H);
  check_2d(c0, "c0", B, H);
  check_2d(weight_ih, "weight_ih", 4 * H, I);
  check_2d(weight_hh, "weight_hh", 4 * H, H);
  TORCH_CHECK(bias.numel() == 4 * H, "sab_kernels._C.lstm: bias must have 4H elements");
  if (k_top > 0) {
    const int64_t D = query_weight.size(0);
    check_2d(query_weight, "query_weight", D, H);
    check_2d(key_weight, "key_weight", D, H);
    TORCH_CHECK(query_bias.numel() == D && score_weight.numel() == D, "sab_kernels._C.lstm: query_bias and "
                "score_weight must have D elements");
    TORCH_CHECK(values.dim() == 3 && values.size(0) == B && values.size(2) == H, "sab_kernels._C.lstm: values "
                "must be (B, capacity, H), got ", values.sizes());
    TORCH_CHECK(keys.dim() == 3 && keys.size(0) == B && keys.size(1) == values.size(1) && keys.size(2) == D,
                "sab_kernels._C.lstm: keys must be (B, capacity, D) = (", B, ", ", values.size(1), ", ", D, "), got ",
                keys.sizes());
    TORCH_CHECK(n0 >= 1 && slots_after(n0, T, step0, k_att) <= values.size(1), "sab_kernels._C.lstm: the buffers "
                "hold ", values.size(1), " slots, but the call starts from ", n0, " (>= 1) and writes ",
                slots_after(n0, T, step0, k_att) - n0);
  }
  for (const at::Tensor* t : {&h0, &c0, &weight_ih, &weight_hh, &bias, &query_weight, &query_bias, &key_weight,
                              &score_weight, &values, &keys}) {
    TORCH_CHECK(!t->defined() || t->numel() == 0 || (t->scalar_type() == x.scalar_type() && t->is_contiguous() &&
                                                     t->device().is_cpu()),
                "sab_kernels._C.lstm: every tensor must be contiguous, on the CPU and of x's dtype");
  }
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sab_lstm_forward", [&] {
    return forward_typed<scalar_t>(x, h0, c0, values, keys, n0, weight_ih, weight_hh, bias, query_weight, query_bias,
                                   key_weight, score_weight, k_top, k_att, k_trunc, step0, eps);
  });
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                      const at::Tensor& grad_memory, const std::vector<at::Tensor>& inputs,
                                      const std::vector<at::Tensor>& saved, int64_t n0, int64_t k_top, int64_t k_att,
                                      int64_t k_trunc, int64_t step0, bool need_grad_x, double eps) {
  TORCH_CHECK(inputs.size() == 12 && saved.size() == 10, "sab_kernels._C.lstm_backward: expected 12 inputs and "
              "10 saved tensors, got ", inputs.size(), " and ", saved.size());
  return AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "sab_lstm_backward", [&] {
    return backward_typed<scalar_t>(grad_out, grad_h, grad_c, grad_memory, inputs, saved, n0, k_top, k_att, k_trunc,
                                    step0, need_grad_x, eps);
  });
}

}  // namespace sab
