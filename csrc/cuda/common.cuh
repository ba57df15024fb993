// Shared CUDA helpers: error checks that throw (never abort), device guard, launch
// geometry, warp reductions and the warp team of the shared Wolfe solver (common/wolfe.h).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/half.h"
#include "common/tensor_view.h"

namespace gnc {
namespace cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("gnc_ext CUDA error in ") + what + ": " +
                             cudaGetErrorString(e));
}

// Makes the tensor's device current for the duration of a launch.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&prev), "cudaGetDevice");
    if (prev != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev && prev >= 0) cudaSetDevice(prev);
  }
};

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

inline void check_launch(const char* what) { check_cuda(cudaGetLastError(), what); }

constexpr unsigned kFullMask = 0xffffffffu;

// Blocks for `items` work items at `per_block` items per block (ceil division).
inline unsigned grid_for(int64_t items, int64_t per_block) {
  return static_cast<unsigned>((items + per_block - 1) / per_block);
}

// Butterfly sum over the warp. The lanes' results may differ in the last bit; use
// warp_sum_bcast where every lane must take the same branches afterwards.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

// Butterfly maximum over the warp (CUDA's max: fmax semantics for float/double, so a NaN
// loses against a number); every lane ends with the same value.
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Warp sum, broadcast from lane 0: the same value in every lane.
template <typename A>
__device__ __forceinline__ A warp_sum_bcast(A v) {
  return __shfl_sync(kFullMask, warp_sum(v), 0);
}

// One warp cooperating on one problem: the Team policy of common/wolfe.h.
struct WarpTeam {
  static constexpr bool kSerial = false;
  int lane;
  __device__ int rank() const { return lane; }
  __device__ int size() const { return 32; }
  __device__ bool leader() const { return lane == 0; }
  __device__ void sync() const { __syncwarp(); }
  __device__ double total(double v) const { return warp_sum_bcast(v); }
  __device__ int count(int v) const { return warp_sum(v); }  // integer sums agree in every lane
  __device__ bool any(bool v) const { return __any_sync(kFullMask, v); }
  __device__ double max(double v) const { return warp_max(v); }
  __device__ int64_t min_index(int64_t v) const {
    long long m = v;
    for (int o = 16; o > 0; o >>= 1) {
      const long long x = __shfl_xor_sync(kFullMask, m, o);
      m = x < m ? x : m;
    }
    return m;
  }
  // smallest value, ties to the smaller index, in every lane
  __device__ void argmin(double& v, int64_t& j) const {
    long long jj = j;
    for (int o = 16; o > 0; o >>= 1) {
      const double ov = __shfl_xor_sync(kFullMask, v, o);
      const long long oj = __shfl_xor_sync(kFullMask, jj, o);
      if (ov < v || (ov == v && oj < jj)) { v = ov; jj = oj; }
    }
    j = jj;
  }
};

}  // namespace cuda
}  // namespace gnc
