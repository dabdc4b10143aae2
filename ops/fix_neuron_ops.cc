// FixNeuron: power-of-two fake quantization, as described in SPEC.md.
//
//   step = 2^-p,  q = clamp(round(x * 2^p), lo, hi) * 2^-p
//
// Two ops share one kernel core:
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

template <bool kHalfUp>
void QuantizeBlock(const float* in, float* out, int64_t n, int pos, Range r) {
  const float scale = std::ldexp(1.0f, pos);
  const float inv_scale = std::ldexp(1.0f, -pos);
  for (int64_t i = 0; i < n; ++i) out[i] = QuantizeOne<kHalfUp>(in[i], scale, inv_scale, r);
}

// Runs fn(block_begin, block_end, block_index) over fixed blocks on the CPU pool.
//
// TensorFlow runs kernels with denormals flushed to zero (FTZ/DAZ). That would break the
// ends of the position range: 2^-127 (the scale of p = -127, the step of p = 127) is itself
// a denormal, so p = -127 would turn every value into 0 (and Inf into NaN), and p = 127 every
// output into 0. Blocks therefore run with denormals honoured, as the SPEC's exact
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

// Method 0 (non-overflow): step = max(min / (lo - 0.5), max / (hi + 0.5)) with the full
// signed range, p = floor(log2(1 / step)), computed exactly from step's binary exponent.
int NonOverflowPos(OpKernelContext* ctx, const float* x, int64_t n, int bit_width) {
  if (n == 0) return kMaxPos;  // nothing to scale, as for an all-zero tensor
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<float> mins(num_blocks, 0.0f), maxs(num_blocks, 0.0f);
  ForEachBlock(ctx, n, 2, [&](int64_t b, int64_t e, int64_t k) {
    float mn = 0.0f, mx = 0.0f;
    for (int64_t i = b; i < e; ++i) {
      const float v = std::isfinite(x[i]) ? x[i] : 0.0f;
      mn = std::min(mn, v);
      mx = std::max(mx, v);
    }
    mins[k] = mn;
    maxs[k] = mx;
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

// Method 1/2 (min-diffs): the p in p0 .. p0+4 with the smallest cost; ties to the smaller p.
template <bool kHalfUp>
int MinDiffsPos(OpKernelContext* ctx, const float* x, int64_t n, int p0, Range r, bool dw_cost) {
  if (p0 == kMaxPos) return p0;
  const int num = std::min(kNumCandidates, kMaxPos - p0 + 1);
  const int64_t num_blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(num_blocks * kNumCandidates, 0.0);
  ForEachBlock(ctx, n, 12 * num, [&](int64_t b, int64_t e, int64_t k) {
    for (int c = 0; c < num; ++c) {
      const int p = p0 + c;
      const float scale = std::ldexp(1.0f, p);
      const float inv_scale = std::ldexp(1.0f, -p);
      double sum = 0.0;
      for (int64_t i = b; i < e; ++i) {
        const float v = x[i];
        if (!std::isfinite(v)) continue;
        const float q = QuantizeOne<kHalfUp>(v, scale, inv_scale, r);
        const double d = static_cast<double>(q) - static_cast<double>(v);
        if (dw_cost) {
          sum += std::sqrt(std::fabs(d / (std::fabs(static_cast<double>(v)) + 1e-9)));
        } else {
          sum += d * d;
        }
      }
      partial[k * kNumCandidates + c] = sum;
    }
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
    ForEachBlock(ctx, n, 6, [&](int64_t b, int64_t e, int64_t) {
      if (up) {
        QuantizeBlock<true>(in + b, out + b, e - b, pos, r);
      } else {
        QuantizeBlock<false>(in + b, out + b, e - b, pos, r);
      }
    });
  }
};

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
Power-of-two fake quantization (see decent_q SPEC).
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
    .SetShapeFn([](shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      c->set_output(1, c->Scalar());
      return OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("FixNeuron").Device(DEVICE_CPU), FixNeuronOp);
REGISTER_KERNEL_BUILDER(Name("FixNeuronDynamic").Device(DEVICE_CPU), FixNeuronDynamicOp);

}  // namespace tensorflow
