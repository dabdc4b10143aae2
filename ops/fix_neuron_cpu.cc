// A C interface to the FixNeuron numerics of fix_neuron_core.h for callers outside TensorFlow:
// the PyTorch flow (decent_q_torch/native.py) calls it through ctypes on float32 buffers, so
// both flows run the same code and give the same positions and values.
//
// Both functions split the work into the core's fixed blocks over `threads` threads (the
// caller's torch.get_num_threads()); block results are combined in block order, so the
// position does not depend on the number of threads. Denormals are honoured on every thread
// for the duration of a call (see fix_neuron_core.h), whatever the caller's floating-point mode.

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define DECENT_Q_HAS_MXCSR 1
#endif

#include "fix_neuron_core.h"

namespace {

using namespace decent_q;  // NOLINT: the interface is written in the core's terms

// Clears flush-to-zero and denormals-are-zero on this thread until destroyed.
class KeepDenormals {
 public:
  KeepDenormals() {
#ifdef DECENT_Q_HAS_MXCSR
    saved_ = _mm_getcsr();
    _mm_setcsr(saved_ & ~(kFlushToZero | kDenormalsAreZero));
#endif
  }
  ~KeepDenormals() {
#ifdef DECENT_Q_HAS_MXCSR
    _mm_setcsr(saved_);
#endif
  }
  KeepDenormals(const KeepDenormals&) = delete;
  KeepDenormals& operator=(const KeepDenormals&) = delete;

 private:
  static constexpr unsigned kFlushToZero = 0x8000;
  static constexpr unsigned kDenormalsAreZero = 0x0040;
  unsigned saved_ = 0;
};

// Below this many blocks a call stays on the caller's thread: starting a thread costs more
// than the work it would take over.
constexpr int64_t kMinBlocksPerThread = 32;

// The core's for_blocks: contiguous runs of blocks on up to `threads` threads.
struct Blocks {
  int threads;

  template <typename Fn>
  void operator()(int64_t n, int64_t /*cost_per_element*/, Fn fn) const {
    const int64_t num_blocks = (n + kBlock - 1) / kBlock;
    const int64_t workers =
        std::max<int64_t>(1, std::min<int64_t>(threads, num_blocks / kMinBlocksPerThread));
    const int64_t per_worker = (num_blocks + workers - 1) / workers;
    auto run = [&](int64_t w) {
      KeepDenormals keep_denormals;
      const int64_t last = std::min(num_blocks, (w + 1) * per_worker);
      for (int64_t k = w * per_worker; k < last; ++k) {
        const int64_t begin = k * kBlock;
        fn(begin, std::min(n, begin + kBlock), k);
      }
    };
    std::vector<std::thread> pool;
    for (int64_t w = 1; w < workers; ++w) pool.emplace_back(run, w);
    run(0);
    for (auto& t : pool) t.join();
  }
};

}  // namespace

extern "C" {

// The position of x[0, n): method 0 (non-overflow), 1 (min-diffs) or 2 (min-diffs, with the
// depthwise cost when dw_cost); half_up: round half up (activations), else half away from
// zero; [lo, hi] the code range.
int decent_q_search_pos(const float* x, int64_t n, int bit_width, int method, int half_up,
                        int dw_cost, float lo, float hi, int threads) {
  return SearchPos(Blocks{threads}, x, n, bit_width, method, half_up != 0,
                   method == 2 && dw_cost != 0, Range{lo, hi});
}

// The min-diffs costs of the candidate positions p0 .. p0 + 4 (p0 < 127) over x[0, n), as the
// search computes them (costs[5]; a candidate beyond 127 is left alone); returns how many.
// For tests and analysis.
int decent_q_min_diffs_costs(const float* x, int64_t n, int p0, int half_up, int dw_cost,
                             float lo, float hi, int threads, double* costs) {
  const Range r{lo, hi};
  return half_up != 0
             ? MinDiffsCosts<true>(Blocks{threads}, x, n, p0, r, dw_cost != 0, costs)
             : MinDiffsCosts<false>(Blocks{threads}, x, n, p0, r, dw_cost != 0, costs);
}

// out[0, n) = x[0, n) quantized at position pos (in == out allowed).
void decent_q_quantize(const float* in, float* out, int64_t n, int pos, int half_up, float lo,
                       float hi, int threads) {
  Quantize(Blocks{threads}, in, out, n, std::clamp(pos, kMinPos, kMaxPos), half_up != 0,
           Range{lo, hi});
}

}  // extern "C"
