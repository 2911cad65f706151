// --dump DIR: writes each case's inputs and float64 truth to DIR, for
// dev/cuda/crosscheck_reference.py, which recomputes the truth with
// fastattn.reference (float64 PyTorch) and compares: a check of this
// program's own reference math (reference.cpp) against the project's.
//
// Per case: <id>.txt (key = value lines) and <id>.<name>.f64 (raw
// little-endian float64 arrays, in the layouts of reference.h).
#pragma once

#include <string>

#include "cases.h"
#include "reference.h"

namespace check {

void dump_attention(const std::string& dir, int id, const AttnCase& c, const AttnProblem& pb,
                    const AttnFwd& truth, const AttnBwd& truth_g);
void dump_norm(const std::string& dir, int id, const NormCase& c, const NormProblem& np,
               const NormFwd& truth, const NormBwd& truth_g);

}  // namespace check
