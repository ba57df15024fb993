// Scalar maths shared by the CPU and CUDA loss epilogues (host and device):
// the target-logit margin phi(c), its derivative, and a vectorisable exp for x <= 0.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/half.h"  // GNC_HD

namespace gnc {
namespace loss_math {

// Constants of the margin, computed once per call on the host.
struct Margin {
  int type = 0;       // 0 none, 1 CosFace, 2 ArcFace
  double m = 0.0;
  double cos_m = 1.0, sin_m = 0.0;
  double th = -1.0;   // cos(pi - m): ArcFace switches to the fallback at c <= th
  double mm = 0.0;    // m * sin(m): the fallback phi(c) = c - mm
  // interclass filtering: non-target cosines above filt count as 0 (no gradient);
  // +inf when off (threshold 0 at the API)
  double filt = INFINITY;
};

// type: 0 none, 1 CosFace, 2 ArcFace (exact derivative, fallback beyond theta + m > pi),
// 3 ArcFace straight-through (InsightFace: cos(theta + m) for every theta, phi' = 1).
// filter_threshold: 0 = off, else in [-1, 1].
inline Margin make_margin(int type, double m, double filter_threshold = 0.0) {
  Margin g;
  g.filt = (filter_threshold == 0.0) ? INFINITY : filter_threshold;
  g.type = (m == 0.0) ? 0 : type;
  g.m = m;
  g.cos_m = std::cos(m);
  g.sin_m = std::sin(m);
  g.th = std::cos(M_PI - m);
  g.mm = m * std::sin(m);
  return g;
}

constexpr double kSinFloor = 1e-12;  // sin(theta) = sqrt(max(1 - c^2, kSinFloor))

template <typename A>
GNC_HD A phi(A c, int type, A m, A cos_m, A sin_m, A th, A mm) {
  if (type == 1) return c - m;
  if (type == 2) {
    if (c > th) {
      A s2 = A(1) - c * c;
      A s = sqrt(s2 > A(kSinFloor) ? s2 : A(kSinFloor));
      return c * cos_m - s * sin_m;
    }
    return c - mm;
  }
  if (type == 3) {  // cos(arccos(clamp(c, -1, 1)) + m), no fallback
    const A cc = c > A(1) ? A(1) : (c < A(-1) ? A(-1) : c);
    const A s2 = A(1) - cc * cc;
    return cc * cos_m - sqrt(s2 > A(0) ? s2 : A(0)) * sin_m;
  }
  return c;
}

// A non-target cosine after interclass filtering (thr = Margin::filt).
template <typename A>
GNC_HD A filtered(A c, A thr) {
  return c > thr ? A(0) : c;
}

template <typename A>
GNC_HD A dphi(A c, int type, A cos_m, A sin_m, A th) {
  if (type == 2) {
    if (c > th) {
      A s2 = A(1) - c * c;
      if (s2 > A(kSinFloor)) return cos_m + sin_m * c / sqrt(s2);
      return cos_m;
    }
    return A(1);
  }
  return A(1);  // none, CosFace, and the straight-through ArcFace (type 3)
}

// exp(x) for x <= ~0 in float, branch-free so that `omp simd` vectorises it.
// Range reduction x = n ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial: relative
// error below 2e-7 (about 2 ulp); returns 0 for x < -87 (exp(-87) = 1.6e-38).
GNC_HD float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // round to nearest with the 1.5*2^23 trick (SSE2-vectorisable, unlike floorf)
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  const float scale = bits_to_float(static_cast<uint32_t>(e));
  const float v = p * scale;
  return x < -87.0f ? 0.0f : v;
}
GNC_HD double exp_nonpos(double x) { return exp(x); }

}  // namespace loss_math
}  // namespace gnc
