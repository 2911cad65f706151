// The accuracy protocol and the result table (judge.h).
#include "judge.h"

#include <algorithm>
#include <cmath>

namespace check {

namespace {

// |a - b| with infinities: equal infinities are no error, others infinite.
double diff(double a, double b) {
  if (std::isinf(a) || std::isinf(b)) return a == b ? 0.0 : INFINITY;
  return std::fabs(a - b);
}

}  // namespace

Verdict judge(const std::vector<double>& actual, const std::vector<double>& truth,
              const std::vector<double>& baseline, DType floor_dtype) {
  Verdict v;
  if (actual.size() != truth.size() || baseline.size() != truth.size()) {
    v.ok = false;
    v.detail = "size mismatch";
    return v;
  }
  double scale = 0.0;
  bool truth_nan = false;
  for (double t : truth) {
    if (std::isnan(t)) truth_nan = true;
    else if (std::isfinite(t)) scale = std::max(scale, std::fabs(t));
  }
  for (size_t i = 0; i < truth.size(); ++i) {
    if (std::isnan(truth[i])) continue;
    if (!std::isnan(baseline[i])) v.base_err = std::max(v.base_err, diff(baseline[i], truth[i]));
  }
  const double floor = std::max(abs_floor(floor_dtype), scale * dtype_eps(floor_dtype));
  v.tol = kErrorMultiple * v.base_err + floor;
  size_t bad = 0, nan = 0;
  char buf[160];
  for (size_t i = 0; i < truth.size(); ++i) {
    if (std::isnan(truth[i])) continue;
    if (std::isnan(actual[i])) {
      ++nan;
      v.err = INFINITY;
      continue;
    }
    const double e = diff(actual[i], truth[i]);
    v.err = std::max(v.err, e);
    if (e > v.tol) {
      if (bad < 4) {
        std::snprintf(buf, sizeof buf, "%s[%zu] got %.6g want %.6g", bad ? "; " : "", i, actual[i],
                      truth[i]);
        v.detail += buf;
      }
      ++bad;
    }
  }
  (void)truth_nan;
  if (nan) {
    std::snprintf(buf, sizeof buf, "%s%zu NaN", v.detail.empty() ? "" : "; ", nan);
    v.detail += buf;
  }
  if (bad || nan) {
    std::snprintf(buf, sizeof buf, " (%zu of %zu off)", bad + nan, truth.size());
    v.detail += buf;
    v.ok = false;
  }
  return v;
}

Verdict exact(size_t mismatches, size_t total, const std::string& what) {
  Verdict v;
  v.ok = mismatches == 0;
  v.err = static_cast<double>(mismatches);
  if (!v.ok) {
    v.detail = std::to_string(mismatches) + " of " + std::to_string(total) + " " + what;
  }
  return v;
}

void Table::header() const {
  std::printf("%-18s %-5s %-7s %-52s %-18s %-8s %10s %10s %-7s %9s\n", "kernel", "dtype", "D",
              "variant", "shape", "output", "max_err", "budget", "verdict", "time_us");
}

void Table::add(const Row& r) {
  ++rows_;
  if (!r.v.ok) ++failures_;
  if (failures_only_ && r.v.ok) return;
  char err[32], tol[32], us[32];
  std::snprintf(err, sizeof err, "%.3g", r.v.err);
  if (r.v.tol > 0) std::snprintf(tol, sizeof tol, "%.3g", r.v.tol);
  else std::snprintf(tol, sizeof tol, "exact");
  if (r.usec >= 0) std::snprintf(us, sizeof us, "%.1f", r.usec);
  else std::snprintf(us, sizeof us, "-");
  std::printf("%-18s %-5s %-7s %-52s %-18s %-8s %10s %10s %-7s %9s\n", r.kernel.c_str(),
              r.dtype.c_str(), r.head_dim.c_str(), r.variant.c_str(), r.shape.c_str(),
              r.output.c_str(), err, tol, r.v.ok ? "ok" : "FAIL", us);
  if (!r.v.ok && !r.v.detail.empty()) std::printf("    %s\n", r.v.detail.c_str());
  std::fflush(stdout);
}

}  // namespace check
