// sab_kernels._C: the compiled CPU kernels of the SAB sparse-attention op (SPEC section 1).
//
//   forward(query, keys, values, score_weight, k_top, lengths) -> (summary, weights, indices, threshold)
//   backward(grad_summary, grad_weights, query, keys, values, score_weight, k_top, lengths, weights, indices,
//            threshold) -> (grad_query, grad_keys, grad_values, grad_score_weight)
//
// Contract: sab_kernels/kernels/__init__.py (inputs contiguous, one dtype, CPU, lengths int64 in [0, T]).
// The Python wrapper validates first; the TORCH_CHECKs here are a second line of defence that runs before
// any pointer arithmetic.
//
// This file holds the host side: checks, allocation, conversions of the small operands to the compute
// dtype, the choice of kernel table (default / AVX2 / AVX-512, sab_kernel_impl.h compiled three times) and
// the threading. Parallelism is over batch rows; when there are fewer rows than threads and rows are long,
// each row's slots are split into chunks whose sorted top lists are merged in chunk order. The top-list
// order is a total order (score, then index), so the result is bitwise the same for any thread count.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "sab_host.h"

namespace sab {
namespace {

// Work (in tanh-multiply-add units, ~1 ns each on one core) below which a task is not split off: a
// parallel region costs microseconds on an idle machine and far more on a busy one.
constexpr int64_t kGrainWork = int64_t(1) << 18;
// Shortest slot chunk of the split forward.
constexpr int64_t kMinChunk = 1024;

std::atomic<const KernelTable*> g_forced{nullptr};

const KernelTable* best_table() {
  static const KernelTable* best = [] {
    // torch's own choice ("DEFAULT", "AVX2", "AVX512", ...), which honours ATEN_CPU_CAPABILITY.
    const std::string cap = at::get_cpu_capability();
#if defined(__x86_64__) && defined(__GNUC__)
    if (cap == "AVX512" && kernels_avx512() && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
      return kernels_avx512();
    }
    if ((cap == "AVX512" || cap == "AVX2") && kernels_avx2() && __builtin_cpu_supports("avx2") &&
        __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
      return kernels_avx2();
    }
#else
    (void)cap;
#endif
    return kernels_default();
  }();
  return best;
}

const KernelTable* table() {
  const KernelTable* forced = g_forced.load(std::memory_order_relaxed);
  return forced ? forced : best_table();
}

Dtype dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Dtype::F32;
    case at::kDouble:
      return Dtype::F64;
    case at::kHalf:
      return Dtype::F16;
    case at::kBFloat16:
      return Dtype::BF16;
    default:
      TORCH_CHECK(false, "sab_kernels._C: unsupported dtype ", t.scalar_type(),
                  " (float16, bfloat16, float32 or float64 expected)");
  }
}

at::ScalarType compute_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

void check_tensor(const at::Tensor& t, const char* name, int64_t dim, at::ScalarType dtype) {
  TORCH_CHECK(t.defined(), "sab_kernels._C: ", name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), "sab_kernels._C: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == dim, "sab_kernels._C: ", name, " must be ", dim, "-D, got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "sab_kernels._C: ", name, " has dtype ", t.scalar_type(), ", expected ",
              dtype);
  TORCH_CHECK(t.is_contiguous(), "sab_kernels._C: ", name, " must be contiguous");
}

void check_shape(const at::Tensor& t, const char* name, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, "sab_kernels._C: ", name, " must have shape ", expected, ", got ", t.sizes());
}

struct Shapes {
  int64_t B, T, D, H, k_top, k;
};

// Checks shared by forward and backward; returns the sizes.
Shapes check_inputs(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                    const at::Tensor& score_weight, int64_t k_top, const at::Tensor& lengths) {
  TORCH_CHECK(query.defined() && keys.defined(), "sab_kernels._C: query and keys must be defined");
  const auto dtype = query.scalar_type();
  dtype_of(query);
  check_tensor(query, "query", 2, dtype);
  check_tensor(keys, "keys", 3, dtype);
  check_tensor(values, "values", 3, dtype);
  check_tensor(score_weight, "score_weight", 1, dtype);
  check_tensor(lengths, "lengths", 1, at::kLong);
  Shapes s{};
  s.B = query.size(0);
  s.D = query.size(1);
  s.T = keys.size(1);
  s.H = values.size(2);
  check_shape(keys, "keys", {s.B, s.T, s.D});
  check_shape(values, "values", {s.B, s.T, s.H});
  check_shape(score_weight, "score_weight", {s.D});
  check_shape(lengths, "lengths", {s.B});
  TORCH_CHECK(s.T >= 1 && s.D >= 1 && s.H >= 1, "sab_kernels._C: need T, D, H >= 1, got T=", s.T, " D=", s.D,
              " H=", s.H);
  TORCH_CHECK(k_top >= 1, "sab_kernels._C: k_top must be >= 1, got ", k_top);
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < s.B; ++b) {
    TORCH_CHECK(len[b] >= 0 && len[b] <= s.T, "sab_kernels._C: lengths must lie in [0, T] = [0, ", s.T,
                "], got ", len[b], " at row ", b);
  }
  s.k_top = k_top;
  s.k = std::min(k_top, s.T);
  return s;
}

// Dense gradient buffers: grad_keys (B, T, D) and grad_values (B, T, H) receive k_top + 1 rows per batch row
// and are zero elsewhere. Filling fresh memory with zeros is most of the backward's cost (the page faults of a
// fresh allocation cost more than the fill), so:
//   >= kLazyZeroBytes: a fresh anonymous mapping. The OS hands out zero pages, and only the pages the backward
//     writes (or a later reader touches) are ever faulted in.
//   >= kPoolMinBytes: a buffer from a small cache of freed gradient buffers (power-of-two size classes, at most
//     kPoolMaxBytes kept): already faulted in, zeroed by the kernel with memset. SAB calls the op once per step
//     with similar sizes, and glibc would otherwise unmap and re-fault these buffers on every call.
//   smaller: at::empty, zeroed by the kernel.
constexpr int64_t kLazyZeroBytes = int64_t(1) << 22;
constexpr int64_t kPoolMinBytes = int64_t(1) << 16;
constexpr int64_t kPoolMaxBytes = int64_t(1) << 25;

class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool();  // never destroyed: tensors may outlive static destructors
    return *pool;
  }
  static int size_class(int64_t nbytes) {
    int c = 0;
    while ((int64_t(1) << c) < nbytes) {
      ++c;
    }
    return c;
  }
  void* take(int c) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_[c].empty()) {
        void* p = free_[c].back();
        free_[c].pop_back();
        cached_ -= int64_t(1) << c;
        return p;
      }
    }
    return std::aligned_alloc(64, size_t(1) << c);
  }
  void give(void* p, int c) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + (int64_t(1) << c) <= kPoolMaxBytes) {
        free_[c].push_back(p);
        cached_ += int64_t(1) << c;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mutex_;
  std::vector<void*> free_[64];
  int64_t cached_ = 0;
};

// A tensor of `sizes` for a dense gradient; *zeroed tells whether it already holds zeros.
at::Tensor grad_buffer(at::IntArrayRef sizes, const at::TensorOptions& opts, bool* zeroed) {
  *zeroed = false;
  int64_t numel = 1;
  for (const int64_t s : sizes) {
    numel *= s;
  }
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(opts.dtype().toScalarType()));
#if defined(__linux__)
  if (nbytes >= kLazyZeroBytes) {
    void* ptr = mmap(nullptr, static_cast<size_t>(nbytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr != MAP_FAILED) {
      *zeroed = true;
      const size_t len = static_cast<size_t>(nbytes);
      return at::from_blob(ptr, sizes, [len](void* p) { munmap(p, len); }, opts);
    }
  }
#endif
  if (nbytes >= kPoolMinBytes && nbytes < kLazyZeroBytes) {
    const int c = BufferPool::size_class(nbytes);
    void* ptr = BufferPool::instance().take(c);
    if (ptr != nullptr) {
      return at::from_blob(ptr, sizes, [c](void* p) { BufferPool::instance().give(p, c); }, opts);
    }
  }
  return at::empty(sizes, opts);
}

// at::parallel_for over [0, n) with a grain such that each task does at least kGrainWork units.
template <typename F>
void parallel_rows(int64_t n, int64_t work_per_item, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, work_per_item));
  at::parallel_for(0, n, grain, f);
}

std::vector<at::Tensor> forward(const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                                const at::Tensor& score_weight, int64_t k_top, const at::Tensor& lengths, double eps) {
  const Shapes s = check_inputs(query, keys, values, score_weight, k_top, lengths);
  const auto opts = values.options();
  at::Tensor summary = at::empty({s.B, s.H}, opts);
  at::Tensor weights = at::empty({s.B, s.k}, opts);
  at::Tensor indices = at::empty({s.B, s.k}, opts.dtype(at::kLong));
  at::Tensor threshold = at::empty({s.B}, opts.dtype(at::kLong));
  if (s.B == 0) {
    return {summary, weights, indices, threshold};
  }
  const auto ct = compute_type(query.scalar_type());
  const at::Tensor q = query.to(ct).contiguous();
  const at::Tensor w = score_weight.to(ct).contiguous();

  ForwardArgs a{};
  a.q = q.data_ptr();
  a.keys = keys.data_ptr();
  a.values = values.data_ptr();
  a.w = w.data_ptr();
  a.lengths = lengths.data_ptr<int64_t>();
  a.B = s.B;
  a.T = s.T;
  a.D = s.D;
  a.H = s.H;
  a.k_top = s.k_top;
  a.k = s.k;
  a.cap = std::min(s.k_top, s.T - 1) + 1;  // min(k_top + 1, T) without overflow
  a.eps = eps;
  a.summary = summary.data_ptr();
  a.weights = weights.data_ptr();
  a.indices = indices.data_ptr<int64_t>();
  a.threshold = threshold.data_ptr<int64_t>();

  const Kernels& kern = table()->by_dtype[static_cast<int>(dtype_of(query))];
  const int64_t threads = at::get_num_threads();
  // Split long rows when there are fewer rows than threads: `chunks` chunks per row, at least kMinChunk each.
  int64_t chunks = 1;
  if (s.B < threads && s.T >= 2 * kMinChunk) {
    chunks = std::min((threads + s.B - 1) / s.B * 2, s.T / kMinChunk);
  }
  if (chunks <= 1) {
    attention_forward_rows(a, dtype_of(query));
  } else {
    const int64_t chunk_len = (s.T + chunks - 1) / chunks;
    chunks = (s.T + chunk_len - 1) / chunk_len;
    const int64_t items = s.B * chunks;
    at::Tensor part_s = at::empty({items * a.cap}, opts.dtype(ct));
    at::Tensor part_i = at::empty({items * a.cap}, opts.dtype(at::kLong));
    at::Tensor part_n = at::empty({items}, opts.dtype(at::kLong));
    Partials p{chunks, chunk_len, part_s.data_ptr(), part_i.data_ptr<int64_t>(), part_n.data_ptr<int64_t>()};
    at::parallel_for(0, items, 1, [&](int64_t t0, int64_t t1) { kern.forward_partial(a, p, t0, t1); });
    parallel_rows(s.B, chunks * a.cap + s.k * s.H, [&](int64_t b0, int64_t b1) { kern.forward_merge(a, p, b0, b1); });
  }
  return {summary, weights, indices, threshold};
}

std::vector<at::Tensor> backward(const at::Tensor& grad_summary, const at::Tensor& grad_weights,
                                 const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
                                 const at::Tensor& score_weight, int64_t k_top, const at::Tensor& lengths,
                                 const at::Tensor& weights, const at::Tensor& indices, const at::Tensor& threshold,
                                 double eps) {
  const Shapes s = check_inputs(query, keys, values, score_weight, k_top, lengths);
  const auto dtype = query.scalar_type();
  check_tensor(grad_summary, "grad_summary", 2, dtype);
  check_tensor(grad_weights, "grad_weights", 2, dtype);
  check_tensor(weights, "weights", 2, dtype);
  check_tensor(indices, "indices", 2, at::kLong);
  check_tensor(threshold, "threshold", 1, at::kLong);
  check_shape(grad_summary, "grad_summary", {s.B, s.H});
  check_shape(grad_weights, "grad_weights", {s.B, s.k});
  check_shape(weights, "weights", {s.B, s.k});
  check_shape(indices, "indices", {s.B, s.k});
  check_shape(threshold, "threshold", {s.B});
  // Slot indices come from our forward, but they are dereferenced: check them before any pointer arithmetic.
  {
    const int64_t* idx = indices.data_ptr<int64_t>();
    const int64_t* thr = threshold.data_ptr<int64_t>();
    const int64_t* len = lengths.data_ptr<int64_t>();
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t j = 0; j < s.k; ++j) {
        TORCH_CHECK(idx[b * s.k + j] >= -1 && idx[b * s.k + j] < len[b],
                    "sab_kernels._C: indices out of range at row ", b);
      }
      TORCH_CHECK(thr[b] >= -1 && thr[b] < len[b], "sab_kernels._C: threshold out of range at row ", b);
    }
  }

  const auto opts = values.options();
  at::Tensor grad_query = at::empty({s.B, s.D}, opts);
  bool keys_zeroed = false, values_zeroed = false;
  at::Tensor grad_keys = grad_buffer({s.B, s.T, s.D}, opts, &keys_zeroed);
  at::Tensor grad_values = grad_buffer({s.B, s.T, s.H}, opts, &values_zeroed);
  const auto ct = compute_type(dtype);
  if (s.B == 0) {
    return {grad_query, grad_keys, grad_values, at::zeros({s.D}, opts)};
  }
  const at::Tensor q = query.to(ct).contiguous();
  const at::Tensor w = score_weight.to(ct).contiguous();
  const at::Tensor gs = grad_summary.to(ct).contiguous();
  const at::Tensor gw = grad_weights.to(ct).contiguous();
  at::Tensor partial = at::empty({s.B, s.D}, opts.dtype(ct));

  BackwardArgs a{};
  a.grad_summary = gs.data_ptr();
  a.grad_weights = gw.data_ptr();
  a.q = q.data_ptr();
  a.keys = keys.data_ptr();
  a.values = values.data_ptr();
  a.w = w.data_ptr();
  a.indices = indices.data_ptr<int64_t>();
  a.threshold = threshold.data_ptr<int64_t>();
  a.B = s.B;
  a.T = s.T;
  a.D = s.D;
  a.H = s.H;
  a.k = s.k;
  a.eps = eps;
  a.grad_query = grad_query.data_ptr();
  a.grad_keys = grad_keys.data_ptr();
  a.grad_values = grad_values.data_ptr();
  a.grad_w_partial = partial.data_ptr();
  a.keys_zeroed = keys_zeroed;
  a.values_zeroed = values_zeroed;

  const Kernels& kern = table()->by_dtype[static_cast<int>(dtype_of(query))];
  // Work per row: zeroing its gradient rows (unless the OS did), plus (k + 1) D tanh.
  parallel_rows(s.B, ((keys_zeroed ? 0 : s.T * s.D) + (values_zeroed ? 0 : s.T * s.H)) / 8 + (s.k + 1) * s.D,
                [&](int64_t b0, int64_t b1) { kern.backward_rows(a, b0, b1); });

  // grad_score_weight: the per-row partials summed in row order (deterministic for any thread count).
  at::Tensor gsw = at::empty({s.D}, opts.dtype(ct));
  AT_DISPATCH_FLOATING_TYPES(ct, "sab_grad_score_weight", [&] {
    const scalar_t* p = partial.data_ptr<scalar_t>();
    scalar_t* out = gsw.data_ptr<scalar_t>();
    std::fill(out, out + s.D, scalar_t(0));
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t d = 0; d < s.D; ++d) {
        out[d] += p[b * s.D + d];
      }
    }
  });
  return {grad_query, grad_keys, grad_values, gsw.to(dtype)};
}

std::string capability() {
  return table()->name;
}

// For tests: run a given kernel table ("default", "avx2", "avx512"), or "" for the best one.
// Returns false when that table is not compiled in or the CPU lacks it.
bool set_capability(const std::string& name) {
  if (name.empty()) {
    g_forced.store(nullptr);
    return true;
  }
  const KernelTable* t = nullptr;
  if (name == "default") {
    t = kernels_default();
  }
#if defined(__x86_64__) && defined(__GNUC__)
  else if (name == "avx2" && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c")) {
    t = kernels_avx2();
  } else if (name == "avx512" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    t = kernels_avx512();
  }
#endif
  if (t == nullptr) {
    return false;
  }
  g_forced.store(t);
  return true;
}

}  // namespace

const Kernels& kernels(Dtype dtype) {
  return table()->by_dtype[static_cast<int>(dtype)];
}

void attention_forward_rows(const ForwardArgs& a, Dtype dtype) {
  const Kernels& kern = table()->by_dtype[static_cast<int>(dtype)];
  parallel_rows(a.B, a.T * a.D, [&](int64_t b0, int64_t b1) { kern.forward_rows(a, b0, b1); });
}

void attention_backward_rows(const BackwardArgs& a, Dtype dtype) {
  const Kernels& kern = table()->by_dtype[static_cast<int>(dtype)];
  parallel_rows(a.B, (a.T * (a.D + a.H)) / 8 + (a.k + 1) * a.D,
                [&](int64_t b0, int64_t b1) { kern.backward_rows(a, b0, b1); });
}

}  // namespace sab

// The torch these kernels were compiled against (setup.py passes torch.__version__, e.g. "2.13.0+cpu"):
// sab_kernels/kernels/cpu_backend.py loads them only under that same torch.
#ifndef SAB_TORCH_VERSION
#define SAB_TORCH_VERSION TORCH_VERSION
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled CPU kernels of the SAB sparse-attention op (see sab_kernels.kernels for the contract).";
  m.attr("torch_version") = SAB_TORCH_VERSION;
  m.def("forward", &sab::forward, "forward(query, keys, values, score_weight, k_top, lengths) -> "
        "(summary, weights, indices, threshold)",
        py::arg("query"), py::arg("keys"), py::arg("values"), py::arg("score_weight"), py::arg("k_top"),
        py::arg("lengths"), py::arg("eps") = 1e-7, py::call_guard<py::gil_scoped_release>());
  m.def("backward", &sab::backward, "backward(grad_summary, grad_weights, query, keys, values, score_weight, "
        "k_top, lengths, weights, indices, threshold) -> (grad_query, grad_keys, grad_values, grad_score_weight)",
        py::arg("grad_summary"), py::arg("grad_weights"), py::arg("query"), py::arg("keys"), py::arg("values"),
        py::arg("score_weight"), py::arg("k_top"), py::arg("lengths"), py::arg("weights"), py::arg("indices"),
        py::arg("threshold"), py::arg("eps") = 1e-7, py::call_guard<py::gil_scoped_release>());
  m.def("lstm_forward", &sab::lstm_forward, "The whole SAB-LSTM sequence (see csrc/sab_lstm.cpp).",
        py::call_guard<py::gil_scoped_release>());
  m.def("lstm_backward", &sab::lstm_backward, "The SAB-LSTM sequence's reverse sweep (see csrc/sab_lstm.cpp).",
        py::call_guard<py::gil_scoped_release>());
  m.def("rnn_forward", &sab::rnn_forward, "The whole SAB-LSTM/SAB-GRU sequence, unbounded or bounded memory "
        "(see csrc/sab_lstm.cpp).", py::call_guard<py::gil_scoped_release>());
  m.def("rnn_backward", &sab::rnn_backward, "The SAB-LSTM/SAB-GRU sequence's reverse sweep (see csrc/sab_lstm.cpp).",
        py::call_guard<py::gil_scoped_release>());
  m.def("capability", &sab::capability, "The kernel table in use: 'default', 'avx2' or 'avx512'.");
  m.def("_set_capability", &sab::set_capability, py::arg("name"),
        "Testing aid: force a kernel table ('default', 'avx2', 'avx512'; '' = best). False if unavailable.");
}
