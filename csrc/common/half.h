// Host/device conversions for 16-bit floats without depending on cuda_fp16.h on the
// CPU side. Round-to-nearest-even on the way down, exact on the way up.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GNC_HD __host__ __device__ __forceinline__
#else
#define GNC_HD inline
#endif

namespace gnc {

struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

GNC_HD float bits_to_float(uint32_t u) {
  float f;
#if defined(__CUDA_ARCH__)
  f = __uint_as_float(u);
#else
  std::memcpy(&f, &u, 4);
#endif
  return f;
}
GNC_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

GNC_HD float to_float(bf16_t h) { return bits_to_float(static_cast<uint32_t>(h.bits) << 16); }
GNC_HD bf16_t bf16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

GNC_HD float to_float(f16_t h) {
  uint32_t sign = (h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { ++e; man <<= 1; } while ((man & 0x400u) == 0);
      man &= 0x3ffu;
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | (man << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  return bits_to_float(u);
}
GNC_HD f16_t f16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or nan
    return f16_t{static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u))};
  }
  if (a >= 0x477ff000u) return f16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // overflow -> inf
  if (a < 0x38800000u) {  // subnormal or zero in half
    if (a < 0x33000000u) return f16_t{static_cast<uint16_t>(sign)};
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e;  // 113 - e + 13
    uint32_t half_m = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1u);
    uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (half_m & 1u))) ++half_m;
    return f16_t{static_cast<uint16_t>(sign | half_m)};
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);  // round to nearest even at bit 13
  r -= (112u << 23);
  return f16_t{static_cast<uint16_t>(sign | (r >> 13))};
}

// Generic load/store in fp32 (or fp64) arithmetic.
template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

GNC_HD float load_f(const float* p, int64_t i) { return p[i]; }
GNC_HD double load_f(const double* p, int64_t i) { return p[i]; }
GNC_HD float load_f(const bf16_t* p, int64_t i) { return to_float(p[i]); }
GNC_HD float load_f(const f16_t* p, int64_t i) { return to_float(p[i]); }

GNC_HD void store_f(float* p, int64_t i, float v) { p[i] = v; }
GNC_HD void store_f(double* p, int64_t i, double v) { p[i] = v; }
GNC_HD void store_f(bf16_t* p, int64_t i, float v) { p[i] = bf16_from_float(v); }
GNC_HD void store_f(f16_t* p, int64_t i, float v) { p[i] = f16_from_float(v); }

}  // namespace gnc
