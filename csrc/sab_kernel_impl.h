// The SAB sparse-attention kernels, written once against at::vec::Vectorized and compiled once per CPU
// capability: kernel_default.cpp, kernel_avx2.cpp and kernel_avx512.cpp each define CPU_CAPABILITY
// (DEFAULT / AVX2 / AVX512) and include this file, so every function lands in its own namespace
// sab::<capability> and the host picks one table at run time.
//
// Contract: sab_kernels/kernels/__init__.py; semantics: sab_kernels/reference.py. Per row b, with n valid
// slots:
//   s_i = sum_d w_d tanh(q_d + k_{i,d}), computed for i < n only, in the compute dtype (float for
//   float16/bfloat16 storage, else the storage dtype);
//   the top min(k_top + 1, n) slots by (score descending, NaN first, lower index first) are kept in a sorted
//   list while the slots stream past (no (T,) or (T, D) temporary);
//   n > k_top: tau = the (k_top+1)-th score, a_j = relu(s_j - tau) / (sum + eps) (eps = 1e-7, the paper's, by default);
//   1 <= n <= k_top: a = softmax over the n slots; n = 0: nothing selected.
// The backward recomputes the scores of the selected and threshold rows with the same function as the
// forward (so the same bits), and writes gradient into those rows only.
// Vectorised over D (scores, backward) and H (summary, dot products) with fmadd; tanh: tanh_vec below.

#include "sab_kernel.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) before including sab_kernel_impl.h"
#endif

namespace sab {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::Half> {
  using type = float;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_type = typename AccType<T>::type;

template <typename T>
constexpr bool is_reduced_v = std::is_same_v<T, c10::Half> || std::is_same_v<T, c10::BFloat16>;

// ---------------------------------------------------------------------------------------------------------
// Loads and stores in the compute dtype. `n` is the number of live lanes (1..size()); the rest read as 0.

template <typename scalar_t>
inline Vectorized<acc_type<scalar_t>> load_acc(const scalar_t* p) {
  if constexpr (is_reduced_v<scalar_t>) {
    Vectorized<float> out;
    at::vec::load_to_float(p, out);
    return out;
  } else {
    return Vectorized<scalar_t>::loadu(p);
  }
}

template <typename scalar_t>
inline Vectorized<acc_type<scalar_t>> load_acc(const scalar_t* p, int64_t n) {
  using acc_t = acc_type<scalar_t>;
  constexpr int64_t V = Vectorized<acc_t>::size();
  if (n == V) {
    return load_acc(p);
  }
  if constexpr (is_reduced_v<scalar_t>) {
    __at_align__ float buf[V];
    for (int64_t i = 0; i < V; ++i) {
      buf[i] = i < n ? static_cast<float>(p[i]) : 0.f;
    }
    return Vectorized<float>::loadu(buf);
  } else {
    return Vectorized<scalar_t>::loadu(p, n);
  }
}

template <typename scalar_t, typename acc_t>
inline void store_acc(scalar_t* p, const Vectorized<acc_t>& v, int64_t n) {
  constexpr int64_t V = Vectorized<acc_t>::size();
  if constexpr (is_reduced_v<scalar_t>) {
    __at_align__ float buf[V];
    v.store(buf);
    for (int64_t i = 0; i < n; ++i) {
      p[i] = static_cast<scalar_t>(buf[i]);
    }
  } else {
    if (n == V) {
      v.store(p);
    } else {
      v.store(p, static_cast<int>(n));
    }
  }
}

template <typename acc_t>
inline acc_t reduce_sum(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, v);
}

// ---------------------------------------------------------------------------------------------------------
// tanh. float (also the compute dtype of float16/bfloat16): a rational minimax fit of our own,
// tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 9 (relative error 7e-9 in exact arithmetic, 3.4e-7 absolute in
// float, against 6e-8 for SLEEF's u10 tanh), about 2.5x faster than Vectorized<float>::tanh; the scores it
// feeds are sums of D products, so it is well inside the float32 tolerance. double: SLEEF's tanh (1 ulp).
// NaN in, NaN out; +-inf -> +-1.

inline Vectorized<float> tanh_vec(const Vectorized<float>& x) {
  using Vec = Vectorized<float>;
  const Vec lim(9.f), one(1.f);
  const Vec xc = at::vec::clamp(x, -lim, lim);  // tanh(9) rounds to 1 in float
  const Vec t = xc * xc;
  Vec p(-8.488857810e-14f);
  p = at::vec::fmadd(p, t, Vec(5.278003035e-11f));
  p = at::vec::fmadd(p, t, Vec(-2.022533252e-08f));
  p = at::vec::fmadd(p, t, Vec(1.115433315e-05f));
  p = at::vec::fmadd(p, t, Vec(3.103958443e-03f));
  p = at::vec::fmadd(p, t, Vec(1.308401227e-01f));
  p = at::vec::fmadd(p, t, one);
  Vec q(2.546148608e-04f);
  q = at::vec::fmadd(q, t, Vec(2.449518815e-02f));
  q = at::vec::fmadd(q, t, Vec(4.641734064e-01f));
  q = at::vec::fmadd(q, t, one);
  const Vec r = at::vec::clamp(xc * p / q, -one, one);
  return Vec::blendv(r, x, x != x);  // clamp may drop NaN on some ISAs: put it back
}

inline Vectorized<double> tanh_vec(const Vectorized<double>& x) {
  return x.tanh();
}

// ---------------------------------------------------------------------------------------------------------
// Scalar helpers with torch's NaN semantics.

// True when score `a` ranks strictly above `b` (descending, NaN above every number, NaN == NaN). The caller
// guarantees `a` belongs to a higher slot index than `b`, so equal scores keep `b` first.
template <typename acc_t>
inline bool ranks_above(acc_t a, acc_t b) {
  return a > b || (a != a && b == b);
}

// torch.relu: max(x, 0) that propagates NaN.
template <typename acc_t>
inline acc_t relu(acc_t x) {
  return (x > acc_t(0) || x != x) ? x : acc_t(0);
}

// A buffer of N elements on the stack, or on the heap when more are asked for (huge k_top).
// The weights of one row from its kept scores s[0 .. used), in descending order (NaN first):
//   sparse (n > k_top): r_j = relu(s_j - tau) with tau = s[used], a_j = r_j / (sum r + eps); returns the divisor;
//   otherwise (1 <= n <= k_top): softmax, a_j = exp(s_j - s_0) / sum; returns 1.
// Forward and backward both call this, so the backward recomputes the forward's weights bit for bit.
// r and a may alias s (the forward works in place).
template <typename acc_t>
inline acc_t row_weights(const acc_t* s, int64_t used, bool sparse, acc_t* r, acc_t* a, double eps) {
  if (used <= 0) {
    return acc_t(1);
  }
  if (sparse) {
    const acc_t tau = s[used];
    acc_t sum = 0;
    for (int64_t j = 0; j < used; ++j) {
      r[j] = relu(s[j] - tau);
      sum += r[j];
    }
    const acc_t z = sum + static_cast<acc_t>(eps);
    for (int64_t j = 0; j < used; ++j) {
      a[j] = r[j] / z;
    }
    return z;
  }
  const acc_t mx = s[0];  // the maximum, or NaN when the row has one (NaN ranks first)
  acc_t sum = 0;
  for (int64_t j = 0; j < used; ++j) {
    a[j] = std::exp(s[j] - mx);
    sum += a[j];
  }
  for (int64_t j = 0; j < used; ++j) {
    a[j] = a[j] / sum;
  }
  return acc_t(1);
}

template <typename T, int64_t N>
class SmallBuffer {
 public:
  explicit SmallBuffer(int64_t n) : ptr_(n <= N ? stack_ : (heap_ = std::make_unique<T[]>(n)).get()) {}
  T* data() { return ptr_; }

 private:
  T stack_[N];
  std::unique_ptr<T[]> heap_;
  T* ptr_;
};

constexpr int64_t kStackSlots = 64;   // running top list entries kept on the stack
constexpr int64_t kStackFloats = 4096;  // per-row hidden activations kept on the stack in the backward

// ---------------------------------------------------------------------------------------------------------
// One score: s = sum_d w_d tanh(q_d + k_d). With kStore, tanh(q + k) is written to `hidden` (D values).
// The forward and the backward both call this, so a recomputed score has exactly the forward's bits.

template <typename scalar_t, bool kStore>
inline acc_type<scalar_t> score_row(const acc_type<scalar_t>* q, const scalar_t* k, const acc_type<scalar_t>* w,
                                    int64_t D, acc_type<scalar_t>* hidden) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  Vec acc0(acc_t(0)), acc1(acc_t(0));
  int64_t d = 0;
  for (; d + 2 * V <= D; d += 2 * V) {
    Vec h0 = tanh_vec(Vec::loadu(q + d) + load_acc(k + d));
    Vec h1 = tanh_vec(Vec::loadu(q + d + V) + load_acc(k + d + V));
    if constexpr (kStore) {
      h0.store(hidden + d);
      h1.store(hidden + d + V);
    }
    acc0 = at::vec::fmadd(h0, Vec::loadu(w + d), acc0);
    acc1 = at::vec::fmadd(h1, Vec::loadu(w + d + V), acc1);
  }
  for (; d < D; d += V) {
    const int64_t n = std::min(V, D - d);
    // Dead lanes read q = k = w = 0, so they add tanh(0) * 0 = 0.
    Vec h = tanh_vec(load_acc(q + d, n) + load_acc(k + d, n));
    if constexpr (kStore) {
      store_acc(hidden + d, h, n);
    }
    acc0 = at::vec::fmadd(h, load_acc(w + d, n), acc0);
  }
  return reduce_sum<acc_t>(acc0 + acc1);
}

// Insert (s, i) into the sorted list ts/ti of `cnt` entries (at most `cap`); returns the new count.
// Every entry already in the list ranks first on equal scores (it has a lower index, or came earlier from
// the same sorted chunk), so the list order is exactly the reference's stable sort.
template <typename acc_t>
inline int64_t insert_top(acc_t* ts, int64_t* ti, int64_t cnt, int64_t cap, acc_t s, int64_t i) {
  int64_t pos;
  if (cnt == cap) {
    if (!ranks_above(s, ts[cap - 1])) {
      return cnt;
    }
    pos = cap - 1;
  } else {
    pos = cnt++;
  }
  while (pos > 0 && ranks_above(s, ts[pos - 1])) {
    ts[pos] = ts[pos - 1];
    ti[pos] = ti[pos - 1];
    --pos;
  }
  ts[pos] = s;
  ti[pos] = i;
  return cnt;
}

// Sort the `cnt` entries of ts/ti into the list order: score descending, NaN first, and on equal scores the
// order they arrived in (std::stable_sort), i.e. the order insert_top would have built one entry at a time.
// For lists that keep every slot (dense attention, cap >= n): O(n log n) instead of insertion's O(n^2).
template <typename acc_t>
void sort_top(acc_t* ts, int64_t* ti, int64_t cnt) {
  std::vector<std::pair<acc_t, int64_t>> e(static_cast<size_t>(cnt));
  for (int64_t j = 0; j < cnt; ++j) {
    e[j] = {ts[j], ti[j]};
  }
  std::stable_sort(e.begin(), e.end(), [](const auto& x, const auto& y) { return ranks_above(x.first, y.first); });
  for (int64_t j = 0; j < cnt; ++j) {
    ts[j] = e[j].first;
    ti[j] = e[j].second;
  }
}

// Scan slots [i0, i1) of row b (the caller clips i1 to the row's length) into an empty sorted list.
template <typename scalar_t>
int64_t scan_slots(const ForwardArgs& a, int64_t b, int64_t i0, int64_t i1, acc_type<scalar_t>* ts, int64_t* ti) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = a.D, cap = a.cap;
  const acc_t* q = static_cast<const acc_t*>(a.q) + b * D;
  const acc_t* w = static_cast<const acc_t*>(a.w);
  const scalar_t* keys = static_cast<const scalar_t*>(a.keys) + b * a.T * D;
  if (i1 - i0 <= cap) {  // every slot is kept: score them all, then one sort
    for (int64_t i = i0; i < i1; ++i) {
      ts[i - i0] = score_row<scalar_t, false>(q, keys + i * D, w, D, nullptr);
      ti[i - i0] = i;
    }
    sort_top(ts, ti, i1 - i0);
    return i1 - i0;
  }
  int64_t cnt = 0;
  for (int64_t i = i0; i < i1; ++i) {
    const acc_t s = score_row<scalar_t, false>(q, keys + i * D, w, D, nullptr);
    if (cnt == cap && !ranks_above(s, ts[cap - 1])) {
      continue;  // the common case once the list is full
    }
    cnt = insert_top(ts, ti, cnt, cap, s, i);
  }
  return cnt;
}

// Weights, indices, threshold and summary of row b from its sorted top list (cnt = min(k_top + 1, n)).
// Overwrites ts with the weights.
template <typename scalar_t>
void finish_row(const ForwardArgs& a, int64_t b, acc_type<scalar_t>* ts, const int64_t* ti) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t n = a.lengths[b], k = a.k, k_top = a.k_top, H = a.H;
  const int64_t used = std::min(k_top, n);
  const int64_t threshold = n > k_top ? ti[k_top] : -1;
  row_weights(ts, used, n > k_top, ts, ts, a.eps);  // in place: ts[k_top] is tau when n > k_top
  a.threshold[b] = threshold;
  scalar_t* wout = static_cast<scalar_t*>(a.weights) + b * k;
  int64_t* iout = a.indices + b * k;
  for (int64_t j = 0; j < k; ++j) {
    wout[j] = j < used ? static_cast<scalar_t>(ts[j]) : static_cast<scalar_t>(0);
    iout[j] = j < used ? ti[j] : -1;
  }
  // summary[b] = sum_j a_j values[b, idx_j], accumulated over j in rank order, vectorised over H.
  const scalar_t* vb = static_cast<const scalar_t*>(a.values) + b * a.T * H;
  scalar_t* out = static_cast<scalar_t*>(a.summary) + b * H;
  for (int64_t h = 0; h < H; h += V) {
    const int64_t nh = std::min(V, H - h);
    Vec acc(acc_t(0));
    for (int64_t j = 0; j < used; ++j) {
      acc = at::vec::fmadd(Vec(ts[j]), load_acc(vb + ti[j] * H + h, nh), acc);
    }
    store_acc(out + h, acc, nh);
  }
}

template <typename scalar_t>
void forward_rows(const ForwardArgs& a, int64_t b0, int64_t b1) {
  using acc_t = acc_type<scalar_t>;
  SmallBuffer<acc_t, kStackSlots> ts(a.cap);
  SmallBuffer<int64_t, kStackSlots> ti(a.cap);
  for (int64_t b = b0; b < b1; ++b) {
    scan_slots<scalar_t>(a, b, 0, a.lengths[b], ts.data(), ti.data());
    finish_row<scalar_t>(a, b, ts.data(), ti.data());
  }
}

template <typename scalar_t>
void forward_partial(const ForwardArgs& a, const Partials& p, int64_t t0, int64_t t1) {
  using acc_t = acc_type<scalar_t>;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t b = t / p.chunks, c = t % p.chunks;
    const int64_t i0 = c * p.chunk_len, i1 = std::min(i0 + p.chunk_len, a.lengths[b]);
    acc_t* ts = static_cast<acc_t*>(p.part_s) + t * a.cap;
    int64_t* ti = p.part_i + t * a.cap;
    p.part_n[t] = i0 < i1 ? scan_slots<scalar_t>(a, b, i0, i1, ts, ti) : 0;
  }
}

template <typename scalar_t>
void forward_merge(const ForwardArgs& a, const Partials& p, int64_t b0, int64_t b1) {
  using acc_t = acc_type<scalar_t>;
  SmallBuffer<acc_t, kStackSlots> ts(a.cap);
  SmallBuffer<int64_t, kStackSlots> ti(a.cap);
  for (int64_t b = b0; b < b1; ++b) {
    int64_t total = 0;
    for (int64_t c = 0; c < p.chunks; ++c) {
      total += p.part_n[b * p.chunks + c];
    }
    if (total <= a.cap) {  // every slot is kept: concatenate the chunks in slot order, then one stable sort
      int64_t cnt = 0;
      for (int64_t c = 0; c < p.chunks; ++c) {
        const int64_t t = b * p.chunks + c;
        std::copy_n(static_cast<const acc_t*>(p.part_s) + t * a.cap, p.part_n[t], ts.data() + cnt);
        std::copy_n(p.part_i + t * a.cap, p.part_n[t], ti.data() + cnt);
        cnt += p.part_n[t];
      }
      sort_top(ts.data(), ti.data(), cnt);
      finish_row<scalar_t>(a, b, ts.data(), ti.data());
      continue;
    }
    int64_t cnt = 0;
    // Chunks in slot order, each list in rank order: the merged list is the whole row's list.
    for (int64_t c = 0; c < p.chunks; ++c) {
      const int64_t t = b * p.chunks + c;
      const acc_t* ps = static_cast<const acc_t*>(p.part_s) + t * a.cap;
      const int64_t* pi = p.part_i + t * a.cap;
      for (int64_t e = 0; e < p.part_n[t]; ++e) {
        cnt = insert_top(ts.data(), ti.data(), cnt, a.cap, ps[e], pi[e]);
      }
    }
    finish_row<scalar_t>(a, b, ts.data(), ti.data());
  }
}

// ---------------------------------------------------------------------------------------------------------
// Backward of rows [b0, b1): reference_backward, row by row, touching only the selected and threshold rows.

template <typename scalar_t>
void backward_rows(const BackwardArgs& a, int64_t b0, int64_t b1) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t T = a.T, D = a.D, H = a.H, k = a.k;
  const acc_t* w = static_cast<const acc_t*>(a.w);
  // Per row: up to k + 1 rows r (selected entries, then the threshold slot).
  SmallBuffer<int64_t, kStackSlots> slot(k + 1);   // slot of row r
  SmallBuffer<int64_t, kStackSlots> entry(k + 1);  // its position j in indices[b], or -1 for the threshold
  SmallBuffer<acc_t, kStackSlots> s(k + 1);        // score, then dL/ds
  SmallBuffer<acc_t, kStackSlots> relu_a(k + 1);   // relu(s - tau) (sparse rows)
  SmallBuffer<acc_t, kStackSlots> wa(k + 1);       // recomputed weight a_j
  SmallBuffer<acc_t, kStackSlots> ga(k + 1);       // dL/da_j
  SmallBuffer<acc_t, kStackFloats> hidden((k + 1) * D);

  for (int64_t b = b0; b < b1; ++b) {
    const scalar_t* kb = static_cast<const scalar_t*>(a.keys) + b * T * D;
    const scalar_t* vb = static_cast<const scalar_t*>(a.values) + b * T * H;
    const acc_t* q = static_cast<const acc_t*>(a.q) + b * D;
    const acc_t* gs = static_cast<const acc_t*>(a.grad_summary) + b * H;
    const acc_t* gw = static_cast<const acc_t*>(a.grad_weights) + b * k;
    const int64_t* idx = a.indices + b * k;
    scalar_t* gk = static_cast<scalar_t*>(a.grad_keys) + b * T * D;
    scalar_t* gv = static_cast<scalar_t*>(a.grad_values) + b * T * H;
    scalar_t* gq = static_cast<scalar_t*>(a.grad_query) + b * D;
    acc_t* gwp = static_cast<acc_t*>(a.grad_w_partial) + b * D;
    // All-zero bits are +0 in every floating dtype.
    if (!a.keys_zeroed) {
      std::memset(static_cast<void*>(gk), 0, sizeof(scalar_t) * T * D);
    }
    if (!a.values_zeroed) {
      std::memset(static_cast<void*>(gv), 0, sizeof(scalar_t) * T * H);
    }

    int64_t R = 0;
    for (int64_t j = 0; j < k; ++j) {
      if (idx[j] >= 0) {
        slot.data()[R] = idx[j];
        entry.data()[R++] = j;
      }
    }
    const int64_t used = R;
    const bool sparse = a.threshold[b] >= 0;
    if (sparse) {
      slot.data()[R] = a.threshold[b];
      entry.data()[R++] = -1;
    }
    acc_t* hs = hidden.data();
    acc_t* sv = s.data();
    acc_t* rl = relu_a.data();
    acc_t* av = wa.data();
    acc_t* g = ga.data();
    for (int64_t r = 0; r < R; ++r) {
      sv[r] = score_row<scalar_t, true>(q, kb + slot.data()[r] * D, w, D, hs + r * D);
    }

    // Recompute the weights exactly as the forward does (the same function).
    const acc_t z = row_weights(sv, used, sparse, rl, av, a.eps);

    // dL/da_j = grad_weights_j + <values[idx_j], grad_summary>, and the centred gradient.
    acc_t dot_ag = 0;
    for (int64_t r = 0; r < used; ++r) {
      const scalar_t* vrow = vb + slot.data()[r] * H;
      Vec acc(acc_t(0));
      for (int64_t h = 0; h < H; h += V) {
        const int64_t nh = std::min(V, H - h);
        acc = at::vec::fmadd(load_acc(vrow + h, nh), load_acc(gs + h, nh), acc);
      }
      g[r] = gw[entry.data()[r]] + reduce_sum<acc_t>(acc);
      dot_ag += av[r] * g[r];
    }
    // dL/ds of each row, in place of the scores.
    acc_t g_tau = 0;
    for (int64_t r = 0; r < used; ++r) {
      const acc_t centred = g[r] - dot_ag;
      acc_t gsel;
      if (sparse) {
        gsel = rl[r] > acc_t(0) ? centred / z : acc_t(0);  // ReLU at 0 passes nothing
        g_tau -= gsel;
      } else {
        gsel = av[r] * centred;
      }
      sv[r] = gsel;
    }
    if (sparse) {
      sv[used] = g_tau;
    }

    // dL/d(q + k_row) = g_r (1 - h^2) w for each row; grad_query sums them, grad_score_weight sums g_r h.
    for (int64_t d = 0; d < D; d += V) {
      const int64_t nd = std::min(V, D - d);
      const Vec wv = load_acc(w + d, nd);
      const Vec one(acc_t(1));
      Vec gqv(acc_t(0)), gwv(acc_t(0));
      for (int64_t r = 0; r < R; ++r) {
        const Vec h = load_acc(hs + r * D + d, nd);
        const Vec gr(sv[r]);
        const Vec dpre = gr * (one - h * h) * wv;
        store_acc(gk + slot.data()[r] * D + d, dpre, nd);
        gqv = gqv + dpre;
        gwv = at::vec::fmadd(gr, h, gwv);
      }
      store_acc(gq + d, gqv, nd);
      store_acc(gwp + d, gwv, nd);
    }
    // grad_values[idx_j] = a_j grad_summary.
    for (int64_t r = 0; r < used; ++r) {
      scalar_t* gvrow = gv + slot.data()[r] * H;
      const Vec ar(av[r]);
      for (int64_t h = 0; h < H; h += V) {
        const int64_t nh = std::min(V, H - h);
        store_acc(gvrow + h, ar * load_acc(gs + h, nh), nh);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The LSTM cell of the fused SAB-LSTM, vectorised over H. The activations use ATen's own vector formulas
// (sigmoid = 1 / (1 + exp(-x)), tanh from SLEEF) and c = f c_prev + i g without fused multiply-adds, as
// nn.LSTMCell's ops compute them, so the fused path tracks the per-step path to the last bits.

template <typename acc_t>
inline Vectorized<acc_t> sigmoid_vec(const Vectorized<acc_t>& x) {
  using Vec = Vectorized<acc_t>;
  return ((Vec(acc_t(0)) - x).exp() + Vec(acc_t(1))).reciprocal();
}

template <typename scalar_t>
void cell_forward(const CellArgs& a) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t B = a.B, H = a.H;
  for (int64_t b = 0; b < B; ++b) {
    scalar_t* g = static_cast<scalar_t*>(a.gates) + b * 4 * H;
    const scalar_t* cp = static_cast<const scalar_t*>(a.c_prev) + b * H;
    scalar_t* c = static_cast<scalar_t*>(a.c) + b * H;
    scalar_t* tc = static_cast<scalar_t*>(a.tanh_c) + b * H;
    scalar_t* h = static_cast<scalar_t*>(a.h_hat) + b * a.h_stride;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      const Vec i = sigmoid_vec(load_acc(g + j, n));
      const Vec f = sigmoid_vec(load_acc(g + H + j, n));
      const Vec gg = load_acc(g + 2 * H + j, n).tanh();
      const Vec o = sigmoid_vec(load_acc(g + 3 * H + j, n));
      store_acc(g + j, i, n);
      store_acc(g + H + j, f, n);
      store_acc(g + 2 * H + j, gg, n);
      store_acc(g + 3 * H + j, o, n);
      const Vec cv = f * load_acc(cp + j, n) + i * gg;
      const Vec tcv = cv.tanh();
      store_acc(c + j, cv, n);
      store_acc(tc + j, tcv, n);
      store_acc(h + j, o * tcv, n);
    }
  }
}

template <typename scalar_t>
void cell_backward(const CellBackwardArgs& a) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t V = Vec::size();
  const int64_t B = a.B, H = a.H;
  const Vec one(acc_t(1));
  for (int64_t b = 0; b < B; ++b) {
    const scalar_t* g = static_cast<const scalar_t*>(a.gates) + b * 4 * H;
    const scalar_t* tc = static_cast<const scalar_t*>(a.tanh_c) + b * H;
    const scalar_t* cp = static_cast<const scalar_t*>(a.c_prev) + b * H;
    const scalar_t* gh = static_cast<const scalar_t*>(a.g_hhat) + b * H;
    scalar_t* gc = static_cast<scalar_t*>(a.g_c) + b * H;
    scalar_t* dg = static_cast<scalar_t*>(a.g_gates) + b * 4 * H;
    for (int64_t j = 0; j < H; j += V) {
      const int64_t n = std::min(V, H - j);
      const Vec i = load_acc(g + j, n), f = load_acc(g + H + j, n), gg = load_acc(g + 2 * H + j, n);
      const Vec o = load_acc(g + 3 * H + j, n), t = load_acc(tc + j, n), dh = load_acc(gh + j, n);
      const Vec dc = load_acc(gc + j, n) + dh * o * (one - t * t);
      store_acc(dg + j, dc * gg * i * (one - i), n);
      store_acc(dg + H + j, dc * load_acc(cp + j, n) * f * (one - f), n);
      store_acc(dg + 2 * H + j, dc * i * (one - gg * gg), n);
      store_acc(dg + 3 * H + j, dh * t * o * (one - o), n);
      store_acc(gc + j, dc * f, n);
    }
  }
}

template <typename scalar_t>
constexpr Kernels kernels_for() {
  return Kernels{&forward_rows<scalar_t>, &forward_partial<scalar_t>, &forward_merge<scalar_t>,
                 &backward_rows<scalar_t>, &cell_forward<scalar_t>, &cell_backward<scalar_t>};
}

}  // namespace CPU_CAPABILITY
}  // namespace sab
