// y = x W^T + b for fp32 on x86 CPUs with AVX2 and FMA, on W laid out once as panels of 16
// output features: panels (P, K, 16), panel p holding features 16p..16p+15, zero past O.
//
// Decoding a batch multiplies a few dozen rows by weights far larger than the caches, so each
// weight is read from memory once a step. oneDNN reads a block and then computes on it, and the
// two do not overlap: at 32 rows its products ran at 70-97 GFLOPS against 110-144 with the weight
// already in cache (2-core AMD EPYC). Here each thread walks its own run of panels, reuses a
// panel for every block of rows, and, while it does, prefetches the next panel into L2, so the
// next panel's reads overlap this panel's arithmetic.
//
// Built on first use by seq2seq/native.py. Shapes: M rows, K input features, O output features.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <optional>

namespace {

constexpr int64_t kWidth = 16;    // output features per panel: two 8-float registers
constexpr int64_t kMaxRows = 6;   // rows per block: 12 accumulators, 2 weights and 1 input = 15 of 16 registers
constexpr int64_t kLine = 64;     // bytes per cache line; a panel's k-th line holds its 16 weights of feature k

// One block of R <= 6 rows times one panel: c (R, cols) = a (R, K) . panel (K, 16) + bias.
// Along the way it prefetches `lines` cache lines from `ahead`, one every `every` steps of k.
template <int R>
void block(const float* a, int64_t K, const float* panel, const float* bias, float* c, int64_t ldc,
           int64_t cols, const char* ahead, int64_t lines, int64_t every) {
  const __m256 b0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  const __m256 b1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
  // Named accumulators, not an array: GCC kept an array's rows on the stack, at half the speed.
  __m256 c00 = b0, c01 = b1, c10 = b0, c11 = b1, c20 = b0, c21 = b1, c30 = b0, c31 = b1, c40 = b0,
         c41 = b1, c50 = b0, c51 = b1;
  const float *a0 = a, *a1 = a + K, *a2 = a + 2 * K, *a3 = a + 3 * K, *a4 = a + 4 * K, *a5 = a + 5 * K;
#define SEQ2SEQ_ROW(i, ai, k)                                       \
  if constexpr (R > i) {                                           \
    const __m256 x = _mm256_broadcast_ss(ai + (k));                \
    c##i##0 = _mm256_fmadd_ps(x, w0, c##i##0);                     \
    c##i##1 = _mm256_fmadd_ps(x, w1, c##i##1);                     \
  }
#define SEQ2SEQ_STEP(k)                                                                            \
  {                                                                                                \
    const __m256 w0 = _mm256_loadu_ps(panel + (k) * kWidth), w1 = _mm256_loadu_ps(panel + (k) * kWidth + 8); \
    SEQ2SEQ_ROW(0, a0, k) SEQ2SEQ_ROW(1, a1, k) SEQ2SEQ_ROW(2, a2, k)                                 \
    SEQ2SEQ_ROW(3, a3, k) SEQ2SEQ_ROW(4, a4, k) SEQ2SEQ_ROW(5, a5, k)                                 \
  }
  int64_t due = every, k = 0;
  for (; k + 4 <= K; k += 4) {
    for (due -= 4; lines > 0 && due <= 0; due += every, --lines, ahead += kLine)
      _mm_prefetch(ahead, _MM_HINT_T1);
    SEQ2SEQ_STEP(k) SEQ2SEQ_STEP(k + 1) SEQ2SEQ_STEP(k + 2) SEQ2SEQ_STEP(k + 3)
  }
  for (; k < K; ++k) SEQ2SEQ_STEP(k)
#undef SEQ2SEQ_STEP
#undef SEQ2SEQ_ROW
  alignas(32) float last[kWidth];
  auto put = [&](float* dst, __m256 lo, __m256 hi) {
    if (cols == kWidth) {
      _mm256_storeu_ps(dst, lo);
      _mm256_storeu_ps(dst + 8, hi);
    } else {  // the last panel of an O that is not a multiple of 16
      _mm256_store_ps(last, lo);
      _mm256_store_ps(last + 8, hi);
      std::memcpy(dst, last, cols * sizeof(float));
    }
  };
  put(c, c00, c01);
  if constexpr (R > 1) put(c + ldc, c10, c11);
  if constexpr (R > 2) put(c + 2 * ldc, c20, c21);
  if constexpr (R > 3) put(c + 3 * ldc, c30, c31);
  if constexpr (R > 4) put(c + 4 * ldc, c40, c41);
  if constexpr (R > 5) put(c + 5 * ldc, c50, c51);
}

using Block = void (*)(const float*, int64_t, const float*, const float*, float*, int64_t, int64_t,
                       const char*, int64_t, int64_t);
constexpr Block kBlocks[kMaxRows + 1] = {nullptr, block<1>, block<2>, block<3>, block<4>, block<5>, block<6>};

// One panel times every row, in blocks of near-equal size (32 rows: 6, 6, 5, 5, 5, 5), each
// block prefetching its share of the next panel.
void panel_times_rows(const float* x, int64_t M, int64_t K, const float* panel, const float* bias,
                      float* y, int64_t O, int64_t col, const float* next) {
  const int64_t cols = std::min(kWidth, O - col);
  alignas(32) float bias_pad[kWidth] = {};
  if (bias && cols < kWidth) {
    std::memcpy(bias_pad, bias + col, cols * sizeof(float));
    bias = bias_pad;
  } else if (bias) {
    bias += col;
  }
  const int64_t blocks = (M + kMaxRows - 1) / kMaxRows;
  const int64_t lines = next ? K : 0;  // a panel is K cache lines
  const int64_t share = (lines + blocks - 1) / blocks;
  for (int64_t i = 0, row = 0; i < blocks; ++i) {
    const int64_t rows = (M - row + blocks - i - 1) / (blocks - i);
    const int64_t mine = std::clamp<int64_t>(lines - i * share, 0, share);
    kBlocks[rows](x + row * K, K, panel, bias, y + row * O + col, O, cols,
                  reinterpret_cast<const char*>(next) + i * share * kLine, mine, mine ? std::max<int64_t>(1, K / mine) : 1);
    row += rows;
  }
}

at::Tensor panel_linear(const at::Tensor& rows, const at::Tensor& panels, const std::optional<at::Tensor>& bias,
                        int64_t out_features) {
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kFloat && rows.dim() == 2,
              "panel_linear: rows must be a 2-d fp32 CPU tensor, got ", rows.sizes(), " ", rows.scalar_type());
  TORCH_CHECK(panels.scalar_type() == at::kFloat && panels.dim() == 3 && panels.size(2) == kWidth &&
                  panels.size(1) == rows.size(1) && panels.size(0) * kWidth >= out_features &&
                  (panels.size(0) - 1) * kWidth < out_features,
              "panel_linear: panels ", panels.sizes(), " do not hold ", out_features, " x ", rows.size(1), " weights");
  TORCH_CHECK(!bias || !bias->defined() || (bias->scalar_type() == at::kFloat && bias->numel() == out_features),
              "panel_linear: bias must be fp32 with ", out_features, " values");
  const at::Tensor x = rows.contiguous(), w = panels.contiguous();
  const std::optional<at::Tensor> b = bias && bias->defined() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const int64_t M = x.size(0), K = x.size(1), P = w.size(0);
  at::Tensor y = at::empty({M, out_features}, x.options());
  if (M == 0) return y;
  const float* xp = x.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  const float* bp = b ? b->const_data_ptr<float>() : nullptr;
  float* yp = y.mutable_data_ptr<float>();
  // Each thread takes a run of consecutive panels, so its reads of the weights are sequential.
  at::parallel_for(0, P, 1, [&](int64_t first, int64_t end) {
    for (int64_t p = first; p < end; ++p)
      panel_times_rows(xp, M, K, wp + p * K * kWidth, bp, yp, out_features, p * kWidth,
                       p + 1 < end ? wp + (p + 1) * K * kWidth : nullptr);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(seq2seq, m) {
  m.def("panel_linear(Tensor rows, Tensor panels, Tensor? bias, int out_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) {
  m.impl("panel_linear", &panel_linear);
}
