// Normalised GRU and LSTM layers over whole sequences: the time loop, the cell and its norms in one op per
// direction, forward and backward through time (CPU). The Python cells in rmsnorm/rnn.py are the reference.
//
// The input side's matmul (W x + b for all steps at once) is computed by the caller; this op takes those
// projections and runs the recurrence. Both layers normalise them in the row pass (the LSTM's N_x, the GRU's N_xg
// and N_xc; every norm but the LSTM's batch norm, whose caller passes them normalised), where a separate norm call
// streamed all steps' projections through memory twice more each way (`make bench`, LSTM 240 x 64 x 50: LayerNorm
// and RMSNorm added 12.0 and 12.3 ms to the layer that way at b4177ce, 10.8 and 7.6 ms in the row pass at
// d4d0a0f). Per step: one matmul of the previous
// state with the hidden weights (the only call into ATen), then, per batch row, the norms, the gates and the
// state update in one pass. Backward: per step (latest first) the same pass in reverse and one matmul for the
// state's gradient; the hidden weights' gradient is one matmul over all steps at the end.
//
// Norms (one per column block): kind 0 none (identity), 1 the RMS family
//   y = x * r * w (+ b),  r = 1 / sqrt(inv_n * sum_{i<k} x_i^2 + eps)   (RMSNorm, pRMSNorm, L2-Norm)
// 2 LayerNorm  y = (x - mean) * r * w + b,  r = 1 / sqrt(mean((x - mean)^2) + eps).
// 3 recurrent batch norm (LSTM only): the same with a mean and r per column and time step, from the step's valid
//   rows in training (running estimates per step updated in place) or from the running estimates in evaluation;
//   the rows of a step are coupled through those statistics, so the step's row pass splits where they are needed.
// Gains and biases are optional; their gradients are summed per row in the backward's row pass (the norms'
// reduction pass adds them), rows in fixed blocks (kSumRows): an order fixed by the shape, the same bits whatever
// the thread count.
// ATen and the autograd headers only, not torch/extension.h: the Python binding lives in rms_norm_cpu.cpp, and
// without pybind and the C++ frontend this unit parses about half the headers
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/types.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif
#include <vector>

#include "recurrent_cpu.h"
#include "row_sums.h"

using rmsnorm_kernels::row_sum;
using rmsnorm_kernels::row_sums;

int64_t rmsnorm_parallel_grain();  // elements per thread before a loop goes parallel (rms_norm_cpu.cpp)

namespace {

enum Kind : int64_t { kNone = 0, kRms = 1, kLayer = 2, kBatch = 3 };

template <typename T>
struct Norm {
  int64_t kind = kNone, d = 0, k = 0;
  T inv_n = 0, eps = 0;
  const T* w = nullptr;
  const T* b = nullptr;
  // kBatch: this step's mean and r per column (set per step)
  const T* col_mean = nullptr;
  const T* col_r = nullptr;

  Norm with_columns(const T* mean, const T* r) const {
    Norm n = *this;
    n.col_mean = mean;
    n.col_r = r;
    return n;
  }
};

template <typename T>
Norm<T> make_norm(int64_t kind, int64_t d, int64_t k, double inv_n, double eps, const c10::optional<torch::Tensor>& w,
                  const c10::optional<torch::Tensor>& b) {
  TORCH_CHECK(kind >= kNone && kind <= kBatch,
              "norm kind must be 0 (none), 1 (RMS family), 2 (LayerNorm) or 3 (batch norm per step)");
  TORCH_CHECK(kind != kRms || (k >= 1 && k <= d), "k must lie in [1, d]");
  Norm<T> n;
  n.kind = kind;
  n.d = d;
  n.k = k;
  n.inv_n = T(inv_n);
  n.eps = T(eps);
  for (auto [t, p] : {std::make_pair(&w, &n.w), std::make_pair(&b, &n.b)}) {
    if (t->has_value() && (*t)->defined()) {
      TORCH_CHECK((*t)->is_contiguous() && (*t)->numel() == d, "a norm's gain and bias must be contiguous, of length d");
      *p = (*t)->template data_ptr<T>();
    }
  }
  return n;
}

// The gates' sigmoid and tanh over arrays. libm's expf and tanhf are scalar calls (5 ns an element here, more
// than the rest of a step at the reading task's size) and GCC does not vectorise a clamped exp on its own, so
// float32 with AVX2 and FMA takes 8 lanes at a time: Cody-Waite reduction and the Cephes polynomial, within
// 2 ulp of expf on [-87, 88] (inputs are clamped there). float64, the tails and other CPUs use libm, so the
// float64 gradient checks see exact functions.
template <typename T>
inline T sigmoid_scalar(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

#if defined(__AVX2__) && defined(__FMA__)
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256 load_sum8(const float* a, const float* b, int64_t j) {
  const __m256 v = _mm256_loadu_ps(a + j);
  return b ? _mm256_add_ps(v, _mm256_loadu_ps(b + j)) : v;
}
#endif

// y = sigmoid(a + b) (b may be null)
template <typename T>
inline void sigmoid_of_sum(T* y, const T* a, const T* b, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(zero, load_sum8(a, b, j)));
      _mm256_storeu_ps(y + j, _mm256_div_ps(one, _mm256_add_ps(one, e)));
    }
  }
#endif
  for (; j < n; ++j) y[j] = sigmoid_scalar(b ? a[j] + b[j] : a[j]);
}

// y = tanh(a + b) (b may be null), as 1 - 2 / (exp(2v) + 1)
template <typename T>
inline void tanh_of_sum(T* y, const T* a, const T* b, int64_t n) {
  int64_t j = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    for (; j + 8 <= n; j += 8) {
      const __m256 e = exp8(_mm256_mul_ps(two, load_sum8(a, b, j)));
      _mm256_storeu_ps(y + j, _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(e, one))));
    }
  }
#endif
  for (; j < n; ++j) y[j] = std::tanh(b ? a[j] + b[j] : a[j]);
}

// y = N(x) over one row; stat[0] = mean (LayerNorm), stat[1] = r. y may not alias x.
template <typename T>
inline void norm_forward(const Norm<T>& n, const T* __restrict__ x, T* __restrict__ y, T* stat) {
  const int64_t d = n.d;
  if (n.kind == kNone) {
    std::copy(x, x + d, y);
    return;
  }
  const T* w = n.w;
  const T* b = n.b;
  if (n.kind == kBatch) {
    const T *cm = n.col_mean, *cr = n.col_r;
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      T v = (x[j] - cm[j]) * cr[j];
      if (w) v *= w[j];
      if (b) v += b[j];
      y[j] = v;
    }
    return;
  }
  T mean = 0, acc = 0;
  if (n.kind == kLayer) {
    mean = row_sum<T>(d, [&](int64_t j) { return x[j]; }) / T(d);
    acc = row_sum<T>(d, [&](int64_t j) { return (x[j] - mean) * (x[j] - mean); });
  } else {
    acc = row_sum<T>(n.k, [&](int64_t j) { return x[j] * x[j]; });
  }
  const T r = T(1) / std::sqrt(acc * n.inv_n + n.eps);
  stat[0] = mean;
  stat[1] = r;
  if (n.kind == kRms && w && !b) {  // the RMS family as the cells use it: no shift
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) y[j] = x[j] * r * w[j];
  } else if (w && b) {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) y[j] = (x[j] - mean) * r * w[j] + b[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < d; ++j) {
      T v = (x[j] - mean) * r;
      if (w) v *= w[j];
      if (b) v += b[j];
      y[j] = v;
    }
  }
}

// dx = dN/dx^T dy over one row; with SW / SB, the row's terms of the gain's and the bias's gradients (dy_j xhat_j,
// dy_j) added into sum_w / sum_b in the reduction's pass, while the row is in cache
template <typename T, bool SW, bool SB>
inline void norm_backward_summing(const Norm<T>& n, const T* __restrict__ dy, const T* __restrict__ x, const T* stat,
                                  T* __restrict__ dx, T* __restrict__ sum_w, T* __restrict__ sum_b) {
  const int64_t d = n.d;
  if (n.kind == kNone) {
    std::copy(dy, dy + d, dx);
    if constexpr (SB) {
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) sum_b[j] += dy[j];
    }
    return;
  }
  const T mean = stat[0], r = stat[1];
  const T* w = n.w;
  auto add_sums = [&](int64_t j) {
    if constexpr (SW) sum_w[j] += dy[j] * (x[j] - mean) * r;
    if constexpr (SB) sum_b[j] += dy[j];
  };
  if (n.kind == kRms) {
    // every output depends on r, and r on the first k inputs only
    const T dot = w ? row_sum<T>(d, [&](int64_t j) { add_sums(j); return dy[j] * w[j] * x[j]; })
                    : row_sum<T>(d, [&](int64_t j) { add_sums(j); return dy[j] * x[j]; });
    const T c = n.inv_n * r * r * r * dot;
    if (w) {
#pragma omp simd
      for (int64_t j = 0; j < n.k; ++j) dx[j] = r * dy[j] * w[j] - c * x[j];
#pragma omp simd
      for (int64_t j = n.k; j < d; ++j) dx[j] = r * dy[j] * w[j];
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n.k; ++j) dx[j] = r * dy[j] - c * x[j];
#pragma omp simd
      for (int64_t j = n.k; j < d; ++j) dx[j] = r * dy[j];
    }
    return;
  }
  auto g = [&](int64_t j) { return w ? dy[j] * w[j] : dy[j]; };
  auto [m1, m2] = row_sums<T>(d, g, [&](int64_t j) { add_sums(j); return g(j) * (x[j] - mean) * r; });
  m1 /= T(d);
  m2 /= T(d);
#pragma omp simd
  for (int64_t j = 0; j < d; ++j) dx[j] = r * (g(j) - m1 - (x[j] - mean) * r * m2);
}

// dx = dN/dx^T dy over one row, and where sum_w / sum_b are given the row's terms of the gain's / bias's gradient
// added into them (norm_backward_summing); a batch norm's rows are coupled: batch_norm_backward
template <typename T>
inline void norm_backward(const Norm<T>& n, const T* dy, const T* x, const T* stat, T* dx, T* sum_w = nullptr,
                          T* sum_b = nullptr) {
  if (sum_w && sum_b) {
    norm_backward_summing<T, true, true>(n, dy, x, stat, dx, sum_w, sum_b);
  } else if (sum_w) {
    norm_backward_summing<T, true, false>(n, dy, x, stat, dx, sum_w, sum_b);
  } else if (sum_b) {
    norm_backward_summing<T, false, true>(n, dy, x, stat, dx, sum_w, sum_b);
  } else {
    norm_backward_summing<T, false, false>(n, dy, x, stat, dx, sum_w, sum_b);
  }
}

inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, rmsnorm_parallel_grain() / std::max<int64_t>(width, 1)); }

// ---- recurrent batch norm: statistics per column over a step's valid rows ------------------------------------
// Columns are split over threads and each column's sums run over the rows in order: the same bits whatever the
// thread count. Rows a mask marks padded take no part (their outputs are discarded by the state update).

struct BatchSettings {
  bool train = false;
  int64_t max_steps = 1;
  double momentum = 0.1;
};

// the number of valid rows of a step, at least 1: a step with none gets mean 0 and variance 0, and its running
// estimates move toward them, as StepBatchNorm's formula (the reference) does
template <typename T>
T valid_rows(const T* m, int64_t rows) {
  if (!m) return T(rows);
  T n = 0;
  for (int64_t b = 0; b < rows; ++b) n += m[b];
  return std::max(n, T(1));
}

// mean and r = 1 / sqrt(var + eps) per column of x (rows x d): from the valid rows (biased variance) in training,
// the running estimates given (one step's slot) then moved toward them (unbiased variance); from them otherwise
template <typename T>
void batch_column_stats(const T* x, int64_t x_stride, int64_t rows, int64_t d, const T* m, T eps,
                        const BatchSettings& bs, T* run_mean, T* run_var, T* mean, T* r) {
  if (!bs.train) {
    for (int64_t j = 0; j < d; ++j) {
      mean[j] = run_mean[j];
      r[j] = T(1) / std::sqrt(run_var[j] + eps);
    }
    return;
  }
  const T n = valid_rows(m, rows);
  const T unbias = n / std::max(n - T(1), T(1)), mom = T(bs.momentum);
  at::parallel_for(0, d, std::max<int64_t>(16, rmsnorm_parallel_grain() / std::max<int64_t>(rows, 1)),
                   [&](int64_t j0, int64_t j1) {
    std::vector<T> var(j1 - j0, T(0));
    T* mu = mean + j0;
    std::fill(mu, mu + (j1 - j0), T(0));
    for (int64_t b = 0; b < rows; ++b) {
      const T mb = m ? m[b] : T(1);
      const T* xr = x + b * x_stride + j0;
#pragma omp simd
      for (int64_t j = 0; j < j1 - j0; ++j) mu[j] += mb * xr[j];
    }
#pragma omp simd
    for (int64_t j = 0; j < j1 - j0; ++j) mu[j] /= n;
    for (int64_t b = 0; b < rows; ++b) {
      const T mb = m ? m[b] : T(1);
      const T* xr = x + b * x_stride + j0;
#pragma omp simd
      for (int64_t j = 0; j < j1 - j0; ++j) var[j] += mb * (xr[j] - mu[j]) * (xr[j] - mu[j]);
    }
    for (int64_t j = 0; j < j1 - j0; ++j) {
      const T v = var[j] / n;
      r[j0 + j] = T(1) / std::sqrt(v + eps);
      run_mean[j0 + j] += mom * (mu[j] - run_mean[j0 + j]);
      run_var[j0 + j] += mom * (v * unbias - run_var[j0 + j]);
    }
  });
}

// Backward of a step's batch norm: dy (its output's gradient, 0 on padded rows) -> dx. In training
//   dx = m r w (dy - sum(dy) / n - xhat sum(dy xhat) / n),  sums over the valid rows per column;
// in evaluation dx = r w dy. The gain and bias gradients (sum dy xhat, sum dy) are added to dw and db.
template <typename T>
void batch_norm_backward(const Norm<T>& nn, const T* dy, int64_t dy_stride, const T* x, int64_t x_stride,
                         int64_t rows, const T* m, bool train, T* dx, int64_t dx_stride, T* dw, T* db) {
  const int64_t d = nn.d;
  const T n = valid_rows(m, rows);
  at::parallel_for(0, d, std::max<int64_t>(16, rmsnorm_parallel_grain() / std::max<int64_t>(rows, 1)),
                   [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    std::vector<T> s_dy(w, T(0)), s_dyx(w, T(0)), scale(w);
    const T* cm = nn.col_mean + j0;
    const T* cr = nn.col_r + j0;
    for (int64_t b = 0; b < rows; ++b) {
      const T* dyr = dy + b * dy_stride + j0;
      const T* xr = x + b * x_stride + j0;
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        s_dy[j] += dyr[j];
        s_dyx[j] += dyr[j] * (xr[j] - cm[j]) * cr[j];
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      scale[j] = cr[j] * (nn.w ? nn.w[j0 + j] : T(1));
      if (dw) dw[j0 + j] += s_dyx[j];
      if (db) db[j0 + j] += s_dy[j];
      s_dy[j] /= n;
      s_dyx[j] /= n;
    }
    for (int64_t b = 0; b < rows; ++b) {
      const T* dyr = dy + b * dy_stride + j0;
      const T* xr = x + b * x_stride + j0;
      T* dxr = dx + b * dx_stride + j0;
      if (!train) {
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) dxr[j] = scale[j] * dyr[j];
        continue;
      }
      const T mb = m ? m[b] : T(1);
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) {
        const T xhat = (xr[j] - cm[j]) * cr[j];
        dxr[j] = mb * scale[j] * (dyr[j] - s_dy[j] - xhat * s_dyx[j]);
      }
    }
  });
}

torch::Tensor opt_or_undefined(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? *t : torch::Tensor();
}

template <typename T>
T* ptr_or_null(const torch::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The state each step starts from: h0 for the first step processed, else the previous step's output.
inline int64_t previous_step(int64_t t, bool reverse) { return reverse ? t + 1 : t - 1; }

// dW = sum_t dA_t^T h_{prev(t)} as two matmuls: the first step processed (its state is h0), then all the others
torch::Tensor hidden_weight_grad(const torch::Tensor& dA, const torch::Tensor& out, const torch::Tensor& h0, bool reverse) {
  const int64_t steps = dA.size(0), width = dA.size(2), hidden = out.size(2);
  const int64_t first = reverse ? steps - 1 : 0;
  auto dw = torch::mm(dA[first].t(), h0);
  if (steps > 1) {
    auto dA_rest = reverse ? dA.narrow(0, 0, steps - 1) : dA.narrow(0, 1, steps - 1);
    auto h_rest = reverse ? out.narrow(0, 1, steps - 1) : out.narrow(0, 0, steps - 1);
    dw.addmm_(dA_rest.reshape({-1, width}).t(), h_rest.reshape({-1, hidden}));
  }
  return dw;
}

// whether any of the norms' gains and biases asks for a gradient (needs_input_grad counts only the optional
// tensors given, so it is decided in the forward)
bool any_requires_grad(std::initializer_list<const c10::optional<torch::Tensor>*> tensors) {
  for (auto t : tensors) {
    if (t->has_value() && (*t)->defined() && (*t)->requires_grad()) return true;
  }
  return false;
}

torch::Tensor grad_or_zeros(const torch::Tensor& g, const torch::Tensor& like) {
  return g.defined() ? g.contiguous() : torch::zeros_like(like);
}

// Both layers sum the gains' and biases' gradients per row in the backward's row pass, while the row is in cache:
// rows go to threads in fixed blocks of kSumRows, each block's sums (over its rows and every step) kept apart and
// added in block order at the end, so the result is the same whatever the thread count.
constexpr int64_t kSumRows = 8;

// f(b, k, scratch) for every row b, k its block, rows in blocks of kSumRows over threads; each thread gets a
// scratch buffer of `scratch` values
template <typename T, typename F>
void over_row_blocks(int64_t rows, int64_t width, int64_t scratch, F&& f) {
  const int64_t blocks = (rows + kSumRows - 1) / kSumRows;
  at::parallel_for(0, blocks, std::max<int64_t>(1, row_grain(width) / kSumRows), [&](int64_t k0, int64_t k1) {
    std::vector<T> buffer(scratch);
    for (int64_t k = k0; k < k1; ++k) {
      for (int64_t b = k * kSumRows; b < std::min(rows, (k + 1) * kSumRows); ++b) f(b, k, buffer.data());
    }
  });
}

// out[j] += the blocks' sums at `offset` (blocks of `stride` values), in block order: the same bits whatever
// the thread count
template <typename T>
void add_block_sums(const std::vector<T>& sums, int64_t stride, int64_t offset, int64_t width, T* out) {
  for (int64_t k = 0; k < static_cast<int64_t>(sums.size()) / stride; ++k) {
    const T* part = sums.data() + k * stride + offset;
#pragma omp simd
    for (int64_t j = 0; j < width; ++j) out[j] += part[j];
  }
}

// zeros for the gradient of a norm's gain (or bias) where it has one and gains' gradients are wanted
template <typename T>
torch::Tensor gain_grad_or_none(const Norm<T>& n, bool gain, bool want_gains, const at::TensorOptions& opts) {
  const bool present = gain ? n.w != nullptr : n.b != nullptr;
  return want_gains && present && n.kind != kNone ? torch::zeros({n.d}, opts) : torch::Tensor();
}

// ---- GRU ------------------------------------------------------------------------------------------------------
//   a = h U^T (+ b_h);  r, u = sigmoid(N_xg(p[:2H]) + N_hg(a[:2H]));  c = tanh(r * N_hc(a[2H:]) + N_xc(p[2H:]));
//   h' = u h + (1-u) c,  with p = W x (+ b) the input projections of all steps (the caller's one matmul) and a mask
//   m per row: h <- h + m (h' - h). The input norms run in the row pass, as the LSTM's N_x: outside the op they
//   streamed all steps' projections through memory twice more each way.
// stats per row: {mean, r} of N_hg, N_hc, N_xg and N_xc
constexpr int64_t kGruStats = 8;
// a row block's sums (times H): N_hg's gain and bias (2H each), N_hc's (H each), N_xg's (2H each), N_xc's (H each)
constexpr int64_t kGruSums = 12;

struct GruTensors {
  torch::Tensor xp, h0, w_hh, bias_h, mask, out, a, stats, gates, cand;
};

template <typename T>
struct GruNorms {
  Norm<T> xg, xc, hg, hc;
};

template <typename T>
void gru_forward(GruTensors& s, const GruNorms<T>& nn, bool reverse) {
  const int64_t steps = s.xp.size(0), B = s.xp.size(1), H = s.h0.size(1);
  const T* mask = ptr_or_null<T>(s.mask);
  auto w_t = s.w_hh.t();
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = reverse ? steps - 1 - i : i;
    auto hp_t = i == 0 ? s.h0 : s.out[previous_step(t, reverse)];
    auto a_t = s.a[t];
    if (s.bias_h.defined()) {
      at::addmm_out(a_t, s.bias_h, hp_t, w_t);
    } else {
      at::mm_out(a_t, hp_t, w_t);
    }
    const T* hp = hp_t.data_ptr<T>();
    const T* a = a_t.data_ptr<T>();
    const T* xp = s.xp.data_ptr<T>() + t * B * 3 * H;
    T* st = s.stats.data_ptr<T>() + t * B * kGruStats;
    T* gates = s.gates.data_ptr<T>() + t * B * 2 * H;
    T* cand = s.cand.data_ptr<T>() + t * B * H;
    T* out = s.out.data_ptr<T>() + t * B * H;
    const T* m = mask ? mask + t * B : nullptr;
    at::parallel_for(0, B, row_grain(3 * H), [&](int64_t b0, int64_t b1) {
      std::vector<T> n(6 * H);  // the hidden norms' outputs (3H), then the input norms' (3H)
      for (int64_t b = b0; b < b1; ++b) {
        const T* ar = a + b * 3 * H;
        T* sr = st + b * kGruStats;
        norm_forward(nn.hg, ar, n.data(), sr);
        norm_forward(nn.hc, ar + 2 * H, n.data() + 2 * H, sr + 2);
        const T* xgr = xp + b * 3 * H;
        const T* xcr = xgr + 2 * H;
        if (nn.xg.kind != kNone) {
          norm_forward(nn.xg, xgr, n.data() + 3 * H, sr + 4);
          xgr = n.data() + 3 * H;
        }
        if (nn.xc.kind != kNone) {
          norm_forward(nn.xc, xcr, n.data() + 5 * H, sr + 6);
          xcr = n.data() + 5 * H;
        }
        T* gr = gates + b * 2 * H;
        sigmoid_of_sum(gr, xgr, n.data(), 2 * H);
        const T* hpr = hp + b * H;
        T* cr = cand + b * H;
        T* outr = out + b * H;
        const T mb = m ? m[b] : T(1);
        T* pre = n.data() + 2 * H;  // r * N_hc(a_c), in place
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) pre[j] *= gr[j];
        tanh_of_sum(cr, pre, xcr, H);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T u = gr[H + j], c = cr[j];
          const T hn = u * hpr[j] + (T(1) - u) * c;
          outr[j] = hpr[j] + mb * (hn - hpr[j]);
        }
      }
    });
  }
}

template <typename T>
std::vector<torch::Tensor> gru_backward(const GruTensors& s, const GruNorms<T>& nn, bool reverse,
                                        const torch::Tensor& grad_out, bool want_gains) {
  const int64_t steps = s.out.size(0), B = s.out.size(1), H = s.out.size(2);
  const auto opts = s.out.options();
  // the projections' gradient: the gate pass writes it where an input norm is none, else that norm's backward
  auto dproj = torch::empty({steps, B, 3 * H}, opts), dA = torch::empty({steps, B, 3 * H}, opts);
  auto dh = torch::zeros({B, H}, opts), dhp = torch::empty({B, H}, opts);
  // gains and biases in the op's input order (xg, xc, hg, hc; gain then bias) and where each one's sums sit in a
  // row block's sums (the gain at offsets[k] * H, the bias after it; -1: that gradient is not wanted)
  const std::array<const Norm<T>*, 4> norms{&nn.xg, &nn.xc, &nn.hg, &nn.hc};
  const std::array<int64_t, 4> offsets{6, 10, 0, 4};
  std::array<torch::Tensor, 8> grads;
  std::array<int64_t, 8> at_sum;
  for (int k = 0; k < 8; ++k) {
    const Norm<T>& n = *norms[k / 2];
    grads[k] = gain_grad_or_none(n, k % 2 == 0, want_gains, opts);
    at_sum[k] = grads[k].defined() ? offsets[k / 2] * H + (k % 2) * n.d : -1;
  }
  const bool x_g = nn.xg.kind != kNone, x_c = nn.xc.kind != kNone;
  const T* mask = ptr_or_null<T>(s.mask);
  const T* go_all = grad_out.data_ptr<T>();
  std::vector<T> sums((B + kSumRows - 1) / kSumRows * kGruSums * H, T(0));
  // norm k's gain (bias) sums in a block's, or null
  auto sum_at = [&](T* block, int k, bool bias) -> T* {
    const int64_t offset = at_sum[2 * k + (bias ? 1 : 0)];
    return offset < 0 ? nullptr : block + offset;
  };
  for (int64_t i = steps - 1; i >= 0; --i) {
    const int64_t t = reverse ? steps - 1 - i : i;
    const T* hp = (i == 0 ? s.h0 : s.out[previous_step(t, reverse)]).data_ptr<T>();
    const T* a = s.a.data_ptr<T>() + t * B * 3 * H;
    const T* xp = s.xp.defined() ? s.xp.data_ptr<T>() + t * B * 3 * H : nullptr;
    const T* st = s.stats.data_ptr<T>() + t * B * kGruStats;
    const T* gates = s.gates.data_ptr<T>() + t * B * 2 * H;
    const T* cand = s.cand.data_ptr<T>() + t * B * H;
    const T* go = go_all + t * B * H;
    const T* m = mask ? mask + t * B : nullptr;
    T* dproj_t = dproj.data_ptr<T>() + t * B * 3 * H;
    T* dA_t = dA.data_ptr<T>() + t * B * 3 * H;
    const T* dh_in = dh.data_ptr<T>();
    T* dhp_out = dhp.data_ptr<T>();
    // scratch: N_hc's output again (cheaper than storing it, H), the gradients of N_hc's output (H) and, where
    // the input norms are not none, of their outputs (3H), N_hc's statistics (2)
    over_row_blocks<T>(B, 3 * H, 5 * H + 2, [&](int64_t b, int64_t k, T* scratch) {
      T *ncand = scratch, *dncr = scratch + H, *dx = scratch + 2 * H, *stat = scratch + 5 * H;
      T* block = sums.data() + k * kGruSums * H;
      const T* ar = a + b * 3 * H;
      const T* sr = st + b * kGruStats;
      norm_forward(nn.hc, ar + 2 * H, ncand, stat);
      const T* gr = gates + b * 2 * H;
      const T* cr = cand + b * H;
      const T* hpr = hp + b * H;
      const T mb = m ? m[b] : T(1);
      T* dpr_row = dproj_t + b * 3 * H;
      T* dxgr = x_g ? dx : dpr_row;
      T* dxcr = x_c ? dx + 2 * H : dpr_row + 2 * H;
      T* dhpr = dhp_out + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T dht = go[b * H + j] + dh_in[b * H + j];
        const T dhn = mb * dht;
        const T r = gr[j], u = gr[H + j], c = cr[j];
        const T dpc = dhn * (T(1) - u) * (T(1) - c * c);
        const T dpu = dhn * (hpr[j] - c) * u * (T(1) - u);
        const T dpr = dpc * ncand[j] * r * (T(1) - r);
        dxcr[j] = dpc;
        dxgr[j] = dpr;
        dxgr[H + j] = dpu;
        dncr[j] = dpc * r;
        dhpr[j] = dht - dhn + dhn * u;
      }
      norm_backward(nn.hg, dxgr, ar, sr, dA_t + b * 3 * H, sum_at(block, 2, false), sum_at(block, 2, true));
      norm_backward(nn.hc, dncr, ar + 2 * H, sr + 2, dA_t + b * 3 * H + 2 * H, sum_at(block, 3, false),
                    sum_at(block, 3, true));
      if (x_g) norm_backward(nn.xg, dxgr, xp + b * 3 * H, sr + 4, dpr_row, sum_at(block, 0, false),
                             sum_at(block, 0, true));
      if (x_c) norm_backward(nn.xc, dxcr, xp + b * 3 * H + 2 * H, sr + 6, dpr_row + 2 * H, sum_at(block, 1, false),
                             sum_at(block, 1, true));
    });
    at::addmm_out(dh, dhp, dA[t], s.w_hh);  // dh_prev = (direct part) + dA_t U
  }
  for (int k = 0; k < 8; ++k) {
    if (at_sum[k] >= 0) add_block_sums(sums, kGruSums * H, at_sum[k], norms[k / 2]->d, grads[k].data_ptr<T>());
  }
  auto dw = hidden_weight_grad(dA, s.out, s.h0, reverse);
  auto dbias = s.bias_h.defined() ? dA.sum({0, 1}) : torch::Tensor();
  return {dproj, dh, dw, dbias, grads[0], grads[1], grads[2], grads[3], grads[4], grads[5], grads[6], grads[7]};
}

// ---- LSTM -----------------------------------------------------------------------------------------------------
//   a = h U^T;  [i f o g] = [sigmoid x3, tanh](N_h(a) + N_x(x_p) + b);  c' = f c + i g;  h' = o tanh(N_c(c'))
//   with a mask m per row: h <- h + m (h' - h), c <- c + m (c' - c); c starts at 0
// stats per row: {mean, r} of N_h, N_c and N_x
constexpr int64_t kLstmStats = 6;

// colstats_h (T, 2, 4H) and colstats_c (T, 2, H): each step's column means and r where that norm is a batch norm
// (else empty); running: the batch norms' running means and variances, (max_steps, width) each, updated in place
struct LstmTensors {
  torch::Tensor xp, h0, w_hh, bias, mask, out, cell, a, stats, act, cnew, colstats_h, colstats_c;
};

template <typename T>
void lstm_forward(LstmTensors& s, const Norm<T>& nx, const Norm<T>& nh, const Norm<T>& nc, bool reverse,
                  const BatchSettings& bs, const std::vector<torch::Tensor>& running) {
  const int64_t steps = s.xp.size(0), B = s.xp.size(1), H = s.h0.size(1);
  const T* mask = ptr_or_null<T>(s.mask);
  const T* bias = ptr_or_null<T>(s.bias);
  const bool bn_h = nh.kind == kBatch, bn_c = nc.kind == kBatch;
  auto w_t = s.w_hh.t();
  std::vector<T> zeros(B * H, T(0));
  for (int64_t i = 0; i < steps; ++i) {
    const int64_t t = reverse ? steps - 1 - i : i;
    const int64_t slot = std::min(t, bs.max_steps - 1);  // later steps share the last slot's running estimates
    auto hp_t = i == 0 ? s.h0 : s.out[previous_step(t, reverse)];
    auto a_t = s.a[t];
    at::mm_out(a_t, hp_t, w_t);
    const T* hp = hp_t.data_ptr<T>();
    const T* cp = i == 0 ? zeros.data() : s.cell.data_ptr<T>() + previous_step(t, reverse) * B * H;
    const T* a = a_t.data_ptr<T>();
    const T* xp = s.xp.data_ptr<T>() + t * B * 4 * H;
    T* st = s.stats.data_ptr<T>() + t * B * kLstmStats;
    T* act = s.act.data_ptr<T>() + t * B * 4 * H;
    T* cnew = s.cnew.data_ptr<T>() + t * B * H;
    T* out = s.out.data_ptr<T>() + t * B * H;
    T* cell = s.cell.data_ptr<T>() + t * B * H;
    const T* m = mask ? mask + t * B : nullptr;
    Norm<T> nh_t = nh, nc_t = nc;
    if (bn_h) {
      T* cs = s.colstats_h.data_ptr<T>() + t * 2 * 4 * H;
      batch_column_stats(a, 4 * H, B, 4 * H, m, nh.eps, bs, running[0].data_ptr<T>() + slot * 4 * H,
                         running[1].data_ptr<T>() + slot * 4 * H, cs, cs + 4 * H);
      nh_t = nh.with_columns(cs, cs + 4 * H);
    }
    // the gates and c' of row b (n: scratch of 8H, its second half N_x's output)
    auto gates_row = [&](int64_t b, T* n) {
      norm_forward(nh_t, a + b * 4 * H, n, st + b * kLstmStats);
      const T* xr = xp + b * 4 * H;
      if (nx.kind != kNone) {
        norm_forward(nx, xr, n + 4 * H, st + b * kLstmStats + 4);
        xr = n + 4 * H;
      }
      T* ar = act + b * 4 * H;
      if (bias) {
#pragma omp simd
        for (int64_t j = 0; j < 4 * H; ++j) n[j] += bias[j];
      }
      sigmoid_of_sum(ar, n, xr, 3 * H);
      tanh_of_sum(ar + 3 * H, n + 3 * H, xr + 3 * H, H);
      const T* cpr = cp + b * H;
      T* cnr = cnew + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) cnr[j] = ar[H + j] * cpr[j] + ar[j] * ar[3 * H + j];
    };
    // h' and the state update of row b from its c'
    auto output_row = [&](int64_t b, T* n) {
      const T* ar = act + b * 4 * H;
      const T* cpr = cp + b * H;
      const T* cnr = cnew + b * H;
      norm_forward(nc_t, cnr, n, st + b * kLstmStats + 2);
      tanh_of_sum(n, n, static_cast<const T*>(nullptr), H);
      const T mb = m ? m[b] : T(1);
      const T* hpr = hp + b * H;
      T* outr = out + b * H;
      T* cellr = cell + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T hn = ar[2 * H + j] * n[j];
        outr[j] = hpr[j] + mb * (hn - hpr[j]);
        cellr[j] = cpr[j] + mb * (cnr[j] - cpr[j]);
      }
    };
    if (!bn_c) {  // one pass over the rows
      at::parallel_for(0, B, row_grain(5 * H), [&](int64_t b0, int64_t b1) {
        std::vector<T> n(8 * H);
        for (int64_t b = b0; b < b1; ++b) {
          gates_row(b, n.data());
          output_row(b, n.data());
        }
      });
    } else {  // N_c's statistics need every row's c' first
      at::parallel_for(0, B, row_grain(4 * H), [&](int64_t b0, int64_t b1) {
        std::vector<T> n(8 * H);
        for (int64_t b = b0; b < b1; ++b) gates_row(b, n.data());
      });
      T* cs = s.colstats_c.data_ptr<T>() + t * 2 * H;
      batch_column_stats(static_cast<const T*>(cnew), H, B, H, m, nc.eps, bs, running[2].data_ptr<T>() + slot * H,
                         running[3].data_ptr<T>() + slot * H, cs, cs + H);
      nc_t = nc.with_columns(cs, cs + H);
      at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
        std::vector<T> n(H);
        for (int64_t b = b0; b < b1; ++b) output_row(b, n.data());
      });
    }
  }
}

// a block's sums (times H): the bias after the norms (4H), N_h's gain (4H), N_x's gain (4H), N_c's gain and bias
// (H each)
constexpr int64_t kLstmSums = 14;

template <typename T>
std::vector<torch::Tensor> lstm_backward(const LstmTensors& s, const Norm<T>& nx, const Norm<T>& nh, const Norm<T>& nc,
                                         bool reverse, const torch::Tensor& grad_out, bool want_gains, bool train) {
  const int64_t steps = s.out.size(0), B = s.out.size(1), H = s.out.size(2);
  const auto opts = s.out.options();
  // The gates' gradient g (before N_h and N_x) is kept for every step only where it is the input's gradient (no
  // N_x in the op); with N_h none it is also the hidden matmul's dA. Else one step's g at a time (its sums are
  // taken per step, while it is in cache), and the input's gradient is N_x's backward of it.
  const bool g_is_input_grad = nx.kind == kNone, h_identity = nh.kind == kNone;
  torch::Tensor dA = torch::empty({steps, B, 4 * H}, opts);
  torch::Tensor dxp = g_is_input_grad ? (h_identity ? dA : torch::empty({steps, B, 4 * H}, opts)) : torch::Tensor();
  torch::Tensor dproj = g_is_input_grad ? dxp : torch::empty({steps, B, 4 * H}, opts);
  std::vector<T> g_step(g_is_input_grad || h_identity ? 0 : B * 4 * H);
  auto dh = torch::zeros({B, H}, opts), dhp = torch::empty({B, H}, opts);
  auto dc = torch::zeros({B, H}, opts), dc_next = torch::empty({B, H}, opts);
  auto dwx = gain_grad_or_none(nx, true, want_gains, opts), dbx = gain_grad_or_none(nx, false, want_gains, opts);
  auto dwh = gain_grad_or_none(nh, true, want_gains, opts), dbh = gain_grad_or_none(nh, false, want_gains, opts);
  auto dwc = gain_grad_or_none(nc, true, want_gains, opts), dbc = gain_grad_or_none(nc, false, want_gains, opts);
  const T* mask = ptr_or_null<T>(s.mask);
  const T* go_all = grad_out.data_ptr<T>();
  const bool bn_h = nh.kind == kBatch, bn_c = nc.kind == kBatch;
  std::vector<T> zeros(B * H, T(0));
  // N_c's output gradient of a step's rows, and its input gradient (the batch norm's rows are coupled: computed
  // after the step's sums)
  std::vector<T> dnc_step(B * H), dcn_all(bn_c ? B * H : 0);
  // which sums the row pass takes (the batch norms sum their own per step)
  const bool sum_h = nh.kind == kRms || nh.kind == kLayer, sum_c = nc.kind == kRms || nc.kind == kLayer;
  const bool s_bias = s.bias.defined() || (sum_h && dbh.defined()) || dbx.defined();
  const bool s_wh = sum_h && dwh.defined(), s_wx = nx.kind != kNone && dwx.defined();
  const bool s_wc = sum_c && dwc.defined(), s_bc = sum_c && dbc.defined();
  std::vector<T> sums((B + kSumRows - 1) / kSumRows * kLstmSums * H, T(0));
  // f(b, its block's sums, scratch of 2H + 2) for every row
  auto over_blocks = [&](int64_t width, auto&& f) {
    over_row_blocks<T>(B, width, 2 * H + 2,
                       [&](int64_t b, int64_t k, T* scratch) { f(b, sums.data() + k * kLstmSums * H, scratch); });
  };
  for (int64_t i = steps - 1; i >= 0; --i) {
    const int64_t t = reverse ? steps - 1 - i : i;
    const T* cp = i == 0 ? zeros.data() : s.cell.data_ptr<T>() + previous_step(t, reverse) * B * H;
    const T* a = s.a.data_ptr<T>() + t * B * 4 * H;
    const T* st = s.stats.data_ptr<T>() + t * B * kLstmStats;
    const T* act = s.act.data_ptr<T>() + t * B * 4 * H;
    const T* xp = nx.kind != kNone ? s.xp.data_ptr<T>() + t * B * 4 * H : nullptr;
    T* dproj_t = nx.kind != kNone ? dproj.data_ptr<T>() + t * B * 4 * H : nullptr;
    const T* cnew = s.cnew.data_ptr<T>() + t * B * H;
    const T* go = go_all + t * B * H;
    const T* m = mask ? mask + t * B : nullptr;
    T* dA_t = dA.data_ptr<T>() + t * B * 4 * H;
    T* dxp_t = g_is_input_grad ? dxp.data_ptr<T>() + t * B * 4 * H : h_identity ? dA_t : g_step.data();
    T* dnc_all = dnc_step.data();
    const T* dh_in = dh.data_ptr<T>();
    const T* dc_in = dc.data_ptr<T>();
    T* dhp_out = dhp.data_ptr<T>();
    T* dc_out = dc_next.data_ptr<T>();
    const Norm<T> nh_t = bn_h ? nh.with_columns(s.colstats_h.data_ptr<T>() + t * 2 * 4 * H,
                                                s.colstats_h.data_ptr<T>() + t * 2 * 4 * H + 4 * H) : nh;
    const Norm<T> nc_t = bn_c ? nc.with_columns(s.colstats_c.data_ptr<T>() + t * 2 * H,
                                                s.colstats_c.data_ptr<T>() + t * 2 * H + H) : nc;
    // row b: the output gate's gradient and N_c's output gradient (n: scratch of H)
    auto output_row = [&](int64_t b, T* n, T* stat) {
      const T* cnr = cnew + b * H;
      norm_forward(nc_t, cnr, n, stat);  // tanh(N_c(c')) again
      tanh_of_sum(n, n, static_cast<const T*>(nullptr), H);
      const T* ar = act + b * 4 * H;
      const T mb = m ? m[b] : T(1);
      T* dncr = dnc_all + b * H;
      T* dxr = dxp_t + b * 4 * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T dhn = mb * (go[b * H + j] + dh_in[b * H + j]);
        const T th = n[j], o = ar[2 * H + j];
        dxr[2 * H + j] = dhn * th * o * (T(1) - o);
        dncr[j] = dhn * o * (T(1) - th * th);
      }
    };
    // row b from N_c's input gradient dcn: the other gates' gradients, and the states' for the step before
    auto gates_row = [&](int64_t b, const T* dcn, T* sum) {
      const T* ar = act + b * 4 * H;
      const T mb = m ? m[b] : T(1);
      T* dxr = dxp_t + b * 4 * H;
      const T* cpr = cp + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T dht = go[b * H + j] + dh_in[b * H + j];
        const T dct = dc_in[b * H + j];
        const T dcnew = mb * dct + dcn[j];
        const T ig = ar[j], fg = ar[H + j], gg = ar[3 * H + j];
        dxr[j] = dcnew * gg * ig * (T(1) - ig);
        dxr[H + j] = dcnew * cpr[j] * fg * (T(1) - fg);
        dxr[3 * H + j] = dcnew * ig * (T(1) - gg * gg);
        dc_out[b * H + j] = dct - mb * dct + dcnew * fg;
        dhp_out[b * H + j] = dht - mb * dht;
      }
      // the norms' backward take the row's sums in their reduction's pass: the bias's with the first norm there
      const T* sr = st + b * kLstmStats;
      T* sum_b = s_bias ? sum : nullptr;
      if (!bn_h && !h_identity) {
        norm_backward(nh_t, dxr, a + b * 4 * H, sr, dA_t + b * 4 * H, s_wh ? sum + 4 * H : nullptr, sum_b);
        sum_b = nullptr;
      }
      if (xp) {
        norm_backward(nx, dxr, xp + b * 4 * H, sr + 4, dproj_t + b * 4 * H, s_wx ? sum + 8 * H : nullptr, sum_b);
        sum_b = nullptr;
      }
      if (sum_b) {
#pragma omp simd
        for (int64_t j = 0; j < 4 * H; ++j) sum_b[j] += dxr[j];
      }
    };
    if (!bn_c) {  // one pass over the rows
      over_blocks(5 * H, [&](int64_t b, T* sum, T* scratch) {
        T *n = scratch, *dcn = scratch + H, *stat = scratch + 2 * H;
        output_row(b, n, stat);
        const T* sr = st + b * kLstmStats + 2;
        const T* dncr = dnc_all + b * H;
        const T* cnr = cnew + b * H;
        norm_backward(nc_t, dncr, cnr, sr, dcn, s_wc ? sum + 12 * H : nullptr, s_bc ? sum + 13 * H : nullptr);
        gates_row(b, dcn, sum);
      });
    } else {  // N_c's gradient needs sums over every row of the step first
      at::parallel_for(0, B, row_grain(2 * H), [&](int64_t b0, int64_t b1) {
        std::vector<T> n(H), stat(2);
        for (int64_t b = b0; b < b1; ++b) output_row(b, n.data(), stat.data());
      });
      batch_norm_backward(nc_t, static_cast<const T*>(dnc_all), H, cnew, H, B, m, train, dcn_all.data(), H,
                          ptr_or_null<T>(dwc), ptr_or_null<T>(dbc));
      over_blocks(4 * H, [&](int64_t b, T* sum, T*) { gates_row(b, dcn_all.data() + b * H, sum); });
    }
    if (bn_h) {  // and N_h's over every row's gate gradients
      batch_norm_backward(nh_t, static_cast<const T*>(dxp_t), 4 * H, a, 4 * H, B, m, train, dA_t, 4 * H,
                          ptr_or_null<T>(dwh), ptr_or_null<T>(dbh));
    }
    at::addmm_out(dh, dhp, dA[t], s.w_hh);
    std::swap(dc, dc_next);
  }
  // the blocks' sums in block order; N_h's and N_x's biases get the bias's sum (they add into the same gates)
  auto sum_dy = s_bias ? torch::zeros({4 * H}, opts) : torch::Tensor();
  for (auto [on, out, offset, width] : {std::make_tuple(s_bias, ptr_or_null<T>(sum_dy), 0 * H, 4 * H),
                                        std::make_tuple(s_wh, ptr_or_null<T>(dwh), 4 * H, 4 * H),
                                        std::make_tuple(s_wx, ptr_or_null<T>(dwx), 8 * H, 4 * H),
                                        std::make_tuple(s_wc, ptr_or_null<T>(dwc), 12 * H, H),
                                        std::make_tuple(s_bc, ptr_or_null<T>(dbc), 13 * H, H)}) {
    if (on) add_block_sums(sums, kLstmSums * H, offset, width, out);
  }
  if (sum_h && dbh.defined()) dbh.copy_(sum_dy);
  if (dbx.defined()) dbx.copy_(sum_dy);
  auto dw = hidden_weight_grad(dA, s.out, s.h0, reverse);
  auto dbias = s.bias.defined() ? sum_dy : torch::Tensor();
  return {dproj, dh, dw, dbias, dwx, dbx, dwh, dbh, dwc, dbc};
}

// ---- autograd -------------------------------------------------------------------------------------------------
// norms: {kind, k} per norm as ints after `reverse`; {inv_n, eps} per norm as doubles

void check_sequence(const torch::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), name, " must be a contiguous (T, B, width) CPU tensor");
  TORCH_CHECK(x.size(0) >= 1, name, " has no time steps: a recurrent layer needs a sequence of at least one step");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name, " must be float32 or float64");
}

torch::Tensor checked_mask(const c10::optional<torch::Tensor>& mask, const torch::Tensor& x) {
  if (!mask.has_value() || !mask->defined()) return torch::Tensor();
  TORCH_CHECK(mask->dim() == 2 && mask->size(0) == x.size(0) && mask->size(1) == x.size(1),
              "the mask must be (T, B)");
  return mask->to(x.scalar_type()).contiguous();
}

// What both ops keep besides tensors: {reverse, kind, k per norm}, {inv_n, eps per norm} and whether the
// norms' gains ask for gradients; and what their backward starts from.
struct OpMeta {
  std::vector<int64_t> ints;
  std::vector<double> doubles;
  bool want_gains;

  void save(torch::autograd::AutogradContext* ctx) const {
    ctx->saved_data["ints"] = ints;
    ctx->saved_data["doubles"] = doubles;
    ctx->saved_data["want_gains"] = want_gains;
  }
  static OpMeta load(torch::autograd::AutogradContext* ctx) {
    return {ctx->saved_data["ints"].toIntVector(), ctx->saved_data["doubles"].toDoubleVector(),
            ctx->saved_data["want_gains"].toBool()};
  }
  bool reverse() const { return ints[0] != 0; }
  // recurrent batch norm (LSTM, three norms): ints {..., train, max_steps}, doubles {..., momentum} after the norms'
  BatchSettings batch() const {
    BatchSettings bs;
    if (ints.size() >= 9 && doubles.size() >= 7) {
      bs.train = ints[7] != 0;
      bs.max_steps = ints[8];
      bs.momentum = doubles[6];
    }
    return bs;
  }
  // the op's norm number `which` (0: the first in its ints) over `width` columns
  template <typename T>
  Norm<T> norm(int which, int64_t width, const torch::Tensor& gain, const torch::Tensor& bias) const {
    return make_norm<T>(ints[1 + 2 * which], width, ints[2 + 2 * which], doubles[2 * which], doubles[1 + 2 * which],
                        gain, bias);
  }
};

// the GRU's four norms from the op's settings and its gains and biases in input order (xg, xc, hg, hc)
template <typename T>
GruNorms<T> gru_norms(const OpMeta& meta, int64_t H, const std::vector<torch::Tensor>& g) {
  return {meta.norm<T>(0, 2 * H, g[0], g[1]), meta.norm<T>(1, H, g[2], g[3]), meta.norm<T>(2, 2 * H, g[4], g[5]),
          meta.norm<T>(3, H, g[6], g[7])};
}

class GruFunction : public torch::autograd::Function<GruFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& xp, const torch::Tensor& h0,
                               const torch::Tensor& w_hh, const c10::optional<torch::Tensor>& bias_h,
                               const c10::optional<torch::Tensor>& mask, const c10::optional<torch::Tensor>& wxg,
                               const c10::optional<torch::Tensor>& bxg, const c10::optional<torch::Tensor>& wxc,
                               const c10::optional<torch::Tensor>& bxc, const c10::optional<torch::Tensor>& whg,
                               const c10::optional<torch::Tensor>& bhg, const c10::optional<torch::Tensor>& whc,
                               const c10::optional<torch::Tensor>& bhc, const std::vector<int64_t>& ints,
                               const std::vector<double>& doubles) {
    check_sequence(xp, "x_proj");
    const int64_t steps = xp.size(0), B = xp.size(1), H = xp.size(2) / 3;
    TORCH_CHECK(xp.size(2) == 3 * H && h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H && w_hh.size(0) == 3 * H &&
                    w_hh.size(1) == H,
                "x_proj must be (T, B, 3H), h0 (B, H) and the hidden weights (3H, H)");
    TORCH_CHECK(ints.size() == 9 && doubles.size() == 8,
                "gru_sequence: ints {reverse, kind_xg, k_xg, kind_xc, k_xc, kind_hg, k_hg, kind_hc, k_hc}, doubles "
                "{inv_n, eps} per norm");
    TORCH_CHECK(ints[1] != kBatch && ints[3] != kBatch && ints[5] != kBatch && ints[7] != kBatch,
                "gru_sequence: no batch norm per step in the GRU");
    const auto opts = xp.options();
    torch::Tensor out = torch::empty({steps, B, H}, opts), a = torch::empty({steps, B, 3 * H}, opts);
    torch::Tensor stats = torch::empty({steps, B, kGruStats}, opts), gates = torch::empty({steps, B, 2 * H}, opts);
    torch::Tensor cand = torch::empty({steps, B, H}, opts);
    auto h0c = h0.contiguous(), w = w_hh.contiguous();
    auto bias = bias_h.has_value() && bias_h->defined() ? bias_h->contiguous() : torch::Tensor();
    TORCH_CHECK(!bias.defined() || bias.numel() == 3 * H, "the hidden bias must have 3H values");
    auto m = checked_mask(mask, xp);
    const OpMeta meta{ints, doubles, any_requires_grad({&wxg, &bxg, &wxc, &bxc, &whg, &bhg, &whc, &bhc})};
    std::vector<torch::Tensor> gains;
    for (const auto* g : {&wxg, &bxg, &wxc, &bxc, &whg, &bhg, &whc, &bhc}) gains.push_back(opt_or_undefined(*g));
    AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "gru_sequence_forward", [&] {
      GruTensors s{xp, h0c, w, bias, m, out, a, stats, gates, cand};
      gru_forward<scalar_t>(s, gru_norms<scalar_t>(meta, H, gains), meta.reverse());
    });
    // the raw projections only where an input norm's backward needs them
    auto xp_saved = ints[1] != kNone || ints[3] != kNone ? xp : torch::Tensor();
    std::vector<torch::Tensor> saved{h0c, w, bias, m, out, a, stats, gates, cand, xp_saved};
    saved.insert(saved.end(), gains.begin(), gains.end());
    ctx->save_for_backward(saved);
    meta.save(ctx);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto v = ctx->get_saved_variables();
    const auto meta = OpMeta::load(ctx);
    const auto& out = v[4];
    const int64_t H = out.size(2);
    auto go = grad_or_zeros(grads[0], out);
    const std::vector<torch::Tensor> gains(v.begin() + 10, v.end());
    std::vector<torch::Tensor> r;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "gru_sequence_backward", [&] {
      GruTensors s{v[9], v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
      r = gru_backward<scalar_t>(s, gru_norms<scalar_t>(meta, H, gains), meta.reverse(), go, meta.want_gains);
    });
    // inputs: xp, h0, w_hh, bias_h, mask, the eight gains and biases, ints, doubles
    return {r[0], r[1], r[2], r[3], torch::Tensor(), r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11],
            torch::Tensor(), torch::Tensor()};
  }
};

class LstmFunction : public torch::autograd::Function<LstmFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& xp, const torch::Tensor& h0,
                               const torch::Tensor& w_hh, const c10::optional<torch::Tensor>& bias,
                               const c10::optional<torch::Tensor>& mask,
                               const c10::optional<torch::Tensor>& wx, const c10::optional<torch::Tensor>& bx,
                               const c10::optional<torch::Tensor>& wh, const c10::optional<torch::Tensor>& bh,
                               const c10::optional<torch::Tensor>& wc, const c10::optional<torch::Tensor>& bc,
                               const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                               const std::vector<torch::Tensor>& running) {
    check_sequence(xp, "x_proj");
    const int64_t steps = xp.size(0), B = xp.size(1), H = xp.size(2) / 4;
    TORCH_CHECK(xp.size(2) == 4 * H && h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H && w_hh.size(0) == 4 * H &&
                    w_hh.size(1) == H,
                "x_proj must be (T, B, 4H), h0 (B, H) and the hidden weights (4H, H)");
    const bool batch = ints.size() == 9 && doubles.size() == 7;
    TORCH_CHECK((ints.size() == 7 && doubles.size() == 6) || batch,
                "lstm_sequence: ints {reverse, kind_x, k_x, kind_h, k_h, kind_c, k_c[, train, max_steps]}, "
                "doubles {inv_n_x, eps_x, inv_n_h, eps_h, inv_n_c, eps_c[, momentum]}");
    TORCH_CHECK(ints[1] != kBatch, "lstm_sequence: a batch norm of the inputs runs outside the op (pass kind_x 0)");
    const auto opts = xp.options();
    // a batch norm's running estimates (max_steps, width), updated in place; its column statistics per step
    const bool bn_h = ints[3] == kBatch, bn_c = ints[5] == kBatch;
    TORCH_CHECK(!(bn_h || bn_c) || (batch && ints[8] >= 1 && running.size() == 4),
                "lstm_sequence: a batch norm needs {train, max_steps >= 1}, the momentum and four running tensors");
    for (int which = 0; which < 2; ++which) {
      if (!(which == 0 ? bn_h : bn_c)) continue;
      const int64_t width = which == 0 ? 4 * H : H;
      for (int k = 0; k < 2; ++k) {
        const auto& r = running[2 * which + k];
        TORCH_CHECK(r.defined() && r.is_contiguous() && r.scalar_type() == xp.scalar_type() && r.dim() == 2 &&
                        r.size(0) == ints[8] && r.size(1) == width,
                    "lstm_sequence: running estimates must be contiguous (max_steps, width) tensors of x's dtype");
      }
    }
    torch::Tensor colstats_h = torch::empty({bn_h ? steps : 0, 2, 4 * H}, opts);
    torch::Tensor colstats_c = torch::empty({bn_c ? steps : 0, 2, H}, opts);
    torch::Tensor out = torch::empty({steps, B, H}, opts), cell = torch::empty({steps, B, H}, opts);
    torch::Tensor a = torch::empty({steps, B, 4 * H}, opts), stats = torch::empty({steps, B, kLstmStats}, opts);
    torch::Tensor act = torch::empty({steps, B, 4 * H}, opts), cnew = torch::empty({steps, B, H}, opts);
    auto h0c = h0.contiguous(), w = w_hh.contiguous();
    auto b = bias.has_value() && bias->defined() ? bias->contiguous() : torch::Tensor();
    TORCH_CHECK(!b.defined() || b.numel() == 4 * H, "the bias after the norms must have 4H values");
    auto m = checked_mask(mask, xp);
    const OpMeta meta{ints, doubles, any_requires_grad({&wx, &bx, &wh, &bh, &wc, &bc})};
    const auto gain_x = opt_or_undefined(wx), bias_x = opt_or_undefined(bx);
    const auto gain_h = opt_or_undefined(wh), bias_h = opt_or_undefined(bh);
    const auto gain_c = opt_or_undefined(wc), bias_c = opt_or_undefined(bc);
    AT_DISPATCH_FLOATING_TYPES(xp.scalar_type(), "lstm_sequence_forward", [&] {
      LstmTensors s{xp, h0c, w, b, m, out, cell, a, stats, act, cnew, colstats_h, colstats_c};
      lstm_forward<scalar_t>(s, meta.norm<scalar_t>(0, 4 * H, gain_x, bias_x),
                             meta.norm<scalar_t>(1, 4 * H, gain_h, bias_h), meta.norm<scalar_t>(2, H, gain_c, bias_c),
                             meta.reverse(), meta.batch(), running);
    });
    // the raw projections only where N_x's backward needs them
    auto xp_saved = ints[1] != kNone ? xp : torch::Tensor();
    ctx->save_for_backward({h0c, w, m, gain_h, bias_h, gain_c, bias_c, out, cell, a, stats, act, cnew, b, colstats_h,
                            colstats_c, xp_saved, gain_x, bias_x});
    meta.save(ctx);
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto v = ctx->get_saved_variables();
    const auto meta = OpMeta::load(ctx);
    const auto& out = v[7];
    const int64_t H = out.size(2);
    auto go = grad_or_zeros(grads[0], out);
    std::vector<torch::Tensor> r;
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "lstm_sequence_backward", [&] {
      LstmTensors s{v[16], v[0], v[1], v[13], v[2], v[7], v[8], v[9], v[10], v[11], v[12], v[14], v[15]};
      r = lstm_backward<scalar_t>(s, meta.norm<scalar_t>(0, 4 * H, v[17], v[18]),
                                  meta.norm<scalar_t>(1, 4 * H, v[3], v[4]), meta.norm<scalar_t>(2, H, v[5], v[6]),
                                  meta.reverse(), go, meta.want_gains, meta.batch().train);
    });
    // inputs: xp, h0, w_hh, bias, mask, wx, bx, wh, bh, wc, bc, ints, doubles, running
    return {r[0], r[1], r[2], r[3], torch::Tensor(), r[4], r[5], r[6], r[7], r[8], r[9], torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

// the entry points rms_norm_cpu.cpp binds for Python
torch::Tensor gru_sequence(const torch::Tensor& xp, const torch::Tensor& h0, const torch::Tensor& w_hh,
                           const c10::optional<torch::Tensor>& bias_h, const c10::optional<torch::Tensor>& mask,
                           const c10::optional<torch::Tensor>& wxg, const c10::optional<torch::Tensor>& bxg,
                           const c10::optional<torch::Tensor>& wxc, const c10::optional<torch::Tensor>& bxc,
                           const c10::optional<torch::Tensor>& whg, const c10::optional<torch::Tensor>& bhg,
                           const c10::optional<torch::Tensor>& whc, const c10::optional<torch::Tensor>& bhc,
                           const std::vector<int64_t>& ints, const std::vector<double>& doubles) {
  return GruFunction::apply(xp, h0, w_hh, bias_h, mask, wxg, bxg, wxc, bxc, whg, bhg, whc, bhc, ints, doubles);
}

torch::Tensor lstm_sequence(const torch::Tensor& xp, const torch::Tensor& h0, const torch::Tensor& w_hh,
                            const c10::optional<torch::Tensor>& bias, const c10::optional<torch::Tensor>& mask,
                            const c10::optional<torch::Tensor>& wx, const c10::optional<torch::Tensor>& bx,
                            const c10::optional<torch::Tensor>& wh, const c10::optional<torch::Tensor>& bh,
                            const c10::optional<torch::Tensor>& wc, const c10::optional<torch::Tensor>& bc,
                            const std::vector<int64_t>& ints, const std::vector<double>& doubles,
                            const std::vector<torch::Tensor>& running) {
  return LstmFunction::apply(xp, h0, w_hh, bias, mask, wx, bx, wh, bh, wc, bc, ints, doubles, running);
}
