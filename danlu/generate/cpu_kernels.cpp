// danlu's CPU matrix-vector kernel for GGUF blocks (Q8_0, Q4_0, Q4_1), built on first use by cpu_kernels.py.
//
// Notation: x (M, K) float32 activations, a weight of N rows (outputs) by K inputs in blocks of QK = 32,
// nb = K / 32 blocks a row. Layouts are quant_kernels.py's (GGUF's own):
//   8 bits: codes int8 (N, K), scale fp16 (N, nb); W[n, k] = d[n, g] * q[n, k].
//   4 bits: codes uint8 (N, K/2), byte j of a block = element j | element j + 16 << 4; scale and minimum fp16
//           (N, nb); W[n, k] = d[n, g] * q[n, k] + m[n, g], q in [0, 15] (Q4_0: m = -8 d).
// The GGUF formats are designed for integer dot products: each row of x is rounded to int8 per block of 32
// with one scale dx = max|x| / 127 (ggml's Q8 activation format), so a block's product is one int32 dot
// product of 32 byte pairs, scaled once:
//   sum_k W[n, k] x[k] ~= sum_g d[n, g] dx[g] (q[n, g, :] . qx[g, :]) + m[n, g] sx[g],  sx[g] = dx[g] sum(qx[g])
// i.e. exactly W . x_hat for the rounded activations x_hat = dx qx. The minimum's term must use the rounded
// block's sum too (ggml's Q8_1 stores d * sum(q) for this): with x's exact float sum the error would carry
// m[n, g] * (the block's summed rounding errors), and |m| ~ 8 d; on SmolLM2 that was 4-5x the error.
// u8 x s8 dot products of 32 bytes: AVX512-VNNI's dpbusd, else AVX2's maddubs + madd (no saturation:
// |q| <= 128, |qx| <= 127, pair sums <= 32512). Signed Q8 codes go through |q| and sign(qx, q), the usual
// trick for a u8 x s8 instruction.
// Output rows are split over threads with at::parallel_for (PyTorch's own OpenMP pool).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define DANLU_AVX2 1
#endif

namespace {

constexpr int64_t QK = 32;

inline float half_to_float(uint16_t h) {
#ifdef DANLU_AVX2
  return _cvtsh_ss(h);
#else
  at::Half v;
  std::memcpy(&v, &h, 2);
  return static_cast<float>(v);
#endif
}

// One row of x -> int8 codes (K), per-block scale dx (nb) and the rounded block's sum sx = dx * sum(q) (nb).
// Rounding is round-half-to-even of x * (1 / dx), as torch.round does (the Python reference in the tests).
void quantize_row(const float* x, int64_t K, int8_t* q, float* dx, float* sx) {
  for (int64_t g = 0; g < K / QK; ++g) {
    const float* xb = x + g * QK;
    float amax = 0.f;
    for (int i = 0; i < QK; ++i) amax = std::max(amax, std::fabs(xb[i]));
    const float d = amax / 127.f;
    const float inv = d > 0.f ? 1.f / d : 0.f;
    int32_t isum = 0;
    for (int i = 0; i < QK; ++i) {
      const int8_t c = static_cast<int8_t>(std::nearbyint(xb[i] * inv));
      q[g * QK + i] = c;
      isum += c;
    }
    dx[g] = d;
    sx[g] = d * static_cast<float>(isum);
  }
}

#ifdef DANLU_AVX2
// (32 unsigned bytes) . (32 signed bytes) -> 8 int32 partial sums
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

#ifdef DANLU_AVX2
constexpr int64_t PREFETCH = 2048;  // bytes ahead of the codes being read
constexpr int64_t CHUNK = 64;  // blocks whose scales are converted at once (a stack array of 64 floats)

// sc[i] = fp16 d[g0 + i] * dx[g0 + i] for i < n, 8 at a time (F16C), so the dot loop below does no scalar
// half conversions; returns sum_i fp16 m[g0 + i] * sx[g0 + i] (Q4's minimum term), 0 without a minimum
inline float block_scales(const uint16_t* ws, const uint16_t* wm, const float* dx, const float* sx, int64_t n,
                          float* sc) {
  __m256 macc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ws + i)));
    _mm256_storeu_ps(sc + i, _mm256_mul_ps(d, _mm256_loadu_ps(dx + i)));
    if (wm) {
      const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wm + i)));
      macc = _mm256_fmadd_ps(m, _mm256_loadu_ps(sx + i), macc);
    }
  }
  float mterm = hsum(macc);
  for (; i < n; ++i) {
    sc[i] = half_to_float(ws[i]) * dx[i];
    if (wm) mterm += half_to_float(wm[i]) * sx[i];
  }
  return mterm;
}
#endif

// y[n] = sum over blocks of one weight row (4-bit) times one quantised activation row
inline float row_q4(const uint8_t* wc, const uint16_t* ws, const uint16_t* wm, const int8_t* qx,
                    const float* dx, const float* sx, int64_t nb) {
  float mterm = 0.f;
#ifdef DANLU_AVX2
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();  // two chains: the FMA latency overlaps
  alignas(32) float sc[CHUNK];
  for (int64_t g0 = 0; g0 < nb; g0 += CHUNK) {
    const int64_t n = std::min(CHUNK, nb - g0);
    mterm += block_scales(ws + g0, wm + g0, dx + g0, sx + g0, n, sc);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = g0 + i;
      if ((g & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(wc + g * 16 + PREFETCH), _MM_HINT_T0);
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wc + g * 16));
      // bytes 0..15: low nibbles (elements 0..15); bytes 16..31: high nibbles (elements 16..31)
      const __m256i w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low4);
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + g * QK));
      const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(w, a));
      if (i & 1)
        acc1 = _mm256_fmadd_ps(p, _mm256_broadcast_ss(sc + i), acc1);
      else
        acc0 = _mm256_fmadd_ps(p, _mm256_broadcast_ss(sc + i), acc0);
    }
  }
  return hsum(_mm256_add_ps(acc0, acc1)) + mterm;
#else
  float total = 0.f;
  for (int64_t g = 0; g < nb; ++g) {
    int32_t dot = 0;
    for (int j = 0; j < 16; ++j) {
      const uint8_t b = wc[g * 16 + j];
      dot += (b & 15) * qx[g * QK + j] + (b >> 4) * qx[g * QK + j + 16];
    }
    total += half_to_float(ws[g]) * dx[g] * static_cast<float>(dot);
    mterm += half_to_float(wm[g]) * sx[g];
  }
  return total + mterm;
#endif
}

inline float row_q8(const int8_t* wc, const uint16_t* ws, const int8_t* qx, const float* dx, int64_t nb) {
#ifdef DANLU_AVX2
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  alignas(32) float sc[CHUNK];
  for (int64_t g0 = 0; g0 < nb; g0 += CHUNK) {
    const int64_t n = std::min(CHUNK, nb - g0);
    block_scales(ws + g0, nullptr, dx + g0, nullptr, n, sc);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t g = g0 + i;
      if ((g & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(wc + g * QK + PREFETCH), _MM_HINT_T0);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wc + g * QK));
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx + g * QK));
      // |w| as unsigned (-128 -> 0x80 = 128, still right) and a's sign flipped where w < 0
      const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w)));
      if (i & 1)
        acc1 = _mm256_fmadd_ps(p, _mm256_broadcast_ss(sc + i), acc1);
      else
        acc0 = _mm256_fmadd_ps(p, _mm256_broadcast_ss(sc + i), acc0);
    }
  }
  return hsum(_mm256_add_ps(acc0, acc1));
#else
  float total = 0.f;
  for (int64_t g = 0; g < nb; ++g) {
    int32_t dot = 0;
    for (int j = 0; j < QK; ++j) dot += wc[g * QK + j] * qx[g * QK + j];
    total += half_to_float(ws[g]) * dx[g] * static_cast<float>(dot);
  }
  return total;
#endif
}

at::Tensor block_gemv(const at::Tensor& x_in, const at::Tensor& codes_in, const at::Tensor& scale_in,
                      const c10::optional<at::Tensor>& minimum_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "block_gemv: x must be (M, K) float32");
  TORCH_CHECK(scale_in.dim() == 2 && scale_in.scalar_type() == at::kHalf, "block_gemv: scale (N, K/32) fp16");
  const bool four = codes_in.scalar_type() == at::kByte;
  TORCH_CHECK(four || codes_in.scalar_type() == at::kChar, "block_gemv: codes must be uint8 (4-bit) or int8");
  const int64_t M = x_in.size(0), K = x_in.size(1), N = scale_in.size(0), nb = scale_in.size(1);
  TORCH_CHECK(K % QK == 0 && nb * QK == K, "block_gemv: K must be 32 * the scales' columns, got K=", K);
  TORCH_CHECK(codes_in.dim() == 2 && codes_in.size(0) == N && codes_in.size(1) == (four ? K / 2 : K),
              "block_gemv: codes do not fit the scales");
  TORCH_CHECK(!four || (minimum_in.has_value() && minimum_in->sizes() == scale_in.sizes() &&
                        minimum_in->scalar_type() == at::kHalf),
              "block_gemv: 4-bit codes need a fp16 minimum shaped like the scale");
  const at::Tensor x = x_in.contiguous(), codes = codes_in.contiguous(), scale = scale_in.contiguous();
  const at::Tensor minimum = four ? minimum_in->contiguous() : at::Tensor();

  // the activations, rounded once per call (M * K bytes + 2 floats a block)
  at::Tensor qx = at::empty({M, K}, x.options().dtype(at::kChar));
  at::Tensor dsx = at::empty({2, M, nb}, x.options());
  int8_t* qxp = qx.data_ptr<int8_t>();
  float* dxp = dsx.data_ptr<float>();
  float* sxp = dxp + M * nb;
  const float* xp = x.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) quantize_row(xp + m * K, K, qxp + m * K, dxp + m * nb, sxp + m * nb);

  at::Tensor y = at::empty({M, N}, x.options());
  float* yp = y.data_ptr<float>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  const uint16_t* mp = four ? reinterpret_cast<const uint16_t*>(minimum.data_ptr<at::Half>()) : nullptr;
  const int64_t row_bytes = four ? K / 2 : K;
  const uint8_t* cp = static_cast<const uint8_t*>(codes.data_ptr());
  // rows per task: enough work (~16 KiB of codes) that the OpenMP hand-off is small beside it
  const int64_t grain = std::max<int64_t>(16, 16384 / std::max<int64_t>(1, row_bytes * M));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* wc = cp + n * row_bytes;
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* a = qxp + m * K;
        yp[m * N + n] = four ? row_q4(wc, sp + n * nb, mp + n * nb, a, dxp + m * nb, sxp + m * nb, nb)
                             : row_q8(reinterpret_cast<const int8_t*>(wc), sp + n * nb, a, dxp + m * nb, nb);
      }
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(danlu_kernels, m) {
  m.def("block_gemv(Tensor x, Tensor codes, Tensor scale, Tensor? minimum) -> Tensor");
}

TORCH_LIBRARY_IMPL(danlu_kernels, CPU, m) { m.impl("block_gemv", &block_gemv); }
