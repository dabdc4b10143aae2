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
//
// The numerics are fix_neuron_core.h's (shared with the PyTorch flow's fix_neuron_cpu.cc);
// this file runs them on TensorFlow's CPU pool and defines the ops.

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "fix_neuron_core.h"

#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tsl/platform/denormal.h"

namespace tensorflow {
namespace {

using namespace decent_q;  // NOLINT: the kernel is written in the core's terms

enum Phase { kCalib = 0, kEval = 1, kTrain = 2 };

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

// The core's for_blocks on TensorFlow's CPU pool.
struct Blocks {
  OpKernelContext* ctx;
  template <typename Fn>
  void operator()(int64_t n, int64_t cost_per_element, Fn fn) const {
    ForEachBlock(ctx, n, cost_per_element, fn);
  }
};

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
    return SearchPos(Blocks{ctx}, x, n, bit_width, method, half_up(),
                     method == 2 && mode == kDwWeight, range());
  }

  void Quantize(OpKernelContext* ctx, const float* in, float* out, int64_t n, int pos) const {
    decent_q::Quantize(Blocks{ctx}, in, out, n, pos, half_up(), range());
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
