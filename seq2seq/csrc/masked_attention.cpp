// softmax(q k^T / sqrt(Dh) + mask) v for decoding steps, fp32, on x86 CPUs with AVX2 and FMA.
//
// A decoding step brings a few queries per key row (1, or a sentence's beams) to keys that stay
// in memory between steps. Most of its time is reading K and V once. This reads only the keys
// up to the last one the mask lets any query of the key row see: a static cache buffer is
// allocated for the whole output and masked past the positions written so far, and compiled
// code, with fixed shapes, would read all of it. It reads each key and value row once for all
// the queries of its key row.
//
// Shapes: B key rows, H heads, T queries per key row, L keys, Dh head dim (a multiple of 8).
// q (B, H, T, Dh); k (B, H, L, Dh), rows contiguous; v (B, H, L, Dh) with rows contiguous or
// with positions contiguous (the values-last layout of seq2seq.cache.StaticCache); mask bool,
// broadcast to (B, H, T, L), True where a query may attend. Built by seq2seq/native.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// exp on 8 floats, Cephes' polynomial after range reduction by ln 2: within 2 ulp over the
// range softmax uses (x <= 0); -inf gives 0.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 dead = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(dead, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Eight sums of eight lanes each -> one vector of the eight sums, in order.
inline __m256 sum8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
  const __m256 h0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  const __m256 h1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0, h1, 0x20), _mm256_permute2f128_ps(h0, h1, 0x31));
}

// Dot products of one query with 8 rows (Dh = 8 * chunks floats each, `stride` apart).
inline __m256 dot8(const float* q, const float* rows, int64_t stride, int64_t chunks) {
  __m256 a[8];
  for (int j = 0; j < 8; ++j) a[j] = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(rows + j * stride));
  for (int64_t c = 1; c < chunks; ++c) {
    const __m256 qc = _mm256_loadu_ps(q + 8 * c);
    for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(rows + j * stride + 8 * c), a[j]);
  }
  return sum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}

inline float dot(const float* q, const float* row, int64_t chunks) {
  __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(row));
  for (int64_t c = 1; c < chunks; ++c) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * c), _mm256_loadu_ps(row + 8 * c), acc);
  return hsum(acc);
}

// out[0:8C] = inv * sum over l < n of w[l] * v[l * stride : +8C]: C <= 8 chunks of the value
// rows at a time, their sums held in registers (a loop over a run-time count of chunks kept them
// on the stack, a load and a store per multiply-add: a third of the kernel's time in a profile).
template <int C>
void weighted_rows(const float* w, const float* v, int64_t stride, int64_t n, float inv, float* out) {
  __m256 acc[C];
  for (int c = 0; c < C; ++c) acc[c] = _mm256_setzero_ps();
  for (int64_t l = 0; l < n; ++l) {
    const __m256 wl = _mm256_set1_ps(w[l]);
    for (int c = 0; c < C; ++c) acc[c] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(v + l * stride + 8 * c), acc[c]);
  }
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(out + 8 * c, _mm256_mul_ps(acc[c], _mm256_set1_ps(inv)));
}

using Weighted = void (*)(const float*, const float*, int64_t, int64_t, float, float*);
constexpr Weighted kWeighted[9] = {nullptr, weighted_rows<1>, weighted_rows<2>, weighted_rows<3>, weighted_rows<4>,
                                   weighted_rows<5>, weighted_rows<6>, weighted_rows<7>, weighted_rows<8>};

constexpr int64_t kMaxDh = 256;
constexpr int64_t kMaxQueries = 64;

at::Tensor masked_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask_in) {
  TORCH_CHECK(q_in.dim() == 4 && k.dim() == 4 && v.dim() == 4, "masked_attention: q, k and v must be 4-d");
  TORCH_CHECK(q_in.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
                  q_in.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "masked_attention: q, k and v must be fp32 on CPU");
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), Dh = q_in.size(3), L = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(1) == H && k.size(3) == Dh && v.sizes() == k.sizes(),
              "masked_attention: k and v must be (B, H, L, Dh) for q ", q_in.sizes(), ", got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(Dh % 8 == 0 && Dh <= kMaxDh, "masked_attention: head dim must be a multiple of 8 up to 256, got ", Dh);
  TORCH_CHECK(k.stride(3) == 1, "masked_attention: k rows must be contiguous");
  TORCH_CHECK(T <= kMaxQueries, "masked_attention: at most 64 queries per key row, got ", T);
  const bool values_last = v.stride(3) != 1 && (v.stride(2) == 1 || L == 1);
  TORCH_CHECK(v.stride(3) == 1 || values_last, "masked_attention: v must have its rows or its positions contiguous");
  TORCH_CHECK(mask_in.scalar_type() == at::kBool, "masked_attention: mask must be bool");
  const at::Tensor q = q_in.contiguous();
  const at::Tensor mask = mask_in.expand({B, H, T, L});
  at::Tensor out = at::empty({B, H, T, Dh}, q.options());
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  const bool* mp = mask.const_data_ptr<bool>();
  float* op = out.mutable_data_ptr<float>();
  const int64_t ms0 = mask.stride(0), ms1 = mask.stride(1), ms2 = mask.stride(2), ms3 = mask.stride(3);
  const int64_t chunks = Dh / 8;
  // Strides as plain numbers: Tensor::stride() is a call, too dear in the inner loops.
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2), vs3 = v.stride(3);
  at::parallel_for(0, B * H, 1, [&](int64_t first, int64_t end) {
    std::vector<float> weights(T * (L + 8));
    const int64_t ldw = L + 8;
    for (int64_t bh = first; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const bool* m = mp + b * ms0 + h * ms1;
      // Keys past the last one any query may see are never read.
      int64_t n = 0;
      for (int64_t t = 0; t < T; ++t)
        for (int64_t l = L; l > n; --l)
          if (m[t * ms2 + (l - 1) * ms3]) { n = l; break; }
      const float* qb = qp + bh * T * Dh;
      const float* kb = kp + b * ks0 + h * ks1;
      const float* vb = vp + b * vs0 + h * vs1;
      // The keys and values of the (b, h) two ahead are fetched while this one computes (the one
      // in between was fetched by the one before), as the panel product does with its weights.
      // The first query's passes issue the prefetches. Two ahead ran faster than one.
      const int64_t ahead = bh + 2;
      const bool more = ahead < end;
      const float* kn = more ? kp + ahead / H * ks0 + ahead % H * ks1 : nullptr;
      const float* vn = more ? vp + ahead / H * vs0 + ahead % H * vs1 : nullptr;
      float* ob = op + bh * T * Dh;
      // Scores, eight keys at a time, then masked.
      for (int64_t t = 0; t < T; ++t) {
        const float* qt = qb + t * Dh;
        float* w = weights.data() + t * ldw;
        int64_t l = 0;
        for (; l + 8 <= n; l += 8) {
          if (t == 0 && kn)
            for (int64_t j = l; j < l + 8; ++j)
              for (int64_t c = 0; c < Dh; c += 16) _mm_prefetch(reinterpret_cast<const char*>(kn + j * ks2 + c), _MM_HINT_T0);
          _mm256_storeu_ps(w + l, _mm256_mul_ps(dot8(qt, kb + l * ks2, ks2, chunks), _mm256_set1_ps(scale)));
        }
        for (; l < n; ++l) w[l] = dot(qt, kb + l * ks2, chunks) * scale;
        const bool* mt = m + t * ms2;
        for (l = 0; l < n; ++l)
          if (!mt[l * ms3]) w[l] = -std::numeric_limits<float>::infinity();
      }
      // exp(score - max); padded with zero weights to a multiple of 8 keys.
      const int64_t n8 = (n + 7) / 8 * 8;
      float total[kMaxQueries];
      for (int64_t t = 0; t < T; ++t) {
        float* w = weights.data() + t * ldw;
        float peak = -std::numeric_limits<float>::infinity();
        for (int64_t l = 0; l < n; ++l) peak = std::max(peak, w[l]);
        for (int64_t l = n; l < n8; ++l) w[l] = -std::numeric_limits<float>::infinity();
        if (peak == -std::numeric_limits<float>::infinity()) peak = 0.f;  // nothing to see: zero weights, zero output
        __m256 sum = _mm256_setzero_ps();
        for (int64_t l = 0; l < n8; l += 8) {
          const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(w + l), _mm256_set1_ps(peak)));
          _mm256_storeu_ps(w + l, e);
          sum = _mm256_add_ps(sum, e);
        }
        total[t] = hsum(sum);
      }
      // Weighted sum of the values, divided by the total weight at the end.
      if (values_last) {  // v (Dh, L) per (b, h): each value dim's positions are contiguous
        const int64_t whole = n / 8 * 8;  // keys in whole runs of eight; values past n are not read
        for (int64_t t = 0; t < T; ++t) {
          const float* w = weights.data() + t * ldw;
          const float inv = total[t] > 0.f ? 1.f / total[t] : 0.f;
          for (int64_t d0 = 0; d0 < Dh; d0 += 8) {
            if (t == 0 && vn)
              for (int64_t j = d0; j < d0 + 8; ++j)
                for (int64_t l = 0; l < n; l += 16) _mm_prefetch(reinterpret_cast<const char*>(vn + j * vs3 + l), _MM_HINT_T0);
            __m256 a[8];
            for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
            for (int64_t l = 0; l < whole; l += 8) {
              const __m256 wl = _mm256_loadu_ps(w + l);
              for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(wl, _mm256_loadu_ps(vb + (d0 + j) * vs3 + l), a[j]);
            }
            alignas(32) float sums[8];
            _mm256_store_ps(sums, sum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]));
            for (int j = 0; j < 8; ++j) {
              float s = sums[j];
              for (int64_t l = whole; l < n; ++l) s += w[l] * vb[(d0 + j) * vs3 + l];  // the last keys, short of eight
              ob[t * Dh + d0 + j] = s * inv;
            }
          }
        }
      } else {
        for (int64_t t = 0; t < T; ++t) {
          if (t == 0 && vn)
            for (int64_t l = 0; l < n; ++l)
              for (int64_t c = 0; c < Dh; c += 16) _mm_prefetch(reinterpret_cast<const char*>(vn + l * vs2 + c), _MM_HINT_T0);
          const float inv = total[t] > 0.f ? 1.f / total[t] : 0.f;
          const float* w = weights.data() + t * ldw;
          for (int64_t c = 0; c < chunks; c += 8)
            kWeighted[std::min<int64_t>(8, chunks - c)](w, vb + 8 * c, vs2, n, inv, ob + t * Dh + 8 * c);
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(seq2seq, m) {
  m.def("masked_attention(Tensor q, Tensor k, Tensor v, Tensor mask) -> Tensor");
}

TORCH_LIBRARY_IMPL(seq2seq, CPU, m) {
  m.impl("masked_attention", &masked_attention);
}
