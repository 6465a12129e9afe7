// The recurrent op's entry points (recurrent_cpu.cpp), which rms_norm_cpu.cpp binds for Python.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

torch::Tensor gru_sequence(const torch::Tensor& xp, const torch::Tensor& h0, const torch::Tensor& w_hh,
                           const c10::optional<torch::Tensor>& bias_h, const c10::optional<torch::Tensor>& mask,
                           const c10::optional<torch::Tensor>& wxg, const c10::optional<torch::Tensor>& bxg,
                           const c10::optional<torch::Tensor>& wxc, const c10::optional<torch::Tensor>& bxc,
                           const c10::optional<torch::Tensor>& whg, const c10::optional<torch::Tensor>& bhg,
                           const c10::optional<torch::Tensor>& whc, const c10::optional<torch::Tensor>& bhc,
                           const std::vector<int64_t>& ints, const std::vector<double>& doubles);
torch::Tensor lstm_sequence(const torch::Tensor& xp, const torch::Tensor& h0, const torch::Tensor& w_hh,
                            const c10::optional<torch::Tensor>& bias, const c10::optional<torch::Tensor>& mask,
                            const c10::optional<torch::Tensor>& wx, const c10::optional<torch::Tensor>& bx,
                            const c10::optional<torch::Tensor>& wh, const c10::optional<torch::Tensor>& bh,
                            const c10::optional<torch::Tensor>& wc, const c10::optional<torch::Tensor>& bc,
                            const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                            const std::vector<torch::Tensor>& running);
