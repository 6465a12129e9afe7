// Fused RMSNorm / pRMSNorm / L2Norm forward and backward for CPU tensors.
//
// Per row of length d:  r = 1 / sqrt(inv_n * sum_{i<k} x_i^2 + eps),  y = x * r * w + b
// inv_n = 1/k gives RMSNorm (k = d) and pRMSNorm (k < d); inv_n = 1 with k = d gives L2Norm.
// Backward, with g = dy * w and c = inv_n * r^3 * sum_{i<d} g_i x_i (the dot spans all d features):
//   dx_j = r g_j - [j < k] c x_j,   dw_j = sum_rows dy_j x_j r,   db_j = sum_rows dy_j
// Rows run in parallel; the weight gradient is reduced per thread block, then summed.
// ATen, autograd and pybind's headers rather than all of torch/extension.h (the C++ frontend besides): the
// build is mostly header parsing, and this way the two units build in 49 s instead of 66 (2 cores)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "recurrent_cpu.h"
#include "row_sums.h"

using rmsnorm_kernels::row_sum;

namespace {

// Elements a thread must have before a call goes parallel: waking a thread costs a few microseconds, so small
// inputs run on one. The right value depends on the machine; rmsnorm.kernels.cpu measures it at first use and
// sets it here (set_parallel_grain), this is only the starting value.
std::atomic<int64_t> min_elements_per_thread{32768};
// columns per chunk of the backward's second pass: its streams stay in L1 whatever the row width
constexpr int64_t kChunk = 256;
// rows at most this wide sum the weight gradient per tile of about kTileElements elements (see backward_rows)
constexpr int64_t kTiledMaxWidth = 512;
constexpr int64_t kTileElements = 2048;

template <typename T>
inline T sum_squares(const T* __restrict__ x, int64_t n) {
  return row_sum<T>(n, [&](int64_t i) { return x[i] * x[i]; });
}

template <typename T>
void forward_rows(const T* x, int64_t x_stride, const T* w, const T* b, T* y, int64_t y_stride, T* rstd,
                  int64_t rows, int64_t d, int64_t k, double inv_n, double eps) {
  // enough work per thread to pay for waking it: small inputs run on one thread
  const int64_t grain = std::max<int64_t>(1, min_elements_per_thread.load(std::memory_order_relaxed) / std::max<int64_t>(d, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* xr = x + row * x_stride;
      T* yr = y + row * y_stride;
      const T r = T(1) / std::sqrt(sum_squares(xr, k) * T(inv_n) + T(eps));
      rstd[row] = r;
      if (w && b) {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * r * w[j] + b[j];
      } else if (w) {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * r * w[j];
      } else if (b) {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * r + b[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) yr[j] = xr[j] * r;
      }
    }
  });
}

template <typename T>
inline T* aligned_to_line(T* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  return p == nullptr ? p : reinterpret_cast<T*>((address + 63) / 64 * 64);
}

// sum_{j0 <= j < j1} dy_j w_j x_j (w_j = 1 without a gain). Not inlined: inlined into the backward's chunk loop
// GCC 12 compiled it as a scalar chain of dependent adds (perf annotate: 70% of the backward's time), on its
// own it keeps the vector reduction
template <typename T>
__attribute__((noinline)) T partial_dot(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w, int64_t j0,
                     int64_t j1) {
  if (w) return row_sum<T>(j1 - j0, [&](int64_t j) { return dy[j0 + j] * w[j0 + j] * x[j0 + j]; });
  return row_sum<T>(j1 - j0, [&](int64_t j) { return dy[j0 + j] * x[j0 + j]; });
}

// dwp_j += sum_{r0 <= r < r1} dy_rj x_rj rstd_r: 64 columns at a time held in a local array (registers) while
// the tile's rows stream through, so the partial sums are loaded and stored once per tile, not once per row
template <typename T>
void accumulate_dw(const T* dy, int64_t dy_stride, const T* x, int64_t x_stride, const T* rstd, int64_t r0,
                   int64_t r1, int64_t d, T* __restrict__ dwp) {
  constexpr int64_t width = 64;
  for (int64_t j0 = 0; j0 < d; j0 += width) {
    const int64_t n = std::min(width, d - j0);
    if (n == width) {
      T acc[width];
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) acc[j] = dwp[j0 + j];
      for (int64_t r = r0; r < r1; ++r) {
        const T* dyr = dy + r * dy_stride + j0;
        const T* xr = x + r * x_stride + j0;
        const T rs = rstd[r];
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) acc[j] += dyr[j] * xr[j] * rs;
      }
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) dwp[j0 + j] = acc[j];
    } else {
      for (int64_t r = r0; r < r1; ++r) {
        const T* dyr = dy + r * dy_stride + j0;
        const T* xr = x + r * x_stride + j0;
        const T rs = rstd[r];
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) dwp[j0 + j] += dyr[j] * xr[j] * rs;
      }
    }
  }
}

// The weight gradient's partial sums are kept per block of rows, and the blocks depend on the shape alone
// (never on the thread count or the measured parallel grain), then summed in block order: the same input gives
// the same bits in every process on every machine with the same build.
inline int64_t backward_blocks(int64_t rows, int64_t d) {
  constexpr int64_t kBlockElements = 16384, kMaxBlocks = 64;
  return std::max<int64_t>(1, std::min<int64_t>({rows, kMaxBlocks, rows * d / kBlockElements}));
}

template <typename T>
void backward_rows(const T* dy, int64_t dy_stride, const T* x, int64_t x_stride, const T* w, const T* rstd, T* dx,
                   int64_t dx_stride, T* dw, T* db, int64_t rows, int64_t d, int64_t k, double inv_n) {
  const int64_t blocks = backward_blocks(rows, d);
  const int64_t per_block = (rows + blocks - 1) / blocks;
  // a thread takes enough blocks to pay for waking it (the measured grain); the blocks themselves stay fixed
  const int64_t grain_blocks = std::max<int64_t>(
      1, min_elements_per_thread.load(std::memory_order_relaxed) / std::max<int64_t>(1, per_block * d));
  const bool want_dw = dw != nullptr, want_db = db != nullptr;
  // each block's partial sums start on a cache line of their own: two threads writing the two ends of one
  // line on every row (false sharing) made the parallel backward slower than the serial one at small d
  constexpr int64_t line = 64 / sizeof(T);
  const int64_t stride = (d + line - 1) / line * line;
  std::vector<T> dw_store(want_dw ? blocks * stride + line : 0, T(0)), db_store(want_db ? blocks * stride + line : 0, T(0));
  T* dw_part = aligned_to_line(dw_store.data());
  T* db_part = aligned_to_line(db_store.data());
  at::parallel_for(0, blocks, grain_blocks, [&](int64_t bbegin, int64_t bend) {
    for (int64_t blk = bbegin; blk < bend; ++blk) {
      T* dwp = want_dw ? dw_part + blk * stride : nullptr;
      T* dbp = want_db ? db_part + blk * stride : nullptr;
      const int64_t row_end = std::min(rows, (blk + 1) * per_block);
      const int64_t row_begin = blk * per_block;
      // narrow rows: the weight gradient is summed over a tile of rows just written (still in L1) with the
      // columns in vector lanes, instead of a read-modify-write of the partial sums on every row
      const bool tiled_dw = want_dw && d <= kTiledMaxWidth;
      const int64_t tile = tiled_dw ? std::max<int64_t>(1, kTileElements / d) : 1;
      // software-pipelined: the dot of row i+1 (read from memory) is taken in the same chunked sweep that writes
      // row i's dx from cache, so the memory streams never pause for a pure-compute pass
      T dot = row_begin < row_end ? partial_dot(dy + row_begin * dy_stride, x + row_begin * x_stride, w, 0, d) : T(0);
      for (int64_t row = row_begin; row < row_end; ++row) {
        const T* xr = x + row * x_stride;
        const T* dyr = dy + row * dy_stride;
        T* dxr = dx + row * dx_stride;
        const bool has_next = row + 1 < row_end;
        const T* xn = xr + x_stride;
        const T* dyn = dyr + dy_stride;
        const T r = rstd[row];
        const T c = T(inv_n) * r * r * r * dot;
        T next_dot = 0;
        for (int64_t j0 = 0; j0 < d; j0 += kChunk) {
          const int64_t j1 = std::min(d, j0 + kChunk), jk = std::min(std::max(k, j0), j1);
          if (w) {
#pragma omp simd
            for (int64_t j = j0; j < jk; ++j) dxr[j] = r * dyr[j] * w[j] - c * xr[j];
#pragma omp simd
            for (int64_t j = jk; j < j1; ++j) dxr[j] = r * dyr[j] * w[j];
          } else {
#pragma omp simd
            for (int64_t j = j0; j < jk; ++j) dxr[j] = r * dyr[j] - c * xr[j];
#pragma omp simd
            for (int64_t j = jk; j < j1; ++j) dxr[j] = r * dyr[j];
          }
          if (want_dw && !tiled_dw) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) dwp[j] += dyr[j] * xr[j] * r;
          }
          if (want_db) {
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) dbp[j] += dyr[j];
          }
          if (has_next) next_dot += partial_dot(dyn, xn, w, j0, j1);
        }
        dot = next_dot;
        if (tiled_dw && (row + 1 - row_begin) % tile == 0) {
          accumulate_dw(dy, dy_stride, x, x_stride, rstd, row + 1 - tile, row + 1, d, dwp);
        } else if (tiled_dw && row + 1 == row_end) {
          accumulate_dw(dy, dy_stride, x, x_stride, rstd, row_end - (row_end - row_begin) % tile, row_end, d, dwp);
        }
      }
    }
  });
  for (int64_t blk = 0; blk < blocks; ++blk) {
    if (want_dw) {
      const T* p = dw_part + blk * stride;
      for (int64_t j = 0; j < d; ++j) dw[j] = (blk == 0 ? T(0) : dw[j]) + p[j];
    }
    if (want_db) {
      const T* p = db_part + blk * stride;
      for (int64_t j = 0; j < d; ++j) db[j] = (blk == 0 ? T(0) : db[j]) + p[j];
    }
  }
}

void check_input(const torch::Tensor& x, int64_t k) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.stride(1) == 1 && x.stride(0) >= x.size(1),
              "expects a 2-d CPU tensor with contiguous rows");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "expects float32 or float64");
  TORCH_CHECK(k >= 1 && k <= x.size(1), "k must lie in [1, d]");
}

const void* optional_ptr(const c10::optional<torch::Tensor>& t, const torch::Tensor& like) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->is_contiguous() && t->scalar_type() == like.scalar_type() && t->numel() == like.size(1),
              "weight and bias must be contiguous, of the input's dtype and of length d");
  return t->data_ptr();
}

std::vector<torch::Tensor> forward_2d(const torch::Tensor& x, const c10::optional<torch::Tensor>& weight,
                                   const c10::optional<torch::Tensor>& bias, int64_t k, double inv_n, double eps) {
  check_input(x, k);
  auto y = torch::empty(x.sizes(), x.options());
  auto rstd = torch::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_forward", [&] {
    forward_rows<scalar_t>(x.data_ptr<scalar_t>(), x.stride(0), static_cast<const scalar_t*>(optional_ptr(weight, x)),
                           static_cast<const scalar_t*>(optional_ptr(bias, x)), y.data_ptr<scalar_t>(), x.size(1),
                           rstd.data_ptr<scalar_t>(), x.size(0), x.size(1), k, inv_n, eps);
  });
  return {y, rstd};
}

std::vector<torch::Tensor> backward_2d(const torch::Tensor& dy, const torch::Tensor& x,
                                    const c10::optional<torch::Tensor>& weight, const torch::Tensor& rstd, int64_t k,
                                    double inv_n, bool want_dw, bool want_db) {
  check_input(x, k);
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.is_contiguous() && dy.scalar_type() == x.scalar_type(),
              "dy must match x");
  auto dx = torch::empty(x.sizes(), x.options());
  auto dw = want_dw ? torch::zeros({x.size(1)}, x.options()) : torch::Tensor();
  auto db = want_db ? torch::zeros({x.size(1)}, x.options()) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rms_norm_backward", [&] {
    backward_rows<scalar_t>(dy.data_ptr<scalar_t>(), x.size(1), x.data_ptr<scalar_t>(), x.stride(0),
                            static_cast<const scalar_t*>(optional_ptr(weight, x)), rstd.data_ptr<scalar_t>(),
                            dx.data_ptr<scalar_t>(), x.size(1), want_dw ? dw.data_ptr<scalar_t>() : nullptr,
                            want_db ? db.data_ptr<scalar_t>() : nullptr, x.size(0), x.size(1), k, inv_n);
  });
  return {dx, dw, db};
}

// Autograd in C++: a Python autograd.Function costs more than the kernel itself on small inputs.
class RowNormFunction : public torch::autograd::Function<RowNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const c10::optional<torch::Tensor>& weight, const c10::optional<torch::Tensor>& bias,
                               int64_t k, double inv_n, double eps) {
    const auto d = x.size(-1);
    // rows of a wider matrix (a split of [U; Ux] h, or of all time steps' projections) are read in place
    auto x2 = x.reshape({-1, d});
    if (!(x2.stride(1) == 1 && (x2.size(0) <= 1 || x2.stride(0) >= d))) x2 = x2.contiguous();
    auto out = forward_2d(x2, weight, bias, k, inv_n, eps);
    ctx->save_for_backward({x2, weight.has_value() ? *weight : torch::Tensor(), out[1]});
    ctx->saved_data["k"] = k;
    ctx->saved_data["inv_n"] = inv_n;
    ctx->saved_data["has_weight"] = weight.has_value();
    ctx->saved_data["has_bias"] = bias.has_value();
    return out[0].view(x.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x2 = saved[0];
    const bool has_weight = ctx->saved_data["has_weight"].toBool();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // which gradients to compute: from what forward took, not ctx->needs_input_grad(i), whose index counts only
    // the optional tensors that were given (without a weight, the bias is input 1 there: index 2 was out of range)
    const bool want_dw = has_weight;
    const bool want_db = has_bias;
    c10::optional<torch::Tensor> weight;
    if (has_weight) weight = saved[1];
    auto dy = grads[0].reshape({x2.size(0), x2.size(1)}).contiguous();
    auto res = backward_2d(dy, x2, weight, saved[2], ctx->saved_data["k"].toInt(), ctx->saved_data["inv_n"].toDouble(),
                        want_dw, want_db);
    return {res[0].view(grads[0].sizes()), want_dw ? res[1] : torch::Tensor(), want_db ? res[2] : torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor row_norm(const torch::Tensor& x, const c10::optional<torch::Tensor>& weight,
                       const c10::optional<torch::Tensor>& bias, int64_t k, double inv_n, double eps) {
  return RowNormFunction::apply(x, weight, bias, k, inv_n, eps);
}

// Norms over consecutive column blocks of each row, each block with its own statistic (k, inv_n) and its own
// slice of one gain vector, in one call: the recurrent cells' hidden-side norms on the one matmul output
// [U; Ux] h (GRU: [r; u] and candidate). The gains arrive as one vector (the caller concatenates them), so
// autograd sees one weight and returns one gradient.
class BlockRowNormFunction : public torch::autograd::Function<BlockRowNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& w,
                               const std::vector<int64_t>& sizes, const std::vector<int64_t>& ks,
                               const std::vector<double>& inv_ns, double eps) {
    TORCH_CHECK(!sizes.empty() && sizes.size() == ks.size() && sizes.size() == inv_ns.size(),
                "block_row_norm needs one size, k and inv_n per block");
    const int64_t d = x.size(-1);
    int64_t total = 0;
    for (auto s : sizes) total += s;
    TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1 && total == d && w.numel() == d && (x.size(0) <= 1 || x.stride(0) >= d),
                "block_row_norm expects a 2-d tensor with contiguous rows as wide as the blocks together");
    const int64_t rows = x.size(0), blocks = static_cast<int64_t>(sizes.size());
    auto y = torch::empty({rows, d}, x.options());
    auto rstd = torch::empty({blocks, rows}, x.options());
    int64_t offset = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      check_input(x.narrow(1, offset, sizes[b]), ks[b]);
      optional_ptr(w.narrow(0, offset, sizes[b]).contiguous(), x.narrow(1, offset, sizes[b]));
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "block_row_norm_forward", [&] {
        forward_rows<scalar_t>(x.data_ptr<scalar_t>() + offset, x.stride(0), w.data_ptr<scalar_t>() + offset, nullptr,
                               y.data_ptr<scalar_t>() + offset, d, rstd.data_ptr<scalar_t>() + b * rows, rows,
                               sizes[b], ks[b], inv_ns[b], eps);
      });
      offset += sizes[b];
    }
    ctx->save_for_backward({x, w, rstd});
    ctx->saved_data["sizes"] = sizes;
    ctx->saved_data["ks"] = ks;
    ctx->saved_data["inv_ns"] = inv_ns;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &rstd = saved[2];
    const auto sizes = ctx->saved_data["sizes"].toIntVector();
    const auto ks = ctx->saved_data["ks"].toIntVector();
    const auto inv_ns = ctx->saved_data["inv_ns"].toDoubleVector();
    const int64_t rows = x.size(0), d = x.size(1);
    auto dy = grads[0].contiguous();
    auto dx = torch::empty({rows, d}, x.options());
    auto dw = torch::zeros({d}, x.options());
    int64_t offset = 0;
    for (size_t b = 0; b < sizes.size(); ++b) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "block_row_norm_backward", [&] {
        backward_rows<scalar_t>(dy.data_ptr<scalar_t>() + offset, d, x.data_ptr<scalar_t>() + offset, x.stride(0),
                                w.data_ptr<scalar_t>() + offset, rstd.data_ptr<scalar_t>() + b * rows,
                                dx.data_ptr<scalar_t>() + offset, d, dw.data_ptr<scalar_t>() + offset, nullptr, rows,
                                sizes[b], ks[b], inv_ns[b]);
      });
      offset += sizes[b];
    }
    return {dx, dw, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor block_row_norm(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                             const std::vector<int64_t>& ks, const std::vector<double>& inv_ns, double eps) {
  std::vector<int64_t> sizes;
  for (const auto& w : weights) sizes.push_back(w.numel());
  // one cat of the gains (a few thousand values) per call: it keeps autograd to one weight
  return BlockRowNormFunction::apply(x, weights.size() == 1 ? weights[0] : torch::cat(weights), sizes, ks, inv_ns, eps);
}

}  // namespace

int64_t rmsnorm_parallel_grain() { return min_elements_per_thread.load(std::memory_order_relaxed); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_parallel_grain", [](int64_t n) { min_elements_per_thread.store(std::max<int64_t>(1, n)); },
        "elements per thread below which a call runs on one thread");
  m.def("parallel_grain", [] { return min_elements_per_thread.load(); });
  m.def("row_norm", &row_norm, "fused RMSNorm over the last dimension, with autograd (CPU)");
  m.def("block_row_norm", &block_row_norm, "fused RMS-family norms over consecutive column blocks of each row (CPU)");
  m.def("gru_sequence", &gru_sequence,
        "a normalised GRU over a whole (T, B, 3H) projected sequence in one direction, its input norms included, "
        "with autograd (CPU)");
  m.def("lstm_sequence", &lstm_sequence,
        "a normalised LSTM over a whole (T, B, 4H) projected sequence in one direction, its input norm included, "
        "with autograd (CPU)");
}
