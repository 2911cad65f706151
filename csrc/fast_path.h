// The compiled fast path of fastattn's public ops (csrc/fast_path.cpp): the
// Python-callable functions that the module fastattn._C (or the same
// sources built on first use) carries, for its init in csrc/ops.cpp.
#pragma once

#include <Python.h>

namespace fastattn {
namespace fast {

// The module's method table, terminated by a null entry.
PyMethodDef* methods();

}  // namespace fast
}  // namespace fastattn
