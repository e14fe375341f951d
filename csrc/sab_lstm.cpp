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
// was truncated), plus the slot gradient collected in a mailbox (B, S, H) for the slot step t wrote, from
// every later attention that selected it (or used it as the threshold). Each attention's backward is the
// op's compact (k_top+1)-row problem: the selected rows and the threshold row are gathered, the kernel runs
// on them alone, and the key gradients fold into the slots (dm = dv + dk W_m) and into W_m. Steps that no
// gradient reaches are skipped (sparse replay): no output gradient, no live chain, no selected slot.
// Everything runs in a fixed order, so results are bitwise reproducible for any thread count.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <vector>

#include "sab_host.h"

namespace sab {
namespace {

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

// Any non-zero in rows (B, H) that lie `stride` elements apart.
template <typename scalar_t>
bool any_nonzero_rows(const scalar_t* p, int64_t B, int64_t H, int64_t stride) {
  for (int64_t b = 0; b < B; ++b) {
    if (any_nonzero(p + b * stride, H)) {
      return true;
    }
  }
  return false;
}

void check_2d(const at::Tensor& t, const char* name, int64_t d0, int64_t d1) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == d0 && t.size(1) == d1, "sab_kernels._C.lstm: ", name,
              " must have shape (", d0, ", ", d1, "), got ", t.sizes());
}

template <typename scalar_t>
std::vector<at::Tensor> forward_typed(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                      const at::Tensor& memory, const at::Tensor& w_ih, const at::Tensor& w_hh,
                                      const at::Tensor& bias, const at::Tensor& wq, const at::Tensor& bq,
                                      const at::Tensor& wm, const at::Tensor& w, int64_t k_top, int64_t k_att,
                                      int64_t k_trunc, int64_t step0) {
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const bool mem = k_top > 0;
  const int64_t D = mem ? wq.size(0) : 0;
  const int64_t n0 = mem ? memory.size(1) : 0;
  int64_t S = n0;
  for (int64_t t = 0; t < T; ++t) {
    S += (mem && writes_at(step0 + t, k_att)) ? 1 : 0;
  }
  const auto opts = x.options();
  // The input half of every gate at once; the gates of step t are then completed in place.
  at::Tensor G = at::addmm(bias, x.reshape({T * B, I}), w_ih.t()).view({T, B, 4 * H});
  at::Tensor C = at::empty({T, B, H}, opts), TC = at::empty({T, B, H}, opts);
  // The output (T, B, 2H) is written in place: HS = h_t, its first half; the summaries s_t its second.
  at::Tensor out = at::empty({T, B, 2 * H}, opts);
  at::Tensor HS = out.narrow(2, 0, H), SS = out.narrow(2, H, H);
  at::Tensor HH = mem ? at::empty({T, B, H}, opts) : HS;  // h_hat; without memory h = h_hat
  at::Tensor summary = at::empty({B, H}, opts);  // the kernel writes contiguous rows
  if (!mem) {
    SS.zero_();
  }
  const Kernels& kern = kernels(dtype_tag<scalar_t>());
  std::vector<int64_t> slot_of(T, -1);  // the slot step t wrote, or -1
  const int64_t k = mem ? std::min(k_top, S) : 0;
  at::Tensor Q, W, IDX, THR, VALUES, KEYS;
  if (mem) {
    Q = at::empty({T, B, D}, opts);
    W = at::empty({T, B, k}, opts);
    IDX = at::empty({T, B, k}, opts.dtype(at::kLong));
    THR = at::empty({T, B}, opts.dtype(at::kLong));
    VALUES = at::empty({B, S, H}, opts);
    KEYS = at::empty({B, S, D}, opts);
    VALUES.narrow(1, 0, n0).copy_(memory);
    for (int64_t j = 0; j < n0; ++j) {  // one slot at a time, as the step loop writes them (the same bits)
      KEYS.select(1, j).copy_(at::mm(memory.select(1, j), wm.t()));
    }
  } else {
    VALUES = at::empty({B, 0, H}, opts);
  }
  const at::Tensor w_hh_t = w_hh.t(), wq_t = mem ? wq.t() : at::Tensor(), wm_t = mem ? wm.t() : at::Tensor();
  std::vector<int64_t> lengths(B, n0);
  int64_t n = n0;
  at::Tensor h = h0, c = c0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t tg = step0 + t;
    at::Tensor Gt = G[t];
    Gt.addmm_(h, w_hh_t);
    at::Tensor HHt = HH[t];
    CellArgs ca{Gt.data_ptr(), c.data_ptr(), C[t].data_ptr(), TC[t].data_ptr(), HHt.data_ptr(), HHt.stride(0), B, H};
    kern.cell_forward(ca);
    if (mem) {
      at::Tensor Qt = Q[t];
      at::addmm_out(Qt, bq, HHt, wq_t);
      std::fill(lengths.begin(), lengths.end(), n);
      ForwardArgs a{};
      a.q = Qt.data_ptr();
      a.keys = KEYS.data_ptr();
      a.values = VALUES.data_ptr();
      a.w = w.data_ptr();
      a.lengths = lengths.data();
      a.B = B;
      a.T = S;
      a.D = D;
      a.H = H;
      a.k_top = k;  // k_top >= S behaves as k_top = S: every row n <= S is in the softmax regime
      a.k = k;
      a.cap = std::min(k, S - 1) + 1;
      a.summary = summary.data_ptr();
      a.weights = W[t].data_ptr();
      a.indices = IDX[t].data_ptr<int64_t>();
      a.threshold = THR[t].data_ptr<int64_t>();
      attention_forward_rows(a, dtype_tag<scalar_t>());
      SS[t].copy_(summary);
      at::Tensor HSt = HS[t];
      at::add_out(HSt, HHt, summary);
      if (writes_at(tg, k_att)) {
        VALUES.select(1, n).copy_(HS[t]);
        KEYS.select(1, n).copy_(at::mm(HS[t], wm_t));
        slot_of[t] = n;
        ++n;
      }
    }
    h = HS[t];
    c = C[t];
  }
  at::Tensor h_n = T > 0 ? HS[T - 1].clone() : h0.clone();
  at::Tensor c_n = T > 0 ? C[T - 1].clone() : c0.clone();
  if (!mem) {
    HH = Q = W = THR = KEYS = at::empty({0}, opts);  // HH was a view of out: not saved twice
    IDX = at::empty({0}, opts.dtype(at::kLong));
  }
  at::Tensor SLOT = at::tensor(slot_of, opts.dtype(at::kLong));
  // The backward reads h_t from the output itself (saved as such: an in-place change of it fails the
  // backward's version check).
  return {out, h_n, c_n, VALUES, G, C, TC, HH, out, Q, W, IDX, THR, KEYS, SLOT};
}

template <typename scalar_t>
std::vector<at::Tensor> backward_typed(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                       const at::Tensor& grad_memory, const std::vector<at::Tensor>& in,
                                       const std::vector<at::Tensor>& sv, int64_t k_top, int64_t k_trunc,
                                       int64_t step0, bool need_grad_x) {
  const at::Tensor &x = in[0], &h0 = in[1], &c0 = in[2], &memory = in[3], &w_ih = in[4], &w_hh = in[5];
  const at::Tensor &wq = in[7], &wm = in[9], &w = in[10];
  const at::Tensor &VALUES = sv[0], &G = sv[1], &C = sv[2], &TC = sv[3], &HH = sv[4], &Q = sv[6];
  const at::Tensor &IDX = sv[8], &THR = sv[9], &KEYS = sv[10], &SLOT = sv[11];
  const int64_t T = x.size(0), B = x.size(1), I = x.size(2), H = h0.size(1);
  const at::Tensor HS = sv[5].narrow(2, 0, H);  // h_t: the first half of the output
  const bool mem = k_top > 0;
  const int64_t D = mem ? wq.size(0) : 0;
  const int64_t S = VALUES.size(1), n0 = mem ? memory.size(1) : 0;
  const int64_t k = mem ? IDX.size(2) : 0, R = k + 1;
  const auto opts = x.options();
  const Kernels& kern = kernels(dtype_tag<scalar_t>());

  // Output gradients split into the h and s halves (zeros where autograd gave none).
  at::Tensor go_h, go_s;  // views (T, B, H) with rows 2H apart
  if (given(grad_out)) {
    const at::Tensor go = grad_out.contiguous();
    go_h = go.narrow(2, 0, H);
    go_s = go.narrow(2, H, H);
  }
  at::Tensor g_h = given(grad_h) ? grad_h.contiguous().clone() : at::zeros({B, H}, opts);  // chain: dL/dh
  at::Tensor g_c = given(grad_c) ? grad_c.contiguous().clone() : at::zeros({B, H}, opts);  // chain: dL/dc
  bool chain_live = any_nonzero(g_h.data_ptr<scalar_t>(), B * H) || any_nonzero(g_c.data_ptr<scalar_t>(), B * H);

  // The mailbox: dL/dm for every slot, filled by the attentions that selected it.
  at::Tensor mail = at::zeros({B, S, H}, opts);
  std::vector<char> touched(S, 0);
  if (given(grad_memory) && S > 0) {
    mail.copy_(grad_memory);
    const scalar_t* gm = mail.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < S; ++j) {
        touched[j] |= any_nonzero(gm + (b * S + j) * H, H);
      }
    }
  }

  at::Tensor dG = at::empty({T, B, 4 * H}, opts);
  at::Tensor dQ = mem ? at::empty({T, B, D}, opts) : at::Tensor();
  at::Tensor g_w = at::zeros({D}, opts), g_wm = mem ? at::zeros({D, H}, opts) : at::Tensor();
  // The compact attention problem of one step: rows 0..k-1 the selected entries, row k the threshold slot.
  at::Tensor kc = at::zeros({B, R, D}, opts), vc = at::zeros({B, R, H}, opts);
  at::Tensor ic = at::empty({B, k}, opts.dtype(at::kLong)), tc_idx = at::empty({B}, opts.dtype(at::kLong));
  at::Tensor gw_zero = at::zeros({B, k}, opts), gq = at::empty({B, D}, opts);
  at::Tensor gk = at::empty({B, R, D}, opts), gv = at::empty({B, R, H}, opts), part = at::empty({B, D}, opts);
  at::Tensor g_hh = at::empty({B, H}, opts), g_s = at::empty({B, H}, opts);
  const scalar_t* keys = mem ? KEYS.data_ptr<scalar_t>() : nullptr;
  const scalar_t* values = mem ? VALUES.data_ptr<scalar_t>() : nullptr;
  scalar_t* mailp = mail.data_ptr<scalar_t>();
  const int64_t* slot_of = SLOT.data_ptr<int64_t>();
  int64_t visited = 0;

  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t slot = slot_of[t];
    const bool mail_live = slot >= 0 && touched[slot];
    const bool out_live = go_h.defined() && any_nonzero_rows(go_h[t].data_ptr<scalar_t>(), B, 2 * H, 2 * H);
    if (!chain_live && !mail_live && !out_live) {
      dG[t].zero_();
      if (mem) {
        dQ[t].zero_();
      }
      continue;  // nothing reaches this step: its cell and attention are never replayed
    }
    ++visited;
    // dL/dh_t, into g_h (which holds the chain's share).
    if (go_h.defined()) {
      g_h.add_(go_h[t]);
    }
    if (mail_live) {
      g_h.add_(mail.select(1, slot));
    }
    g_hh.copy_(g_h);  // h = h_hat + s: dL/dh_hat starts as dL/dh
    if (mem) {
      g_s.copy_(g_h);
      if (go_s.defined()) {
        g_s.add_(go_s[t]);
      }
      const int64_t* idx = IDX[t].data_ptr<int64_t>();
      const int64_t* thr = THR[t].data_ptr<int64_t>();
      scalar_t* kcp = kc.data_ptr<scalar_t>();
      scalar_t* vcp = vc.data_ptr<scalar_t>();
      int64_t* icp = ic.data_ptr<int64_t>();
      int64_t* tcp = tc_idx.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t r = 0; r < R; ++r) {
          const int64_t s = r < k ? idx[b * k + r] : thr[b];
          if (r < k) {
            icp[b * k + r] = s >= 0 ? r : -1;
          } else {
            tcp[b] = s >= 0 ? k : -1;
          }
          if (s >= 0) {
            std::copy_n(keys + (b * S + s) * D, D, kcp + (b * R + r) * D);
            std::copy_n(values + (b * S + s) * H, H, vcp + (b * R + r) * H);
          }
        }
      }
      BackwardArgs a{};
      a.grad_summary = g_s.data_ptr();
      a.grad_weights = gw_zero.data_ptr();
      a.q = Q[t].data_ptr();
      a.keys = kc.data_ptr();
      a.values = vc.data_ptr();
      a.w = w.data_ptr();
      a.indices = icp;
      a.threshold = tcp;
      a.B = B;
      a.T = R;
      a.D = D;
      a.H = H;
      a.k = k;
      a.grad_query = gq.data_ptr();
      a.grad_keys = gk.data_ptr();
      a.grad_values = gv.data_ptr();
      a.grad_w_partial = part.data_ptr();
      a.keys_zeroed = false;
      a.values_zeroed = false;
      attention_backward_rows(a, dtype_tag<scalar_t>());
      g_w.add_(part.sum(0));  // row order: deterministic
      dQ[t].copy_(gq);
      g_hh.addmm_(gq, wq);
      // Keys are W_m m: dL/dm = dL/dv + dL/dk W_m, and dL/dW_m = sum dk m^T.
      at::Tensor dm = at::addmm(gv.view({B * R, H}), gk.view({B * R, D}), wm);
      g_wm.addmm_(gk.view({B * R, D}).t(), vc.view({B * R, H}));
      const scalar_t* dmp = dm.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t r = 0; r < R; ++r) {
          const int64_t s = r < k ? idx[b * k + r] : thr[b];
          if (s < 0) {
            continue;
          }
          scalar_t* dst = mailp + (b * S + s) * H;
          const scalar_t* src = dmp + (b * R + r) * H;
          for (int64_t j = 0; j < H; ++j) {
            dst[j] += src[j];
          }
          touched[s] = 1;
        }
      }
    }
    CellBackwardArgs cb{G[t].data_ptr(), TC[t].data_ptr(), t > 0 ? C[t - 1].data_ptr() : c0.data_ptr(),
                        g_hh.data_ptr(), g_c.data_ptr(), dG[t].data_ptr(), B, H};
    kern.cell_backward(cb);
    if (truncated_at(step0 + t, k_trunc)) {
      // h_{t-1} and c_{t-1} were detached before this step's cell.
      g_h.zero_();
      g_c.zero_();
      chain_live = false;
    } else {
      at::mm_out(g_h, dG[t], w_hh);
      chain_live = true;
    }
  }

  // Weight gradients as single matmuls over all steps (unvisited steps contribute zero rows).
  const at::Tensor dGf = dG.view({T * B, 4 * H});
  at::Tensor grad_x = need_grad_x ? at::mm(dGf, w_ih).view({T, B, I}) : at::empty({0}, opts);
  at::Tensor g_w_ih = at::mm(dGf.t(), x.reshape({T * B, I}));
  // dW_hh = sum_t dG_t^T h_{t-1}: h_0 .. h_{T-2} are rows of the output, h_{-1} = h0.
  at::Tensor g_w_hh = at::mm(dG[0].t(), h0);
  if (T > 1) {
    g_w_hh.addmm_(dG.narrow(0, 1, T - 1).reshape({(T - 1) * B, 4 * H}).t(), HS.narrow(0, 0, T - 1).reshape({(T - 1) * B, H}));
  }
  at::Tensor g_bias = dGf.sum(0);
  at::Tensor g_wq, g_bq, g_mem;
  if (mem) {
    const at::Tensor dQf = dQ.view({T * B, D});
    g_wq = at::mm(dQf.t(), HH.reshape({T * B, H}));
    g_bq = dQf.sum(0);
    g_mem = mail.narrow(1, 0, n0).clone();
  } else {
    g_wq = g_bq = g_wm = at::empty({0}, opts);
    g_mem = at::zeros_like(memory);
  }
  return {grad_x, g_h, g_c, g_mem, g_w_ih, g_w_hh, g_bias, g_wq, g_bq, g_wm, g_w,
          at::scalar_tensor(visited, opts.dtype(at::kLong))};
}

}  // namespace

std::vector<at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& memory, const at::Tensor& weight_ih,
                                     const at::Tensor& weight_hh, const at::Tensor& bias,
                                     const at::Tensor& query_weight, const at::Tensor& query_bias,
                                     const at::Tensor& key_weight, const at::Tensor& score_weight, int64_t k_top,
                                     int64_t k_att, int64_t k_trunc, int64_t step0) {
  TORCH_CHECK(x.dim() == 3 && x.device().is_cpu() && x.is_contiguous(), "sab_kernels._C.lstm: x must be a "
              "contiguous CPU tensor (T, B, I), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "sab_kernels._C.lstm: float32 or float64 expected, got ", x.scalar_type());
  TORCH_CHECK(k_top >= 0 && k_att >= 1 && k_trunc >= 0 && step0 >= 0, "sab_kernels._C.lstm: bad k_top/k_att/k_trunc");
  const int64_t B = x.size(1), I = x.size(2), H = h0.size(1);
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
    TORCH_CHECK(memory.dim() == 3 && memory.size(0) == B && memory.size(1) >= 1 && memory.size(2) == H,
                "sab_kernels._C.lstm: memory must be (B, n >= 1, H), got ", memory.sizes());
  }
  for (const at::Tensor* t : {&h0, &c0, &weight_ih, &weight_hh, &bias, &query_weight, &query_bias, &key_weight,
                              &score_weight, &memory}) {
    TORCH_CHECK(!t->defined() || t->numel() == 0 || (t->scalar_type() == x.scalar_type() && t->is_contiguous() &&
                                                     t->device().is_cpu()),
                "sab_kernels._C.lstm: every tensor must be contiguous, on the CPU and of x's dtype");
  }
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sab_lstm_forward", [&] {
    return forward_typed<scalar_t>(x, h0, c0, memory, weight_ih, weight_hh, bias, query_weight, query_bias,
                                   key_weight, score_weight, k_top, k_att, k_trunc, step0);
  });
}

std::vector<at::Tensor> lstm_backward(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                      const at::Tensor& grad_memory, const std::vector<at::Tensor>& inputs,
                                      const std::vector<at::Tensor>& saved, int64_t k_top, int64_t k_trunc,
                                      int64_t step0, bool need_grad_x) {
  TORCH_CHECK(inputs.size() == 11 && saved.size() == 12, "sab_kernels._C.lstm_backward: expected 11 inputs and "
              "12 saved tensors, got ", inputs.size(), " and ", saved.size());
  return AT_DISPATCH_FLOATING_TYPES(inputs[0].scalar_type(), "sab_lstm_backward", [&] {
    return backward_typed<scalar_t>(grad_out, grad_h, grad_c, grad_memory, inputs, saved, k_top, k_trunc, step0,
                                    need_grad_x);
  });
}

}  // namespace sab
