// CUDA twin of cpu/normalize.cpp: one warp per row. The square sum (and the backward's
// dot product) is accumulated in fp64 for every input dtype, as on the CPU, so a row's
// norm neither overflows (fp32 squares above ~1.8e19) nor underflows (below ~3.7e-23)
// where the CPU twin's does not; the elementwise work stays in the accumulation type A.
#include "common/dispatch.h"
#include "cuda/common.cuh"
#include "cuda/ops.h"

namespace gnc {
namespace cuda {

namespace {

constexpr int kWarps = 8;

template <typename T>
__global__ void normalize_fwd_kernel(const T* __restrict__ x, T* __restrict__ y,
                                     typename Acc<T>::type* __restrict__ norm, int64_t rows,
                                     int64_t cols, int64_t xs0, int64_t xs1, int64_t ys0,
                                     int64_t ys1, double eps) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * xs0;
  double ss = 0.0;
  for (int64_t j = lane; j < cols; j += 32) {
    const double v = static_cast<double>(load_f(xr, j * xs1));
    ss += v * v;
  }
  ss = warp_sum_bcast(ss);  // every lane scales by the same inverse
  // NaN flags a non-finite row (see the cpu twin)
  const double n = isfinite(ss) ? sqrt(ss) : static_cast<double>(NAN);
  const A inv = static_cast<A>(1.0 / (n < eps ? eps : n));  // std::max(n, eps), as on the CPU
  if (lane == 0) norm[row] = static_cast<A>(n);
  T* yr = y + row * ys0;
  for (int64_t j = lane; j < cols; j += 32) store_f(yr, j * ys1, static_cast<A>(load_f(xr, j * xs1)) * inv);
}

// dy and dx may be the same tensor (the binding allows exactly that overlap: in place),
// so they are not __restrict__ and dy is not read through the non-coherent cache; each
// element is read and then written by the same lane. x and norm never overlap dx.
template <typename T>
__global__ void normalize_bwd_kernel(const T* __restrict__ x, const typename Acc<T>::type* __restrict__ norm,
                                     const T* dy, T* dx, int64_t rows, int64_t cols, int64_t xs0,
                                     int64_t xs1, int64_t gs0, int64_t gs1, int64_t ds0, int64_t ds1,
                                     double eps) {
  using A = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * xs0;
  const T* gr = dy + row * gs0;
  T* dr = dx + row * ds0;
  const double n = static_cast<double>(norm[row]);
  if (n > eps) {
    // y = x / n; dx = (dy - x k) / n with k = <x, dy> / n^2 formed in fp64 (as on the CPU:
    // no factor overflows where dx does not)
    double dot = 0.0;
    for (int64_t j = lane; j < cols; j += 32)
      dot += static_cast<double>(load_f(xr, j * xs1)) * static_cast<double>(load_f(gr, j * gs1));
    dot = warp_sum_bcast(dot);
    const A inv = static_cast<A>(1.0 / n);
    const A k = static_cast<A>(dot / (n * n));
    for (int64_t j = lane; j < cols; j += 32)
      store_f(dr, j * ds1, (load_f(gr, j * gs1) - load_f(xr, j * xs1) * k) * inv);
  } else {
    const A inv = static_cast<A>(1.0 / eps);
    for (int64_t j = lane; j < cols; j += 32) store_f(dr, j * ds1, load_f(gr, j * gs1) * inv);
  }
}

// Launches launch(dtype tag, stream) for x's float dtype on x's device (nothing for
// zero rows) and checks the launch, naming `what` in errors.
template <class F>
void per_row_launch(const TensorView& x, const char* what, F launch, std::uintptr_t stream) {
  if (x.size(0) == 0) return;
  DeviceGuard g(x.device);
  dispatch_float(x.dtype, "x", [&](auto tag) {
    launch(tag, as_stream(stream));
    return 0;
  });
  check_launch(what);
}

}  // namespace

void normalize_rows_forward(const TensorView& x, const TensorView& y, const TensorView& norm,
                            double eps, std::uintptr_t stream) {
  const int64_t rows = x.size(0), cols = x.size(1);
  per_row_launch(x, "normalize_rows_forward", [&](auto tag, cudaStream_t st) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    normalize_fwd_kernel<T><<<grid_for(rows, kWarps), kWarps * 32, 0, st>>>(
        x.data<T>(), y.data<T>(), norm.data<A>(), rows, cols, x.stride(0), x.stride(1),
        y.stride(0), y.stride(1), eps);
  }, stream);
}

void normalize_rows_backward(const TensorView& x, const TensorView& norm, const TensorView& dy,
                             const TensorView& dx, double eps, std::uintptr_t stream) {
  const int64_t rows = x.size(0), cols = x.size(1);
  per_row_launch(x, "normalize_rows_backward", [&](auto tag, cudaStream_t st) {
    using T = decltype(tag);
    using A = typename Acc<T>::type;
    normalize_bwd_kernel<T><<<grid_for(rows, kWarps), kWarps * 32, 0, st>>>(
        x.data<T>(), norm.data<A>(), dy.data<T>(), dx.data<T>(), rows, cols, x.stride(0),
        x.stride(1), dy.stride(0), dy.stride(1), dx.stride(0), dx.stride(1), eps);
  }, stream);
}

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

}  // namespace cuda
}  // namespace gnc
