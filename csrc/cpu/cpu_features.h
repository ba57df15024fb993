// Run-time CPU feature checks shared by the CPU epilogues that carry an AVX-512 clone.
#pragma once

namespace gnc {
namespace cpu {

// Whether this CPU runs the AVX-512 clones (avx512f/bw/dq/vl); false where the compiler
// cannot build them (checked once).
inline bool cpu_has_avx512() {
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace gnc
