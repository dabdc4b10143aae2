// The FixNeuron numerics on raw float buffers, shared by the TensorFlow op
// (fix_neuron_ops.cc) and the C interface of the PyTorch flow (fix_neuron_cpu.cc): one
// implementation of docs/fixneuron.md, so both flows give the same positions and values.
//
//   step = 2^-p,  q = clamp(round(x * 2^p), lo, hi) * 2^-p
//
// Work over a tensor goes through a caller's `for_blocks(n, cost_per_element, fn)`, which calls
// fn(begin, end, k) for each fixed block k = [k * kBlock, min(n, (k + 1) * kBlock)) on the
// caller's threads, with denormals honoured: 2^-127 (the scale of p = -127, the step of
// p = 127) is itself a denormal, and flushing it would turn those positions into zeros.

#ifndef DECENT_Q_OPS_FIX_NEURON_CORE_H_
#define DECENT_Q_OPS_FIX_NEURON_CORE_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace decent_q {

enum Mode { kWeight = 0, kActivation = 1, kDwWeight = 2 };

constexpr int kMinPos = -127;  // 2^127 is the largest power of two a float holds
constexpr int kMaxPos = 127;
constexpr int kNumCandidates = 5;  // method 1/2 try p0 .. p0 + 4
// Work is split into fixed blocks so that partial sums, and with them the chosen
// position, do not depend on the number of threads.
constexpr int64_t kBlock = 1 << 14;

struct Range {
  float lo;
  float hi;
};

inline Range QuantRange(int bit_width, int mode, bool narrow_activation) {
  const float half = std::ldexp(1.0f, bit_width - 1);
  Range r{-half, half - 1.0f};
  if (narrow_activation && mode == kActivation) r.lo = -(half - 1.0f);
  return r;
}

// Exact round-half-up of v (the DPU's activation rounding).
inline float RoundHalfUp(float v) {
  const float f = std::floor(v);
  return (v - f >= 0.5f) ? f + 1.0f : f;
}

// Exact round-half-away-from-zero of v (C round).
inline float RoundHalfAway(float v) {
  const float t = std::trunc(v);
  const float d = v - t;
  return d >= 0.5f ? t + 1.0f : (d <= -0.5f ? t - 1.0f : t);
}

inline float Clamp(float v, float lo, float hi) {
  // NaN compares false both times and passes through.
  return v < lo ? lo : (v > hi ? hi : v);
}

template <bool kHalfUp>
inline float QuantizeOne(float x, float scale, float inv_scale, Range r) {
  const float v = x * scale;
  const float q = kHalfUp ? RoundHalfUp(v) : RoundHalfAway(v);
  return Clamp(q, r.lo, r.hi) * inv_scale;
}

#if defined(__AVX2__)
// The AVX2 forms below compute exactly what the scalar functions above compute, bit for bit
// (the scalar forms also do the tails of blocks and builds without AVX2).
constexpr int64_t kLanes = 8;
// The compute-heavy loops read ahead by hand: the hardware prefetcher alone left them waiting
// on memory for tensors beyond the caches (2.5 -> 1.4 ns per element for the 5 candidates).
constexpr int64_t kPrefetchAhead = 512;  // floats, 2 KiB

inline void Prefetch(const float* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0);  // never faults
}

// round(v) (half up or half away from zero) clamped to [lo, hi], 8 lanes. Blends, not
// additions, keep the sign of a zero as the scalar form does.
template <bool kHalfUp>
inline __m256 RoundClamp8(__m256 v, __m256 lo, __m256 hi) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 q;
  if (kHalfUp) {
    const __m256 f = _mm256_round_ps(v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(_mm256_sub_ps(v, f), half, _CMP_GE_OQ);
    q = _mm256_blendv_ps(f, _mm256_add_ps(f, one), up);
  } else {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 d = _mm256_sub_ps(v, t);
    const __m256 up = _mm256_cmp_ps(d, half, _CMP_GE_OQ);
    const __m256 down = _mm256_cmp_ps(d, _mm256_set1_ps(-0.5f), _CMP_LE_OQ);
    q = _mm256_blendv_ps(t, _mm256_add_ps(t, one), up);
    q = _mm256_blendv_ps(q, _mm256_sub_ps(t, one), down);
  }
  // maxps/minps return their second operand when either is NaN: NaN passes through.
  return _mm256_min_ps(hi, _mm256_max_ps(lo, q));
}

// x where finite, else 0 (non-finite values take no part in choosing a position).
inline __m256 FiniteOrZero8(__m256 x) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  return _mm256_and_ps(x, _mm256_cmp_ps(_mm256_and_ps(x, abs_mask), inf, _CMP_LT_OQ));
}

// Sum of the 4 lanes of a and then of b, in a fixed order.
inline double SumLanes(__m256d a, __m256d b) {
  alignas(32) double l[8];
  _mm256_store_pd(l, a);
  _mm256_store_pd(l + 4, b);
  return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
}
#endif

// Tensors above this size are written with streaming stores: they do not fit the caches
// anyway, and streaming saves reading each output line before it is overwritten.
constexpr int64_t kStreamBytes = int64_t{8} << 20;

template <bool kHalfUp>
void QuantizeBlock(const float* in, float* out, int64_t n, int pos, Range r, bool stream) {
  const float scale = std::ldexp(1.0f, pos);
  const float inv_scale = std::ldexp(1.0f, -pos);
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 vs = _mm256_set1_ps(scale), vinv = _mm256_set1_ps(inv_scale);
  const __m256 lo = _mm256_set1_ps(r.lo), hi = _mm256_set1_ps(r.hi);
  if (stream && reinterpret_cast<uintptr_t>(out) % 32 == 0) {
    for (; i + kLanes <= n; i += kLanes) {
      const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(in + i), vs);
      _mm256_stream_ps(out + i, _mm256_mul_ps(RoundClamp8<kHalfUp>(v, lo, hi), vinv));
    }
    _mm_sfence();
  }
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(in + i), vs);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(RoundClamp8<kHalfUp>(v, lo, hi), vinv));
  }
#endif
  for (; i < n; ++i) out[i] = QuantizeOne<kHalfUp>(in[i], scale, inv_scale, r);
}

// min and max of the finite values of x[0, n) and 0.
inline void FiniteMinMax(const float* x, int64_t n, float* min_out, float* max_out) {
  float mn = 0.0f, mx = 0.0f;
  int64_t i = 0;
#if defined(__AVX2__)
  __m256 vmn = _mm256_setzero_ps(), vmx = _mm256_setzero_ps();
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 v = FiniteOrZero8(_mm256_loadu_ps(x + i));
    vmn = _mm256_min_ps(vmn, v);
    vmx = _mm256_max_ps(vmx, v);
  }
  alignas(32) float lmn[kLanes], lmx[kLanes];
  _mm256_store_ps(lmn, vmn);
  _mm256_store_ps(lmx, vmx);
  for (int j = 0; j < kLanes; ++j) {
    mn = std::min(mn, lmn[j]);
    mx = std::max(mx, lmx[j]);
  }
#endif
  for (; i < n; ++i) {
    const float v = std::isfinite(x[i]) ? x[i] : 0.0f;
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  *min_out = mn;
  *max_out = mx;
}

// Method 0 (non-overflow): step = max(min / (lo - 0.5), max / (hi + 0.5)) with the full
// signed range, p = floor(log2(1 / step)), computed exactly from step's binary exponent.
template <typename ForBlocks>
int NonOverflowPos(const ForBlocks& for_blocks, const float* x, int64_t n, int bit_width) {
  if (n == 0) return kMaxPos;  // nothing to scale, as for an all-zero tensor
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<float> mins(num_blocks, 0.0f), maxs(num_blocks, 0.0f);
  for_blocks(n, 1, [&](int64_t b, int64_t e, int64_t k) {
    FiniteMinMax(x + b, e - b, &mins[k], &maxs[k]);
  });
  const double mn = *std::min_element(mins.begin(), mins.end());
  const double mx = *std::max_element(maxs.begin(), maxs.end());
  const double half = std::ldexp(1.0, bit_width - 1);
  const double step = std::max(mn / (-half - 0.5), mx / (half - 0.5));
  if (!(step > 0.0)) return kMaxPos;  // all zero (or no finite value)
  int exp2 = 0;
  const double mant = std::frexp(step, &exp2);  // step = mant * 2^exp2, mant in [0.5, 1)
  const int ceil_log2 = (mant == 0.5) ? exp2 - 1 : exp2;
  return std::clamp(-ceil_log2, kMinPos, kMaxPos);
}

// The min-diffs costs over the finite values of x[0, n) (non-finite values count as 0, which
// quantizes to 0 and costs nothing), summed in double.
//
// Squared error, all candidates p = p0 + c in one pass. In units of the step,
//   (q - x)^2 = 4^-p (Q - v)^2,  v = x 2^p,  Q = clamp(round(v)),
// and Q - v is exact in float (|v| < 2^20 for p <= p0 + 4; Q - v is a rounding remainder or,
// when saturated, smaller than v with the same sign), (Q - v)^2 is exact in double, and a
// power-of-two factor commutes with every rounding of the sum: the result is the double sum of
// (q - x)^2, with far fewer operations.
#if defined(__AVX2__)
// The squared-error sums over x's whole 8-value groups, 8 lanes a step (*end: where they
// end): each double lane accumulates its values in order; SumLanes adds the lanes in a fixed
// order.
//
// The rounding here is to nearest even, whatever the point's rounding: (Q - v)^2 does not
// depend on it. Unsaturated, |Q - v| is v's distance to the nearest integer (a tie is 0.5 up
// or down); beyond an integer bound every rounding saturates to that bound. One rounding
// instruction thus replaces the half-up / half-away compare and blend (a quarter of the
// loop's instructions), with the same sums bit for bit.
inline void BlockSquaredErrorSums8(const float* x, int64_t n, const float* scale, Range r,
                                   double* sums, int64_t* end) {
  const __m256 lo = _mm256_set1_ps(r.lo), hi = _mm256_set1_ps(r.hi);
  __m256 vs[kNumCandidates];
  __m256d acc_lo[kNumCandidates], acc_hi[kNumCandidates];
  for (int c = 0; c < kNumCandidates; ++c) {
    vs[c] = _mm256_set1_ps(scale[c]);
    acc_lo[c] = acc_hi[c] = _mm256_setzero_pd();
  }
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Prefetch(x + i + kPrefetchAhead);
    const __m256 xv = FiniteOrZero8(_mm256_loadu_ps(x + i));
#pragma GCC unroll 5
    for (int c = 0; c < kNumCandidates; ++c) {
      const __m256 v = _mm256_mul_ps(xv, vs[c]);
      const __m256 q = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 e = _mm256_sub_ps(_mm256_min_ps(hi, _mm256_max_ps(lo, q)), v);
      const __m256d e_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
      const __m256d e_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
      // e * e is exact in double (e has 24 significant bits), so the fused form rounds once,
      // as the multiply-then-add it replaces does.
      acc_lo[c] = _mm256_fmadd_pd(e_lo, e_lo, acc_lo[c]);
      acc_hi[c] = _mm256_fmadd_pd(e_hi, e_hi, acc_hi[c]);
    }
  }
  for (int c = 0; c < kNumCandidates; ++c) sums[c] = SumLanes(acc_lo[c], acc_hi[c]);
  *end = i;
}
#endif

#if defined(__AVX2__) && defined(__GNUC__) && defined(__x86_64__)
#define DECENT_Q_AVX512 1
#define DECENT_Q_AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))

// The sums of BlockSquaredErrorSums8 over x[0, m), m a multiple of 8, 16 values a step: each
// of the 8 double lanes accumulates the same values in the same order as the AVX2 loop's lane
// (the first 8 values of a step, then the next 8), and the lanes are added as SumLanes adds
// them, so the sums are bit-identical.
DECENT_Q_AVX512_TARGET inline void SquaredErrorSums16(const float* x, int64_t m, const float* scale,
                                               Range r, double* sums) {
  const __m512 lo = _mm512_set1_ps(r.lo), hi = _mm512_set1_ps(r.hi);
  const __m512 inf = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __m512 vs[kNumCandidates];
  __m512d acc[kNumCandidates];
  for (int c = 0; c < kNumCandidates; ++c) {
    vs[c] = _mm512_set1_ps(scale[c]);
    acc[c] = _mm512_setzero_pd();
  }
  for (int64_t i = 0; i < m; i += 16) {
    Prefetch(x + i + kPrefetchAhead);
    // The last step of an odd number of 8-value groups reads 8 values; the rest are 0.
    const __mmask16 valid = (m - i >= 16) ? __mmask16(0xFFFF) : __mmask16(0x00FF);
    const __m512 raw = _mm512_maskz_loadu_ps(valid, x + i);
    const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_abs_ps(raw), inf, _CMP_LT_OQ);
    const __m512 xv = _mm512_maskz_mov_ps(finite, raw);
#pragma GCC unroll 5
    for (int c = 0; c < kNumCandidates; ++c) {
      const __m512 v = _mm512_mul_ps(xv, vs[c]);
      const __m512 q = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 e = _mm512_sub_ps(_mm512_min_ps(hi, _mm512_max_ps(lo, q)), v);
      const __m512d e_first = _mm512_cvtps_pd(_mm512_castps512_ps256(e));
      acc[c] = _mm512_fmadd_pd(e_first, e_first, acc[c]);
      if (valid == 0xFFFF) {
        const __m512d e_next = _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1));
        acc[c] = _mm512_fmadd_pd(e_next, e_next, acc[c]);
      }
    }
  }
  for (int c = 0; c < kNumCandidates; ++c) {
    alignas(64) double l[8];
    _mm512_store_pd(l, acc[c]);
    sums[c] = ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
  }
}

// Whether the AVX-512 forms run: the CPU (and OS) support them and DECENT_Q_SIMD is not
// "avx2" (which keeps the AVX2 forms, for comparing the two).
inline bool UseAvx512() {
  static const bool use = [] {
    const char* simd = std::getenv("DECENT_Q_SIMD");
    if (simd != nullptr && std::string(simd) == "avx2") return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  }();
  return use;
}
#endif

template <bool kHalfUp>
void BlockSquaredErrors(const float* x, int64_t n, int p0, Range r, double* costs) {
  float scale[kNumCandidates];
  double sums[kNumCandidates];
  for (int c = 0; c < kNumCandidates; ++c) {
    scale[c] = std::ldexp(1.0f, std::min(p0 + c, kMaxPos));  // p > 127: never chosen
    sums[c] = 0.0;
  }
  int64_t i = 0;  // values before i are in sums, the rest (fewer than 8) go to tail
#if defined(DECENT_Q_AVX512)
  if (UseAvx512()) {
    i = n - n % kLanes;
    SquaredErrorSums16(x, i, scale, r, sums);
  } else {
    BlockSquaredErrorSums8(x, n, scale, r, sums, &i);
  }
#elif defined(__AVX2__)
  BlockSquaredErrorSums8(x, n, scale, r, sums, &i);
#endif
  double tail[kNumCandidates] = {};
  for (; i < n; ++i) {
    const float xi = std::isfinite(x[i]) ? x[i] : 0.0f;
    for (int c = 0; c < kNumCandidates; ++c) {
      const float v = xi * scale[c];
      const float q = Clamp(kHalfUp ? RoundHalfUp(v) : RoundHalfAway(v), r.lo, r.hi);
      const double e = static_cast<double>(q - v);
      tail[c] += e * e;
    }
  }
  for (int c = 0; c < kNumCandidates; ++c) {
    costs[c] = std::ldexp(sums[c] + tail[c], -2 * std::min(p0 + c, kMaxPos));
  }
}

// The depthwise cost sum |(q - x) / (|x| + 1e-9)|^0.5 of one position p.
template <bool kHalfUp>
double BlockDwCost(const float* x, int64_t n, int p, Range r) {
  const float scale = std::ldexp(1.0f, p);
  const float inv_scale = std::ldexp(1.0f, -p);
  double tail = 0.0, lanes = 0.0;
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 vs = _mm256_set1_ps(scale), vinv = _mm256_set1_ps(inv_scale);
  const __m256 lo = _mm256_set1_ps(r.lo), hi = _mm256_set1_ps(r.hi);
  const __m256d eps = _mm256_set1_pd(1e-9);
  const __m256d abs_mask = _mm256_castsi256_pd(_mm256_set1_epi64x(0x7fffffffffffffffLL));
  __m256d acc_lo = _mm256_setzero_pd(), acc_hi = _mm256_setzero_pd();
  for (; i + kLanes <= n; i += kLanes) {
    Prefetch(x + i + kPrefetchAhead);
    const __m256 xv = FiniteOrZero8(_mm256_loadu_ps(x + i));
    const __m256 q = _mm256_mul_ps(RoundClamp8<kHalfUp>(_mm256_mul_ps(xv, vs), lo, hi), vinv);
    const __m256d x_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(xv));
    const __m256d x_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1));
    const __m256d d_lo = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(q)), x_lo);
    const __m256d d_hi = _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(q, 1)), x_hi);
    const __m256d r_lo = _mm256_div_pd(d_lo, _mm256_add_pd(_mm256_and_pd(x_lo, abs_mask), eps));
    const __m256d r_hi = _mm256_div_pd(d_hi, _mm256_add_pd(_mm256_and_pd(x_hi, abs_mask), eps));
    acc_lo = _mm256_add_pd(acc_lo, _mm256_sqrt_pd(_mm256_and_pd(r_lo, abs_mask)));
    acc_hi = _mm256_add_pd(acc_hi, _mm256_sqrt_pd(_mm256_and_pd(r_hi, abs_mask)));
  }
  lanes = SumLanes(acc_lo, acc_hi);
#endif
  for (; i < n; ++i) {
    const float v = std::isfinite(x[i]) ? x[i] : 0.0f;
    const float q = QuantizeOne<kHalfUp>(v, scale, inv_scale, r);
    const double d = static_cast<double>(q) - static_cast<double>(v);
    tail += std::sqrt(std::fabs(d / (std::fabs(static_cast<double>(v)) + 1e-9)));
  }
  return lanes + tail;
}

// Method 1/2 (min-diffs) costs: those of the candidates p0 .. p0 + num - 1 (num returned;
// p0 < 127). Costs are summed per fixed block, then over blocks in block order: they do not
// depend on the number of threads.
template <bool kHalfUp, typename ForBlocks>
int MinDiffsCosts(const ForBlocks& for_blocks, const float* x, int64_t n, int p0, Range r,
                  bool dw_cost, double* costs) {
  const int num = std::min(kNumCandidates, kMaxPos - p0 + 1);
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(num_blocks * kNumCandidates, 0.0);
  for_blocks(n, (dw_cost ? 12 : 4) * num, [&](int64_t b, int64_t e, int64_t k) {
    double* block = &partial[k * kNumCandidates];
    if (!dw_cost) {
      BlockSquaredErrors<kHalfUp>(x + b, e - b, p0, r, block);
      return;
    }
    // one candidate at a time over the block, which stays in cache
    for (int c = 0; c < num; ++c) block[c] = BlockDwCost<kHalfUp>(x + b, e - b, p0 + c, r);
  });
  for (int c = 0; c < num; ++c) {
    costs[c] = 0.0;
    for (int64_t k = 0; k < num_blocks; ++k) costs[c] += partial[k * kNumCandidates + c];
  }
  return num;
}

template <bool kHalfUp, typename ForBlocks>
int MinDiffsPos(const ForBlocks& for_blocks, const float* x, int64_t n, int p0, Range r,
                bool dw_cost) {
  if (p0 == kMaxPos) return p0;
  double costs[kNumCandidates];
  const int num = MinDiffsCosts<kHalfUp>(for_blocks, x, n, p0, r, dw_cost, costs);
  int best = p0;
  double best_cost = std::numeric_limits<double>::infinity();
  for (int c = 0; c < num; ++c) {
    if (costs[c] < best_cost) {
      best_cost = costs[c];
      best = p0 + c;
    }
  }
  return best;
}


// The position of a calibration or training batch: method 0 (non-overflow), or 1 / 2
// (min-diffs; the depthwise cost only when dw_cost).
template <typename ForBlocks>
int SearchPos(const ForBlocks& for_blocks, const float* x, int64_t n, int bit_width, int method,
              bool half_up, bool dw_cost, Range r) {
  const int p0 = NonOverflowPos(for_blocks, x, n, bit_width);
  if (method == 0) return p0;
  return half_up ? MinDiffsPos<true>(for_blocks, x, n, p0, r, dw_cost)
                 : MinDiffsPos<false>(for_blocks, x, n, p0, r, dw_cost);
}

// out[0, n) = the quantized in[0, n) at position pos (in == out is allowed).
template <typename ForBlocks>
void Quantize(const ForBlocks& for_blocks, const float* in, float* out, int64_t n, int pos,
              bool half_up, Range r) {
  // Streaming only into a fresh buffer: when the input is overwritten, its lines are cached.
  const bool stream = in != out && n * static_cast<int64_t>(sizeof(float)) > kStreamBytes;
  for_blocks(n, 6, [&](int64_t b, int64_t e, int64_t) {
    if (half_up) {
      QuantizeBlock<true>(in + b, out + b, e - b, pos, r, stream);
    } else {
      QuantizeBlock<false>(in + b, out + b, e - b, pos, r, stream);
    }
  });
}

}  // namespace decent_q

#endif  // DECENT_Q_OPS_FIX_NEURON_CORE_H_
