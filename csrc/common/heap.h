// A fixed-size min-heap over parallel arrays (values, indices), shared by the CPU and
// CUDA top-m epilogues: v[0] is the smallest kept value.
#pragma once
#include <cstdint>

#include "common/half.h"  // GNC_HD

namespace gnc {

// Replace the root (the smallest kept value) by (val, id) and sift it down.
template <typename V>
GNC_HD void heap_replace_root(V* v, int64_t* ix, int64_t m, V val, int64_t id) {
  int64_t i = 0;
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, s = i;
    V sv = val;
    if (l < m && v[l] < sv) { s = l; sv = v[l]; }
    if (r < m && v[r] < sv) { s = r; sv = v[r]; }
    if (s == i) break;
    v[i] = v[s];
    ix[i] = ix[s];
    i = s;
  }
  v[i] = val;
  ix[i] = id;
}

}  // namespace gnc
