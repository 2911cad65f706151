// The accuracy protocol of fastattn/testing.py (docs/TESTING.md), and the
// result table.
//
// A kernel's result is judged against the float64 truth: its max error must
// be at most ERROR_MULTIPLE (3) times the max error of the low-precision
// baseline (reference.h, kBaseline) plus a floor:
//   tol = 3 * max|baseline - truth| + max(ABS_FLOOR[dtype], max|truth| * eps(dtype))
// NaN where the truth has none fails; infinities must match exactly (both
// the same infinity count as no error). lse: the -inf pattern (rows with
// nothing to attend) must match; the comparison then replaces them by 0.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "lowp.h"

namespace check {

struct Verdict {
  bool ok = true;
  double err = 0.0;       // max |actual - truth|
  double base_err = 0.0;  // max |baseline - truth|
  double tol = 0.0;
  std::string detail;     // first mismatches, or why it failed
};

constexpr double kErrorMultiple = 3.0;

// `floor_dtype`: the dtype whose epsilon and absolute floor apply (the
// result's own dtype; float32 for lse and delta).
Verdict judge(const std::vector<double>& actual, const std::vector<double>& truth,
              const std::vector<double>& baseline, DType floor_dtype);

// An exact comparison (bit patterns, masks): ok iff `mismatches` is 0.
Verdict exact(size_t mismatches, size_t total, const std::string& what);

// One line of the result table.
struct Row {
  std::string kernel;    // e.g. attn.fwd.tc, attn.bwd.dq.simt, norm.fwd
  std::string dtype;
  std::string head_dim;  // "80/96": head dim / bucket (attention), "-" (norms)
  std::string variant;   // the compiled variant's features
  std::string shape;
  std::string output;    // out, lse, dq, ...
  Verdict v;
  double usec = -1.0;    // kernel time (mean of the timed reps), -1 if not timed
};

class Table {
 public:
  explicit Table(bool failures_only) : failures_only_(failures_only) {}
  void header() const;
  void add(const Row& r);
  int rows() const { return rows_; }
  int failures() const { return failures_; }

 private:
  bool failures_only_;
  int rows_ = 0;
  int failures_ = 0;
};

}  // namespace check
