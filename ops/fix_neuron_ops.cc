// FixNeuron: power-of-two fake quantization, as described in docs/fixneuron.md.
//
//   step = 2^-p,  q = clamp(round(x * 2^p), lo, hi) * 2^-p
//
// Two ops share one kernel core (a third, FixNeuronTqtGrad, is the gradient of a
// trained-threshold point):
//   FixNeuron          x -> y.  The op users see in quantize_eval_model.pb. EVAL uses the
//                      `quantize_pos` attr; CALIB and TRAIN choose p per batch (stateless).
//   FixNeuronDynamic   (x, pos) -> (y, used_pos).  The op of live calibration / QAT graphs:
//                      EVAL quantizes with the `pos` input (read from a variable, so that
//                      positions travel with checkpoints); CALIB and TRAIN search p and return
//                      it so that the Python wrapper can count it in a histogram variable.
//
// Rounding is exact on v = x * 2^p (a power-of-two scaling, itself exact):
//   WEIGHT, DW_WEIGHT: half away from zero;  ACTIVATION: half up (the DPU's rounding).
// NaN stays NaN, +-Inf saturate to the range ends; non-finite values are ignored when
// choosing a position. Positions are clamped to [-127, 127]; 127 marks an all-zero tensor.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tsl/platform/denormal.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tensorflow {
namespace {

enum Mode { kWeight = 0, kActivation = 1, kDwWeight = 2 };
enum Phase { kCalib = 0, kEval = 1, kTrain = 2 };

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

Range QuantRange(int bit_width, int mode, bool narrow_activation) {
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

// Runs fn(block_begin, block_end, block_index) over fixed blocks on the CPU pool.
//
// TensorFlow runs kernels with denormals flushed to zero (FTZ/DAZ). That would break the
// ends of the position range: 2^-127 (the scale of p = -127, the step of p = 127) is itself
// a denormal, so p = -127 would turn every value into 0 (and Inf into NaN), and p = 127 every
// output into 0. Blocks therefore run with denormals honoured, as docs/fixneuron.md's exact
// arithmetic (and the NumPy reference) assume; the thread's mode is restored afterwards.
template <typename Fn>
void ForEachBlock(OpKernelContext* ctx, int64_t n, int64_t cost_per_element, Fn fn) {
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
  pool->ParallelFor(num_blocks, kBlock * cost_per_element, [&](int64_t b0, int64_t b1) {
    tsl::port::ScopedDontFlushDenormal keep_denormals;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * kBlock;
      fn(begin, std::min(n, begin + kBlock), b);
    }
  });
}

// min and max of the finite values of x[0, n) and 0.
void FiniteMinMax(const float* x, int64_t n, float* min_out, float* max_out) {
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
int NonOverflowPos(OpKernelContext* ctx, const float* x, int64_t n, int bit_width) {
  if (n == 0) return kMaxPos;  // nothing to scale, as for an all-zero tensor
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<float> mins(num_blocks, 0.0f), maxs(num_blocks, 0.0f);
  ForEachBlock(ctx, n, 1, [&](int64_t b, int64_t e, int64_t k) {
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
template <bool kHalfUp>
int MinDiffsPos(OpKernelContext* ctx, const float* x, int64_t n, int p0, Range r, bool dw_cost) {
  if (p0 == kMaxPos) return p0;
  const int num = std::min(kNumCandidates, kMaxPos - p0 + 1);
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(num_blocks * kNumCandidates, 0.0);
  ForEachBlock(ctx, n, (dw_cost ? 12 : 4) * num, [&](int64_t b, int64_t e, int64_t k) {
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

struct FixParams {
  int bit_width = 8;
  int method = 1;
  int mode = kActivation;
  int phase = kEval;
  bool narrow_activation = false;

  Status Read(OpKernelConstruction* c) {
    TF_RETURN_IF_ERROR(c->GetAttr("bit_width", &bit_width));
    TF_RETURN_IF_ERROR(c->GetAttr("method", &method));
    TF_RETURN_IF_ERROR(c->GetAttr("mode", &mode));
    TF_RETURN_IF_ERROR(c->GetAttr("phase", &phase));
    std::string arch_type;
    TF_RETURN_IF_ERROR(c->GetAttr("arch_type", &arch_type));
    narrow_activation = (arch_type == "DPUCADF8H");
    if (bit_width < 2 || bit_width > 16)
      return errors::InvalidArgument("FixNeuron bit_width must be in [2, 16], got ", bit_width);
    if (method < 0 || method > 2)
      return errors::InvalidArgument("FixNeuron method must be 0, 1 or 2, got ", method);
    if (mode < 0 || mode > 2)
      return errors::InvalidArgument("FixNeuron mode must be 0, 1 or 2, got ", mode);
    if (phase < 0 || phase > 2)
      return errors::InvalidArgument("FixNeuron phase must be 0, 1 or 2, got ", phase);
    if (arch_type != "DEFAULT" && arch_type != "DPUCADF8H")
      return errors::InvalidArgument("FixNeuron arch_type must be DEFAULT or DPUCADF8H, got ",
                                     arch_type);
    return OkStatus();
  }

  Range range() const { return QuantRange(bit_width, mode, narrow_activation); }
  bool half_up() const { return mode == kActivation; }

  int Search(OpKernelContext* ctx, const float* x, int64_t n) const {
    const int p0 = NonOverflowPos(ctx, x, n, bit_width);
    if (method == 0) return p0;
    const bool dw_cost = (method == 2 && mode == kDwWeight);
    return half_up() ? MinDiffsPos<true>(ctx, x, n, p0, range(), dw_cost)
                     : MinDiffsPos<false>(ctx, x, n, p0, range(), dw_cost);
  }

  void Quantize(OpKernelContext* ctx, const float* in, float* out, int64_t n, int pos) const {
    const Range r = range();
    const bool up = half_up();
    // Streaming only into a fresh buffer: when the input is forwarded, its lines are cached.
    const bool stream = in != out && n * static_cast<int64_t>(sizeof(float)) > kStreamBytes;
    ForEachBlock(ctx, n, 6, [&](int64_t b, int64_t e, int64_t) {
      if (up) {
        QuantizeBlock<true>(in + b, out + b, e - b, pos, r, stream);
      } else {
        QuantizeBlock<false>(in + b, out + b, e - b, pos, r, stream);
      }
    });
  }
};

// The gradient of a trained-threshold point (quantize_strategy pof2s_tqt, decent_q's
// docs/qat-accuracy.md), over x[0, n) and its upstream gradient dy in one pass:
//   inside = lo - 0.5 <= x 2^p < hi + 0.5  (the code rounds into the range; NaN: outside)
//   dx = inside ? dy : 0
//   returns sum(dy * (inside ? q - x : q)) in double (d loss / d log2 t is ln 2 times it)
// with q recomputed exactly as the forward pass computed it.
template <bool kHalfUp>
double TqtGradBlock(const float* dy, const float* x, float* dx, int64_t n, int pos, Range r) {
  const float scale = std::ldexp(1.0f, pos);
  const float inv_scale = std::ldexp(1.0f, -pos);
  const float lo = r.lo - 0.5f, hi = r.hi + 0.5f;
  double sum = 0.0;
  int64_t i = 0;
#if defined(__AVX2__)
  // Inside the range q - x is a rounding remainder, exact in float (as in BlockSquaredErrors);
  // dy * d is exact in double.
  const __m256 vs = _mm256_set1_ps(scale), vinv = _mm256_set1_ps(inv_scale);
  const __m256 vlo = _mm256_set1_ps(r.lo), vhi = _mm256_set1_ps(r.hi);
  const __m256 in_lo = _mm256_set1_ps(lo), in_hi = _mm256_set1_ps(hi);
  __m256d acc_lo = _mm256_setzero_pd(), acc_hi = _mm256_setzero_pd();
  for (; i + kLanes <= n; i += kLanes) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    const __m256 dyv = _mm256_loadu_ps(dy + i);
    const __m256 v = _mm256_mul_ps(xv, vs);
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(v, in_lo, _CMP_GE_OQ),
                                        _mm256_cmp_ps(v, in_hi, _CMP_LT_OQ));
    const __m256 q = _mm256_mul_ps(RoundClamp8<kHalfUp>(v, vlo, vhi), vinv);
    _mm256_storeu_ps(dx + i, _mm256_and_ps(dyv, inside));
    const __m256 d = _mm256_blendv_ps(q, _mm256_sub_ps(q, xv), inside);
    acc_lo = _mm256_add_pd(acc_lo, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(dyv)),
                                                 _mm256_cvtps_pd(_mm256_castps256_ps128(d))));
    acc_hi = _mm256_add_pd(acc_hi, _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(dyv, 1)),
                                                 _mm256_cvtps_pd(_mm256_extractf128_ps(d, 1))));
  }
  sum = SumLanes(acc_lo, acc_hi);
#endif
  for (; i < n; ++i) {
    const float v = x[i] * scale;
    const bool inside = v >= lo && v < hi;
    const float q = QuantizeOne<kHalfUp>(x[i], scale, inv_scale, r);
    dx[i] = inside ? dy[i] : 0.0f;
    sum += static_cast<double>(dy[i]) * static_cast<double>(inside ? q - x[i] : q);
  }
  return sum;
}

// Quantizes input 0 into output 0 (in place when the input buffer can be forwarded) and
// sets *pos to the position used.
Status Run(OpKernelContext* ctx, const FixParams& params, int eval_pos, int* pos) {
  const Tensor& input = ctx->input(0);
  Tensor* output = nullptr;
  TF_RETURN_IF_ERROR(ctx->forward_input_or_allocate_output({0}, 0, input.shape(), &output));
  const int64_t n = input.NumElements();
  const float* in = input.flat<float>().data();
  // An EVAL position below the range means "not known yet" (an empty histogram in a QAT
  // evaluation graph): the position is then searched per batch, as in CALIB.
  *pos = (params.phase == kEval && eval_pos >= kMinPos) ? std::min(eval_pos, kMaxPos)
                                                        : params.Search(ctx, in, n);
  params.Quantize(ctx, in, output->flat<float>().data(), n, *pos);
  return OkStatus();
}

class FixNeuronOp : public OpKernel {
 public:
  explicit FixNeuronOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, params_.Read(c));
    OP_REQUIRES_OK(c, c->GetAttr("quantize_pos", &quantize_pos_));
    quantize_pos_ = std::clamp(quantize_pos_, kMinPos, kMaxPos);
  }
  void Compute(OpKernelContext* ctx) override {
    int pos = 0;
    OP_REQUIRES_OK(ctx, Run(ctx, params_, quantize_pos_, &pos));
  }

 private:
  FixParams params_;
  int quantize_pos_ = 0;
};

class FixNeuronDynamicOp : public OpKernel {
 public:
  explicit FixNeuronDynamicOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, params_.Read(c));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& pos_in = ctx->input(1);
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(pos_in.shape()),
                errors::InvalidArgument("FixNeuronDynamic pos must be a scalar"));
    int pos = 0;
    OP_REQUIRES_OK(ctx, Run(ctx, params_, pos_in.scalar<int32>()(), &pos));
    Tensor* used = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &used));
    used->scalar<int32>()() = pos;
  }

 private:
  FixParams params_;
};

// (dy, x, pos) -> (dx, d sum / d log2 t without the ln 2 factor): see TqtGradBlock. Partial
// sums per fixed block, added in block order: the result does not depend on the threads.
class FixNeuronTqtGradOp : public OpKernel {
 public:
  explicit FixNeuronTqtGradOp(OpKernelConstruction* c) : OpKernel(c) {
    OP_REQUIRES_OK(c, params_.Read(c));
  }
  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    const Tensor& pos_in = ctx->input(2);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                errors::InvalidArgument("FixNeuronTqtGrad: dy and x shapes differ"));
    OP_REQUIRES(ctx, TensorShapeUtils::IsScalar(pos_in.shape()),
                errors::InvalidArgument("FixNeuronTqtGrad pos must be a scalar"));
    const int pos = std::clamp(pos_in.scalar<int32>()(), kMinPos, kMaxPos);
    Tensor* dx = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, x.shape(), &dx));
    Tensor* sum = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &sum));
    const int64_t n = x.NumElements();
    const float* dy_data = dy.flat<float>().data();
    const float* x_data = x.flat<float>().data();
    float* dx_data = dx->flat<float>().data();
    const Range r = params_.range();
    const bool up = params_.half_up();
    std::vector<double> partial((n + kBlock - 1) / kBlock, 0.0);
    ForEachBlock(ctx, n, 8, [&](int64_t b, int64_t e, int64_t k) {
      partial[k] = up ? TqtGradBlock<true>(dy_data + b, x_data + b, dx_data + b, e - b, pos, r)
                      : TqtGradBlock<false>(dy_data + b, x_data + b, dx_data + b, e - b, pos, r);
    });
    double total = 0.0;
    for (double p : partial) total += p;
    sum->scalar<float>()() = static_cast<float>(total);
  }

 private:
  FixParams params_;
};

// Shape function of the ops with outputs (a tensor shaped like input `kInput`, a scalar).
template <int kInput>
Status TensorAndScalar(shape_inference::InferenceContext* c) {
  c->set_output(0, c->input(kInput));
  c->set_output(1, c->Scalar());
  return OkStatus();
}

}  // namespace

REGISTER_OP("FixNeuron")
    .Input("input: T")
    .Output("quantized: T")
    .Attr("T: {float} = DT_FLOAT")
    .Attr("bit_width: int = 8")
    .Attr("method: int = 1")
    .Attr("mode: int")
    .Attr("phase: int")
    .Attr("output_dir: string = ''")  // kept for graphs from the original; unused
    .Attr("quantize_pos: int = 0")
    .Attr("arch_type: string = 'DEFAULT'")
    .SetShapeFn(shape_inference::UnchangedShape)
    .Doc(R"doc(
Power-of-two fake quantization (see decent_q's docs/fixneuron.md).
mode: 0 weight, 1 activation, 2 depthwise weight. phase: 0 calib, 1 eval, 2 train.
)doc");

REGISTER_OP("FixNeuronDynamic")
    .Input("input: float")
    .Input("pos: int32")
    .Output("quantized: float")
    .Output("used_pos: int32")
    .Attr("bit_width: int = 8")
    .Attr("method: int = 1")
    .Attr("mode: int")
    .Attr("phase: int")
    .Attr("arch_type: string = 'DEFAULT'")
    .SetShapeFn(TensorAndScalar<0>);

REGISTER_OP("FixNeuronTqtGrad")
    .Input("dy: float")
    .Input("input: float")
    .Input("pos: int32")
    .Output("dx: float")
    .Output("threshold_sum: float")
    .Attr("bit_width: int = 8")
    .Attr("method: int = 1")
    .Attr("mode: int")
    .Attr("phase: int")
    .Attr("arch_type: string = 'DEFAULT'")
    .SetShapeFn(TensorAndScalar<1>)
    .Doc(R"doc(
The gradient of a trained-threshold FixNeuron point (decent_q's docs/qat-accuracy.md): dx, and
sum(dy * (inside ? q - x : q)), which times ln 2 is the gradient of log2 of the threshold.
)doc");

REGISTER_KERNEL_BUILDER(Name("FixNeuron").Device(DEVICE_CPU), FixNeuronOp);
REGISTER_KERNEL_BUILDER(Name("FixNeuronTqtGrad").Device(DEVICE_CPU), FixNeuronTqtGradOp);
REGISTER_KERNEL_BUILDER(Name("FixNeuronDynamic").Device(DEVICE_CPU), FixNeuronDynamicOp);

}  // namespace tensorflow
