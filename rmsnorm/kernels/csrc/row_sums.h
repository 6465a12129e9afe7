// Row reductions shared by the row-norm kernel (rms_norm_cpu.cpp) and the recurrent op (recurrent_cpu.cpp).
#pragma once

#include <cstdint>
#include <utility>

namespace rmsnorm_kernels {

// Row sums in four vectors of independent partial sums: with one accumulator (what `omp simd reduction` gives) a
// row in L1 is bound by the add's latency, 3-4 cycles a vector, not by its loads. Rows shorter than four times
// that width keep the one accumulator: there zeroing and combining the partial sums cost more than they save
// (forward+backward at 19200 x 64: 1.15-1.22x LayerNorm's time with them, 0.96x without, ad-hoc runs).
// sum_j f(j) for j < n, and the two sums of (f(j), g(j)) in one pass.
template <typename T>
constexpr int64_t kSumLanes = 4 * 32 / sizeof(T);

// the L partial sums added into L / 4 (one vector's lanes), then across them
template <typename T, int64_t L>
inline T combine(T* acc) {
#pragma omp simd
  for (int64_t l = 0; l < L / 2; ++l) acc[l] += acc[l + L / 2];
#pragma omp simd
  for (int64_t l = 0; l < L / 4; ++l) acc[l] += acc[l + L / 4];
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t l = 0; l < L / 4; ++l) s += acc[l];
  return s;
}

template <typename T, typename F>
inline T row_sum(int64_t n, F&& f) {
  constexpr int64_t L = kSumLanes<T>;
  T s = 0;
  int64_t j = 0;
  if (n >= 4 * L) {
    T acc[L] = {};
    for (; j + L <= n; j += L) {
#pragma omp simd
      for (int64_t l = 0; l < L; ++l) acc[l] += f(j + l);
    }
    s = combine<T, L>(acc);
  }
#pragma omp simd reduction(+ : s)
  for (int64_t i = j; i < n; ++i) s += f(i);
  return s;
}

template <typename T, typename F, typename G>
inline std::pair<T, T> row_sums(int64_t n, F&& f, G&& g) {
  constexpr int64_t L = kSumLanes<T>;
  T sf = 0, sg = 0;
  int64_t j = 0;
  if (n >= 4 * L) {
    T acc_f[L] = {}, acc_g[L] = {};
    for (; j + L / 2 <= n; j += L / 2) {  // two sums: two vectors each
#pragma omp simd
      for (int64_t l = 0; l < L / 2; ++l) {
        acc_f[l] += f(j + l);
        acc_g[l] += g(j + l);
      }
    }
    sf = combine<T, L>(acc_f);
    sg = combine<T, L>(acc_g);
  }
#pragma omp simd reduction(+ : sf, sg)
  for (int64_t i = j; i < n; ++i) {
    sf += f(i);
    sg += g(i);
  }
  return {sf, sg};
}

}  // namespace rmsnorm_kernels
