// Dynamic scheduling of the CPU kernels' work items.
//
// A static split of the items over threads (what at::parallel_for does)
// gives one thread all the long rows of an unevenly padded batch: with
// lengths [512, 128, 128, 128] the thread holding batch row 0 does most of
// the work while the other waits. Instead, every thread takes the next item
// from a shared queue, and the queue holds the items costliest first
// (longest-processing-time order), so the last items handed out are the
// small ones and the threads finish together. Each item writes only its own
// outputs, so results do not depend on which thread ran it, nor on the
// number of threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define FASTATTN_HAS_MXCSR 1
#else
#define FASTATTN_HAS_MXCSR 0
#endif

namespace fastattn {
namespace cpu {

// Subnormal floats flushed to zero (FTZ) and read as zero (DAZ) on this
// thread while the guard lives; the thread's previous mode comes back after.
// Where attention is concentrated (ALiBi over long rows, large biases) most
// probabilities underflow towards 1e-38 and their products with dp, q, k
// and dout land in the subnormal range, which x86 cores compute in
// microcode assists at a hundred cycles each: measured, ALiBi's backward at
// B=2 H=8 L=1024 cost 1.26x plain attention with them and 1.02x flushed.
// Values below 1.2e-38 (float; 2.2e-308 double) change no result at the
// precision of any output.
class FlushSubnormals {
 public:
#if FASTATTN_HAS_MXCSR
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }
  FlushSubnormals(const FlushSubnormals&) = delete;
  FlushSubnormals& operator=(const FlushSubnormals&) = delete;

 private:
  static constexpr unsigned kFtzDaz = 0x8040;  // MXCSR bits 15 (FTZ) and 6 (DAZ)
  unsigned saved_;
#endif
};

class WorkQueue {
 public:
  // Items 0 .. cost.size() - 1, handed out by decreasing cost (ties by index).
  explicit WorkQueue(const std::vector<int64_t>& cost) : order_(cost.size()) {
    std::iota(order_.begin(), order_.end(), int64_t(0));
    std::stable_sort(order_.begin(), order_.end(),
                     [&](int64_t a, int64_t b) { return cost[a] > cost[b]; });
  }

  // The next item to run, or false when none is left.
  bool pop(int64_t& item) {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= static_cast<int64_t>(order_.size())) return false;
    item = order_[i];
    return true;
  }

  int64_t size() const { return static_cast<int64_t>(order_.size()); }

 private:
  std::vector<int64_t> order_;
  std::atomic<int64_t> next_{0};
};

// Runs `worker()` once on each of the threads that take part (each worker
// pops items until the queue is empty), subnormals flushed (above). Nested
// inside another parallel region, at::parallel_for runs inline: one worker
// then drains the queue.
template <typename F>
void run_workers(const WorkQueue& queue, F&& worker) {
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), queue.size());
  if (workers <= 0) return;
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    const FlushSubnormals flush;
    for (int64_t w = begin; w < end; ++w) worker();
  });
}

}  // namespace cpu
}  // namespace fastattn
