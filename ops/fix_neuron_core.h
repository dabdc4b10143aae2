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
#include <limits>
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
template <bool kHalfUp>
void BlockSquaredErrors(const float* x, int64_t n, int p0, Range r, double* costs) {
  float scale[kNumCandidates];
  double sums[kNumCandidates];
  for (int c = 0; c < kNumCandidates; ++c) {
    scale[c] = std::ldexp(1.0f, std::min(p0 + c, kMaxPos));  // p > 127: never chosen
    sums[c] = 0.0;
  }
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 lo = _mm256_set1_ps(r.lo), hi = _mm256_set1_ps(r.hi);
  __m256 vs[kNumCandidates];
  __m256d acc_lo[kNumCandidates], acc_hi[kNumCandidates];
  for (int c = 0; c < kNumCandidates; ++c) {
    vs[c] = _mm256_set1_ps(scale[c]);
    acc_lo[c] = acc_hi[c] = _mm256_setzero_pd();
  }
  for (; i + kLanes <= n; i += kLanes) {
    Prefetch(x + i + kPrefetchAhead);
    const __m256 xv = FiniteOrZero8(_mm256_loadu_ps(x + i));
#pragma GCC unroll 5
    for (int c = 0; c < kNumCandidates; ++c) {
      const __m256 v = _mm256_mul_ps(xv, vs[c]);
      const __m256 e = _mm256_sub_ps(RoundClamp8<kHalfUp>(v, lo, hi), v);
      const __m256d e_lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
      const __m256d e_hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
      acc_lo[c] = _mm256_add_pd(acc_lo[c], _mm256_mul_pd(e_lo, e_lo));
      acc_hi[c] = _mm256_add_pd(acc_hi[c], _mm256_mul_pd(e_hi, e_hi));
    }
  }
  for (int c = 0; c < kNumCandidates; ++c) sums[c] = SumLanes(acc_lo[c], acc_hi[c]);
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

// Method 1/2 (min-diffs): the p in p0 .. p0+4 with the smallest cost; ties to the smaller p.
// Costs are summed per fixed block, then over blocks in block order: the result does not
// depend on the number of threads.
template <bool kHalfUp, typename ForBlocks>
int MinDiffsPos(const ForBlocks& for_blocks, const float* x, int64_t n, int p0, Range r,
                bool dw_cost) {
  if (p0 == kMaxPos) return p0;
  const int num = std::min(kNumCandidates, kMaxPos - p0 + 1);
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(num_blocks * kNumCandidates, 0.0);
  for_blocks(n, (dw_cost ? 12 : 4) * num, [&](int64_t b, int64_t e, int64_t k) {
    double* costs = &partial[k * kNumCandidates];
    if (!dw_cost) {
      BlockSquaredErrors<kHalfUp>(x + b, e - b, p0, r, costs);
      return;
    }
    // one candidate at a time over the block, which stays in cache
    for (int c = 0; c < num; ++c) costs[c] = BlockDwCost<kHalfUp>(x + b, e - b, p0 + c, r);
  });
  int best = p0;
  double best_cost = std::numeric_limits<double>::infinity();
  for (int c = 0; c < num; ++c) {
    double cost = 0.0;
    for (int64_t k = 0; k < num_blocks; ++k) cost += partial[k * kNumCandidates + c];
    if (cost < best_cost) {
      best_cost = cost;
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
