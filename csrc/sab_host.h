// Host-side entry points shared by the translation units that include ATen (sparse_attention.cpp, which
// owns the kernel table and the Python module, and sab_lstm.cpp, the fused SAB-LSTM sequence).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "sab_kernel.h"

namespace sab {

// The kernels of the best (or forced) kernel table for one dtype.
const Kernels& kernels(Dtype dtype);

// The attention kernels of the best (or forced) kernel table, rows in parallel. No argument checks: the
// callers build the arguments themselves.
void attention_forward_rows(const ForwardArgs& a, Dtype dtype);
void attention_backward_rows(const BackwardArgs& a, Dtype dtype);

// The whole SAB-LSTM or SAB-GRU sequence (SPEC section 2) in one call, appending its slots into the caller's
// buffers; see sab_lstm.cpp for the arguments. cell: kCellLstm or kCellGru. recent = 0: an unbounded memory;
// recent = W > 0: a bounded one starting from the index (active, relevance, count, kept), the new index returned
// after the 13 tensors of lstm_forward. keep = false: no backward will run (the saved arrays are scratch).
constexpr int64_t kCellLstm = 0;
constexpr int64_t kCellGru = 1;

std::vector<at::Tensor> rnn_forward(int64_t cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                    const at::Tensor& values, const at::Tensor& keys, int64_t n0,
                                    const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                    const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                                    const at::Tensor& query_weight, const at::Tensor& query_bias,
                                    const at::Tensor& key_weight, const at::Tensor& score_weight, int64_t k_top,
                                    int64_t k_att, int64_t k_trunc, int64_t step0, double eps, int64_t recent,
                                    int64_t relevant, const at::Tensor& active, const at::Tensor& relevance,
                                    int64_t count, int64_t kept, bool keep);

std::vector<at::Tensor> rnn_backward(int64_t cell, const at::Tensor& grad_out, const at::Tensor& grad_h,
                                     const at::Tensor& grad_c, const at::Tensor& grad_memory,
                                     const std::vector<at::Tensor>& inputs, const std::vector<at::Tensor>& saved,
                                     int64_t n0, int64_t k_top, int64_t k_att, int64_t k_trunc, int64_t step0,
                                     bool need_grad_x, double eps);

// The LSTM-only contract (12 inputs, one bias b_ih + b_hh), which the Triton backend shares.
std::vector<at::Tensor> lstm_forward(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                     const at::Tensor& values, const at::Tensor& keys, int64_t n0,
                                     const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& bias,
                                     const at::Tensor& query_weight, const at::Tensor& query_bias,
                                     const at::Tensor& key_weight, const at::Tensor& score_weight, int64_t k_top,
                                     int64_t k_att, int64_t k_trunc, int64_t step0, double eps);

std::vector<at::Tensor> lstm_backward(const at::Tensor& grad_out, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                      const at::Tensor& grad_memory, const std::vector<at::Tensor>& inputs,
                                      const std::vector<at::Tensor>& saved, int64_t n0, int64_t k_top, int64_t k_att,
                                      int64_t k_trunc, int64_t step0, bool need_grad_x, double eps);

}  // namespace sab
