// Fused spherical-CE forward (see cuda/loss.h): GEMM tile + online log-sum-exp epilogue
// in one kernel; the (B x K) logits never leave shared memory. Its tests pass on an H200
// (2026-11-30), but it is slower than the chunked path there (opt-in). Mirrors cpu/loss.cpp's sce_fold exactly: same
// logits (z = c/tau, target phi(c)/tau), same state layout and merge rule.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "cpu/loss_math.h"
#include "cuda/common.cuh"
#include "cuda/loss.h"

namespace gnc {
namespace cuda {

namespace {

constexpr int BM = 64, BN = 64, BK = 32, NT = 128;  // 4 warps
constexpr int LDS = BK + 8;                           // padded smem row (elements)
constexpr int LDC = BN + 4;                           // padded fp32 tile row

struct MarginF {
  int type;
  float m, cos_m, sin_m, th, mm;
};

template <typename T> struct Wmma { static constexpr bool ok = false; };
template <> struct Wmma<bf16_t> { static constexpr bool ok = true; using type = __nv_bfloat16; };
template <> struct Wmma<f16_t> { static constexpr bool ok = true; using type = __half; };

// Loads a (rows x BK) slab of a row-major (n x d) matrix into smem (zero-padded).
template <typename T>
__device__ void load_slab(T* __restrict__ sm, const T* __restrict__ g, int64_t n, int64_t d, int64_t ld,
                          int64_t r0, int64_t k0, int rows) {
  for (int e = threadIdx.x; e < rows * BK; e += NT) {
    const int r = e / BK, k = e - r * BK;
    const int64_t gr = r0 + r, gk = k0 + k;
    T v{};  // zero bits: 0.0 in every supported dtype
    if (gr < n && gk < d) v = g[gr * ld + gk];
    sm[r * LDS + k] = v;
  }
}

// Computes the BM x BN fp32 cosine tile C = A(BM x d) * B(BN x d)^T into smem `ct`.
template <typename T>
__device__ void tile_product(const T* __restrict__ H, const T* __restrict__ W, int64_t B, int64_t K, int64_t d,
                             int64_t ldh, int64_t ldw, int64_t r0, int64_t c0, T* As, T* Bs, float* ct) {
  if constexpr (Wmma<T>::ok) {
    using namespace nvcuda;
    using WT = typename Wmma<T>::type;
    const int warp = threadIdx.x >> 5;
    const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;  // each warp: a 32 x 32 sub-tile
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int64_t k0 = 0; k0 < d; k0 += BK) {
      load_slab(As, H, B, d, ldh, r0, k0, BM);
      load_slab(Bs, W, K, d, ldw, c0, k0, BN);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, WT, wmma::row_major> fa[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, WT, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i)
          wmma::load_matrix_sync(fa[i], reinterpret_cast<const WT*>(As + (wr + 16 * i) * LDS + kk), LDS);
#pragma unroll
        for (int j = 0; j < 2; ++j)  // B^T tile: element (k, n) at Bs[n * LDS + k] -> col_major
          wmma::load_matrix_sync(fb[j], reinterpret_cast<const WT*>(Bs + (wc + 16 * j) * LDS + kk), LDS);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(ct + (wr + 16 * i) * LDC + wc + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();
  } else {
    // fp32 (and fp64 through fp32 loads is not offered): SIMT, 8 x 4 outputs per thread
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;  // 16 x 8 threads
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int64_t k0 = 0; k0 < d; k0 += BK) {
      load_slab(As, H, B, d, ldh, r0, k0, BM);
      load_slab(Bs, W, K, d, ldw, c0, k0, BN);
      __syncthreads();
#pragma unroll 4
      for (int k = 0; k < BK; ++k) {
        float a[8], b[4];
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = load_f(As, (ty * 8 + i) * LDS + k);
#pragma unroll
        for (int j = 0; j < 4; ++j) b[j] = load_f(Bs, (tx + 16 * j) * LDS + k);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) ct[(ty * 8 + i) * LDC + tx + 16 * j] = acc[i][j];
    __syncthreads();
  }
}

// grid: (row tiles, splits). Each block folds the class tiles [t0, t1) of its split.
// Partial state per (split, row): [max z, sum exp(z - max) over non-target classes,
// target cosine, sum z].
template <typename T>
__global__ void __launch_bounds__(NT) sce_fused_fwd_kernel(
    const T* __restrict__ H, const T* __restrict__ W, const int64_t* __restrict__ y, int64_t ys, int64_t B,
    int64_t K, int64_t d, int64_t ldh, int64_t ldw, float inv_tau, MarginF mg, int64_t ignore_index,
    int64_t tiles_per_split, float* __restrict__ partial) {
  __shared__ __align__(32) T As[BM * LDS];
  __shared__ __align__(32) T Bs[BN * LDS];
  __shared__ __align__(32) float ct[BM * LDC];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n_tiles = (K + BN - 1) / BN;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t t1 = t0 + tiles_per_split < n_tiles ? t0 + tiles_per_split : n_tiles;
  // epilogue ownership: 2 threads per row, 32 columns each
  const int er = threadIdx.x >> 1, eh = threadIdx.x & 1;
  const int64_t row = r0 + er;
  const int64_t yi = row < B ? y[row * ys] : ignore_index;
  const bool active = row < B && yi != ignore_index;
  float m = -INFINITY, s = 0.f, zs = 0.f, tc = 0.f;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * BN;
    tile_product<T>(H, W, B, K, d, ldh, ldw, r0, c0, As, Bs, ct);
    if (active) {
      const float* cr = ct + er * LDC + eh * 32;
      const int64_t cb = c0 + eh * 32;
      float tmax = -INFINITY;
      for (int k = 0; k < 32; ++k) {
        const int64_t col = cb + k;
        if (col >= K) break;
        float z = cr[k] * inv_tau;
        if (col == yi) z = loss_math::phi<float>(cr[k], mg.type, mg.m, mg.cos_m, mg.sin_m, mg.th, mg.mm) * inv_tau;
        tmax = fmaxf(tmax, z);
      }
      if (tmax > -INFINITY) {
        const float mn = fmaxf(m, tmax);
        float acc = 0.f;
        for (int k = 0; k < 32; ++k) {
          const int64_t col = cb + k;
          if (col >= K) break;
          float z = cr[k] * inv_tau;
          if (col == yi) {  // the target's exp term is left to the float64 finish (cpu/loss.h)
            z = loss_math::phi<float>(cr[k], mg.type, mg.m, mg.cos_m, mg.sin_m, mg.th, mg.mm) * inv_tau;
            tc = cr[k];
            zs += z;
            continue;
          }
          acc += loss_math::exp_nonpos(z - mn);
          zs += z;
        }
        s = (m == -INFINITY ? 0.f : s * loss_math::exp_nonpos(m - mn)) + acc;
        m = mn;
      }
    }
    __syncthreads();  // ct is rewritten by the next tile
  }
  // combine the two half-rows (adjacent lanes), then write the partial
  const float om = __shfl_xor_sync(0xffffffffu, m, 1);
  const float os = __shfl_xor_sync(0xffffffffu, s, 1);
  const float oz = __shfl_xor_sync(0xffffffffu, zs, 1);
  const float ot = __shfl_xor_sync(0xffffffffu, tc, 1);
  if (eh == 0 && row < B) {
    const float M = fmaxf(m, om);
    float S = 0.f;
    if (M > -INFINITY) {
      S = (m == -INFINITY ? 0.f : s * loss_math::exp_nonpos(m - M)) +
          (om == -INFINITY ? 0.f : os * loss_math::exp_nonpos(om - M));
    }
    float* p = partial + (static_cast<int64_t>(blockIdx.y) * B + row) * 4;
    p[0] = M;
    p[1] = S;
    p[2] = tc + ot;  // at most one half-row (and one split) saw the target; others hold 0
    p[3] = zs + oz;
  }
}

// Merges the split partials of each row in split order (deterministic) into state.
__global__ void sce_fused_merge_kernel(const float* __restrict__ partial, int64_t splits, int64_t B,
                                       const int64_t* __restrict__ y, int64_t ys, int64_t ignore_index,
                                       double* __restrict__ state) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= B) return;
  double* st = state + 4 * row;
  if (y[row * ys] == ignore_index) return;
  double M = -INFINITY;
  for (int64_t j = 0; j < splits; ++j) M = fmax(M, static_cast<double>(partial[(j * B + row) * 4]));
  double S = 0, T = 0, Z = 0;
  for (int64_t j = 0; j < splits; ++j) {
    const float* p = partial + (j * B + row) * 4;
    if (p[0] > -INFINITY) S += static_cast<double>(p[1]) * exp(static_cast<double>(p[0]) - M);
    T += p[2];
    Z += p[3];
  }
  st[0] = M;
  st[1] = S;
  st[2] = T;
  st[3] = Z;
}

template <typename T>
void launch(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& state, double tau,
            int margin_type, double margin, int64_t ignore_index, cudaStream_t st) {
  const int64_t B = Hn.size(0), d = Hn.size(1), K = Wn.size(0);
  const auto g = loss_math::make_margin(margin_type, margin);
  MarginF mg{g.type, float(g.m), float(g.cos_m), float(g.sin_m), float(g.th), float(g.mm)};
  int dev = 0, sms = 132;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
  const int64_t row_tiles = (B + BM - 1) / BM, n_tiles = (K + BN - 1) / BN;
  int64_t splits = (8LL * sms + row_tiles - 1) / row_tiles;  // about 8 blocks per SM
  if (splits > n_tiles) splits = n_tiles;
  if (splits > 65535) splits = 65535;
  if (splits < 1) splits = 1;
  const int64_t per = (n_tiles + splits - 1) / splits;
  splits = (n_tiles + per - 1) / per;
  if (row_tiles > 2147483647LL) fail("Hn: too many rows");
  float* partial = nullptr;
  check_cuda(cudaMallocAsync(reinterpret_cast<void**>(&partial), sizeof(float) * 4 * splits * B, st),
             "cudaMallocAsync(partial)");
  dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(splits));
  sce_fused_fwd_kernel<T><<<grid, NT, 0, st>>>(Hn.data<T>(), Wn.data<T>(), y.data<int64_t>(), y.stride(0), B, K,
                                                d, Hn.stride(0), Wn.stride(0), static_cast<float>(1.0 / tau), mg,
                                                ignore_index, per, partial);
  check_launch("sce_fused_forward");
  sce_fused_merge_kernel<<<static_cast<unsigned>((B + 255) / 256), 256, 0, st>>>(
      partial, splits, B, y.data<int64_t>(), y.stride(0), ignore_index, state.data<double>());
  check_launch("sce_fused_forward(merge)");
  check_cuda(cudaFreeAsync(partial, st), "cudaFreeAsync(partial)");
}

}  // namespace

void sce_fused_forward(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& state,
                       double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream) {
  check_dim(Hn, 2, "Hn");
  check_dim(Wn, 2, "Wn");
  if (Wn.size(1) != Hn.size(1)) fail("Wn: expected as many columns as Hn");
  check_dtype(Wn, Hn.dtype, "Wn");
  check_shape(y, {Hn.size(0)}, "y");
  check_dtype(y, DType::I64, "y");
  check_shape(state, {Hn.size(0), 4}, "state");
  check_dtype(state, DType::F64, "state");
  if (!state.is_contiguous()) fail("state: must be contiguous");
  if (Hn.size(1) > 1 && (Hn.stride(1) != 1 || Wn.stride(1) != 1)) fail("Hn/Wn: rows must be contiguous");
  if (!(tau > 0)) fail("tau: must be > 0");
  if (Hn.size(0) == 0 || Wn.size(0) == 0) return;
  DeviceGuard g(Hn.device);
  const cudaStream_t st = as_stream(stream);
  switch (Hn.dtype) {
    case DType::F32: launch<float>(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, st); break;
    case DType::BF16: launch<bf16_t>(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, st); break;
    case DType::F16: launch<f16_t>(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, st); break;
    default: fail("Hn: the fused CUDA forward supports float32/bfloat16/float16");
  }
}

}  // namespace cuda
}  // namespace gnc

// ================================================================================
// Fused BACKWARD of the spherical CE (recompute strategy; see cuda/loss.h). Tests pass
// on an H200 (2026-11-30); slower than the chunked path there (opt-in). Twin of the chunked path
// (_grad_tiles: cuBLAS tile, sce_grad epilogue, two GEMMs): every 64 x 64 cosine tile
// is recomputed with tile_product (the forward's GEMM tile), turned into
// g = dL/ds in shared memory with exactly sce_grad's formula (fp32, exp_nonpos, same
// float constants), and multiplied at once into the gradient. Two kernels, no atomics:
//   dH: grid (row tiles, class splits); a block owns 64 rows and a fixed range of
//       class tiles and accumulates G . W into its own fp32 workspace slice
//       ws_h[split] (Bpad x dpad); a finalize kernel sums the splits in split order.
//   dW: grid (class tiles); a block owns 64 classes, loops over all row tiles and
//       accumulates G^T . H into its rows of ws_w (Kpad x dpad); finalize casts.
// The accumulators cover the whole feature dimension (any d) by looping over
// 64-wide column chunks and read-modify-writing the block-private fp32 workspace
// (L2-resident in practice); each element is owned by exactly one warp/thread, so
// the summation order is fixed: results are bitwise reproducible run to run.
// Precision: the cosine tile is the forward's (bf16/fp16 WMMA with fp32 accumulation;
// fp32 by plain fp32 FMA). The second products G.W / G^T.H: bf16/fp16 inputs use
// WMMA with bf16 operands (g rounded to bf16, which keeps fp32 range so no g
// underflows/overflows even for fp16 inputs; for fp16 inputs the W/H chunk is rounded
// to bf16 too) and fp32 accumulation; fp32 inputs use plain fp32 FMA (full fp32, no
// TF32).
namespace gnc {
namespace cuda {

namespace {

constexpr int DC = 64;        // feature columns per accumulation chunk
constexpr int LDX = DC + 8;   // padded smem row of the X chunk / bf16 G tile (elements)

struct GradArgs {
  float inv_tau, uni, eps_minus_uni;
  double tau;
  MarginF mg;
  int64_t ignore_index;
};

// Row metadata of one 64-row tile (in smem): label, lse (as float, like sce_grad<float>),
// u = scale / tau, and whether the row contributes.
struct RowMeta {
  int64_t y[BM];
  float L[BM];
  float Q[BM];  // non-target mass q = 1 - p_y (sce_grad's formula for the target entry)
  float u[BM];
  int on[BM];
};

__device__ void load_meta(RowMeta& rm, const int64_t* __restrict__ y, int64_t ys, const double* __restrict__ lse,
                          int64_t ls, const double* __restrict__ q, int64_t qs, const double* __restrict__ scale,
                          int64_t ss, int64_t B, int64_t r0, const GradArgs& ga) {
  for (int r = threadIdx.x; r < BM; r += NT) {
    const int64_t row = r0 + r;
    int on = 0;
    int64_t yi = ga.ignore_index;
    float L = 0.f, u = 0.f, Q = 0.f;
    if (row < B) {
      yi = y[row * ys];
      const double sc = scale[row * ss];
      if (yi != ga.ignore_index && sc != 0.0) {
        on = 1;
        L = static_cast<float>(lse[row * ls]);
        Q = static_cast<float>(q[row * qs]);
        u = static_cast<float>(sc / ga.tau);
      }
    }
    rm.y[r] = yi;
    rm.L[r] = L;
    rm.Q[r] = Q;
    rm.u[r] = u;
    rm.on[r] = on;
  }
}

// g for tile element (r, c) given its cosine: exactly sce_grad_kernel<float>.
__device__ __forceinline__ float grad_of(float cos, int r, int64_t col, int64_t K, const RowMeta& rm,
                                         const GradArgs& ga) {
  if (!rm.on[r] || col >= K) return 0.f;
  const MarginF& mg = ga.mg;
  if (col == rm.y[r]) {  // p_t - 1 = -q without cancellation
    return rm.u[r] * (ga.eps_minus_uni - rm.Q[r]) * loss_math::dphi<float>(cos, mg.type, mg.cos_m, mg.sin_m, mg.th);
  }
  return rm.u[r] * (loss_math::exp_nonpos(cos * ga.inv_tau - rm.L[r]) - ga.uni);
}

// Loads the (64 x DC) chunk X[r0 + r, j0 + j] of a row-major (n x d) matrix into smem as
// XT (zero-padded outside n x d).
template <typename T, typename XT>
__device__ void load_chunk(XT* __restrict__ xs, const T* __restrict__ g, int64_t n, int64_t d, int64_t ld, int64_t r0,
                           int64_t j0) {
  for (int e = threadIdx.x; e < 64 * DC; e += NT) {
    const int r = e / DC, j = e - r * DC;
    const int64_t gr = r0 + r, gj = j0 + j;
    float v = 0.f;
    if (gr < n && gj < d) v = load_f(g, gr * ld + gj);
    if constexpr (std::is_same<XT, float>::value) {
      xs[r * LDX + j] = v;
    } else {
      xs[r * LDX + j] = __float2bfloat16_rn(v);
    }
  }
}

// acc (64 x DC block of a fp32 row-major workspace with leading dimension ldo, at `out`)
// += A . X, A (64 x 64) from the g tile (TRANS: A = g^T), X (64 x DC) in xs.
// Tensor-core version: g tile gs (bf16, row-major [row][class], ld LDX), xs bf16.
template <bool TRANS>
__device__ void acc_product_tc(float* __restrict__ out, int64_t ldo, const __nv_bfloat16* gs,
                               const __nv_bfloat16* xs) {
  using namespace nvcuda;
  const int warp = threadIdx.x >> 5;
  const int wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::load_matrix_sync(acc[i][j], out + static_cast<int64_t>(wr + 16 * i) * ldo + wc + 16 * j,
                             static_cast<unsigned>(ldo), wmma::mem_row_major);
  using ALayout = typename std::conditional<TRANS, wmma::col_major, wmma::row_major>::type;
#pragma unroll
  for (int kk = 0; kk < 64; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, ALayout> fa[2];
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      // A(m, k): row-major g[m][k] at gs[m * LDX + k]; transposed g^T(m, k) = g[k][m] at
      // gs[k * LDX + m], i.e. col-major with the same leading dimension.
      const __nv_bfloat16* pa = TRANS ? gs + kk * LDX + (wr + 16 * i) : gs + (wr + 16 * i) * LDX + kk;
      wmma::load_matrix_sync(fa[i], pa, LDX);
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], xs + kk * LDX + wc + 16 * j, LDX);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(out + static_cast<int64_t>(wr + 16 * i) * ldo + wc + 16 * j, acc[i][j],
                              static_cast<unsigned>(ldo), wmma::mem_row_major);
}

// fp32 SIMT version: g tile in gf (fp32 [row][class], ld LDC), xs fp32 (ld LDX);
// each thread owns 8 x 4 outputs (rows ty*8 + i, columns tx + 16 j).
template <bool TRANS>
__device__ void acc_product_simt(float* __restrict__ out, int64_t ldo, const float* gf, const float* xs) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  float acc[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = out[static_cast<int64_t>(ty * 8 + i) * ldo + tx + 16 * j];
#pragma unroll 4
  for (int k = 0; k < 64; ++k) {
    float a[8], b[4];
#pragma unroll
    for (int i = 0; i < 8; ++i) a[i] = TRANS ? gf[k * LDC + ty * 8 + i] : gf[(ty * 8 + i) * LDC + k];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = xs[k * LDX + tx + 16 * j];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) out[static_cast<int64_t>(ty * 8 + i) * ldo + tx + 16 * j] = acc[i][j];
}

template <typename T> struct XType { using type = __nv_bfloat16; };
template <> struct XType<float> { using type = float; };

template <typename T>
struct BwdSmem {
  using XT = typename XType<T>::type;
  static constexpr size_t kAB = 2 * BM * LDS * sizeof(T);
  static constexpr size_t kX = 64 * LDX * sizeof(XT);
  static constexpr size_t kABX = kAB > kX ? kAB : kX;  // As/Bs and the X chunk alias
  static constexpr size_t kG = Wmma<T>::ok ? 64 * LDX * sizeof(__nv_bfloat16) : 16;  // fp32 reuses ct
};

// Recomputes the cosine tile (rows r0.., classes c0..) and turns it into g: into gs
// (bf16) for the tensor-core path, in place in ct (fp32) for the fp32 path.
template <typename T>
__device__ void grad_tile(const T* __restrict__ H, const T* __restrict__ W, int64_t B, int64_t K, int64_t d,
                          int64_t ldh, int64_t ldw, int64_t r0, int64_t c0, unsigned char* ab, float* ct,
                          __nv_bfloat16* gs, const RowMeta& rm, const GradArgs& ga) {
  T* As = reinterpret_cast<T*>(ab);
  T* Bs = As + BM * LDS;
  tile_product<T>(H, W, B, K, d, ldh, ldw, r0, c0, As, Bs, ct);  // ends with __syncthreads
  for (int e = threadIdx.x; e < BM * BN; e += NT) {
    const int r = e / BN, c = e - r * BN;
    const float g = grad_of(ct[r * LDC + c], r, c0 + c, K, rm, ga);
    if constexpr (Wmma<T>::ok) {
      gs[r * LDX + c] = __float2bfloat16_rn(g);
    } else {
      ct[r * LDC + c] = g;  // same thread reads then writes this element
    }
  }
  __syncthreads();
}

template <typename T, bool TRANS>
__device__ void accumulate(float* out, int64_t ldo, const T* __restrict__ X, int64_t n, int64_t d, int64_t ldx,
                           int64_t xr0, unsigned char* ab, const float* ct, const __nv_bfloat16* gs) {
  using XT = typename XType<T>::type;
  XT* xs = reinterpret_cast<XT*>(ab);
  for (int64_t j0 = 0; j0 < d; j0 += DC) {
    load_chunk<T, XT>(xs, X, n, d, ldx, xr0, j0);
    __syncthreads();
    if constexpr (Wmma<T>::ok) {
      acc_product_tc<TRANS>(out + j0, ldo, gs, reinterpret_cast<const __nv_bfloat16*>(xs));
    } else {
      acc_product_simt<TRANS>(out + j0, ldo, ct, reinterpret_cast<const float*>(xs));
    }
    __syncthreads();  // xs (aliasing As/Bs) is rewritten next
  }
}

// dH: grid (row tiles, splits). ws_h: [splits][Bpad][dpad] fp32, zero-initialised.
template <typename T>
__global__ void __launch_bounds__(NT) sce_fused_bwd_dh_kernel(
    const T* __restrict__ H, const T* __restrict__ W, const int64_t* __restrict__ y, int64_t ys,
    const double* __restrict__ lse, int64_t ls, const double* __restrict__ q, int64_t qs,
    const double* __restrict__ scale, int64_t ss, int64_t B, int64_t K,
    int64_t d, int64_t ldh, int64_t ldw, GradArgs ga, int64_t tiles_per_split, int64_t Bpad, int64_t dpad,
    float* __restrict__ ws_h) {
  __shared__ __align__(128) unsigned char ab[BwdSmem<T>::kABX];
  __shared__ __align__(128) float ct[BM * LDC];
  __shared__ __align__(128) unsigned char gsb[BwdSmem<T>::kG];
  __shared__ RowMeta rm;
  __nv_bfloat16* gs = reinterpret_cast<__nv_bfloat16*>(gsb);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n_tiles = (K + BN - 1) / BN;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * tiles_per_split;
  const int64_t t1 = t0 + tiles_per_split < n_tiles ? t0 + tiles_per_split : n_tiles;
  load_meta(rm, y, ys, lse, ls, q, qs, scale, ss, B, r0, ga);
  __syncthreads();
  int any = 0;
  for (int r = 0; r < BM; ++r) any |= rm.on[r];
  if (!any) return;  // uniform over the block: every row ignored -> its workspace stays 0
  float* out = ws_h + (static_cast<int64_t>(blockIdx.y) * Bpad + r0) * dpad;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t c0 = t * BN;
    grad_tile<T>(H, W, B, K, d, ldh, ldw, r0, c0, ab, ct, gs, rm, ga);
    accumulate<T, false>(out, dpad, W, K, d, ldw, c0, ab, ct, gs);  // += g (rows x classes) . W[c0..]
  }
}

// dW: grid (class tiles). ws_w: [Kpad][dpad] fp32, zero-initialised.
template <typename T>
__global__ void __launch_bounds__(NT) sce_fused_bwd_dw_kernel(
    const T* __restrict__ H, const T* __restrict__ W, const int64_t* __restrict__ y, int64_t ys,
    const double* __restrict__ lse, int64_t ls, const double* __restrict__ q, int64_t qs,
    const double* __restrict__ scale, int64_t ss, int64_t B, int64_t K,
    int64_t d, int64_t ldh, int64_t ldw, GradArgs ga, int64_t dpad, float* __restrict__ ws_w) {
  __shared__ __align__(128) unsigned char ab[BwdSmem<T>::kABX];
  __shared__ __align__(128) float ct[BM * LDC];
  __shared__ __align__(128) unsigned char gsb[BwdSmem<T>::kG];
  __shared__ RowMeta rm;
  __nv_bfloat16* gs = reinterpret_cast<__nv_bfloat16*>(gsb);
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * BN;
  float* out = ws_w + c0 * dpad;
  for (int64_t r0 = 0; r0 < B; r0 += BM) {
    load_meta(rm, y, ys, lse, ls, q, qs, scale, ss, B, r0, ga);
    __syncthreads();
    int any = 0;
    for (int r = 0; r < BM; ++r) any |= rm.on[r];
    if (any) {  // uniform over the block
      grad_tile<T>(H, W, B, K, d, ldh, ldw, r0, c0, ab, ct, gs, rm, ga);
      accumulate<T, true>(out, dpad, H, B, d, ldh, r0, ab, ct, gs);  // += g^T (classes x rows) . H[r0..]
    }
    __syncthreads();  // rm is rewritten next
  }
}

// out[i, j] (T, contiguous rows, ld d) = sum over s < splits of ws[s][i][j] (in order).
template <typename T>
__global__ void sce_fused_bwd_finalize_kernel(const float* __restrict__ ws, int64_t splits, int64_t plane,
                                              int64_t n, int64_t d, int64_t dpad, T* __restrict__ out, int64_t ldo) {
  const int64_t total = n * d;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d, j = e - i * d;
    float v = 0.f;
    for (int64_t s = 0; s < splits; ++s) v += ws[s * plane + i * dpad + j];
    store_f(out, i * ldo + j, v);
  }
}

unsigned grid_for(int64_t n) {
  int64_t b = (n + 255) / 256;
  if (b > 65535LL * 32) b = 65535LL * 32;
  return static_cast<unsigned>(b < 1 ? 1 : b);
}

template <typename T>
void launch_bwd(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& lse,
                const TensorView& q, const TensorView& scale, const TensorView& dH, const TensorView& dW, const TensorView& ws_h,
                const TensorView& ws_w, int64_t num_classes, double tau, int margin_type, double margin,
                double label_smoothing, int64_t ignore_index, cudaStream_t st) {
  const int64_t B = Hn.size(0), d = Hn.size(1), K = Wn.size(0);
  const bool need_h = dH.numel() > 0, need_w = dW.numel() > 0;
  const auto g = loss_math::make_margin(margin_type, margin);
  GradArgs ga;
  ga.inv_tau = static_cast<float>(1.0 / tau);
  ga.uni = static_cast<float>(label_smoothing / static_cast<double>(num_classes));
  ga.eps_minus_uni = static_cast<float>(label_smoothing - label_smoothing / static_cast<double>(num_classes));
  ga.tau = tau;
  ga.mg = MarginF{g.type, float(g.m), float(g.cos_m), float(g.sin_m), float(g.th), float(g.mm)};
  ga.ignore_index = ignore_index;
  const int64_t row_tiles = (B + BM - 1) / BM, n_tiles = (K + BN - 1) / BN;
  const int64_t Bpad = row_tiles * BM, Kpad = n_tiles * BN, dpad = (d + DC - 1) / DC * DC;
  if (row_tiles > 2147483647LL || n_tiles > 2147483647LL) fail("sce_fused_backward: too many rows or classes");
  const int64_t* yp = y.data<int64_t>();
  const double* lp = lse.data<double>();
  const double* qp = q.data<double>();
  const double* sp = scale.data<double>();
  if (need_h) {
    // splits: chosen by the caller (ws_h's first dimension); the class tiles are dealt
    // out in contiguous runs of `per`, so at most ceil(n_tiles / per) planes are used.
    int64_t splits = ws_h.size(0);
    const int64_t per = (n_tiles + splits - 1) / splits;
    splits = (n_tiles + per - 1) / per;
    const int64_t plane = Bpad * dpad;
    float* ws = ws_h.data<float>();
    check_cuda(cudaMemsetAsync(ws, 0, sizeof(float) * splits * plane, st), "cudaMemsetAsync(dH workspace)");
    dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(splits));
    sce_fused_bwd_dh_kernel<T><<<grid, NT, 0, st>>>(Hn.data<T>(), Wn.data<T>(), yp, y.stride(0), lp, lse.stride(0),
                                                    qp, q.stride(0), sp, scale.stride(0), B, K, d, Hn.stride(0), Wn.stride(0), ga,
                                                    per, Bpad, dpad, ws);
    check_launch("sce_fused_backward(dH)");
    sce_fused_bwd_finalize_kernel<T><<<grid_for(B * d), 256, 0, st>>>(ws, splits, plane, B, d, dpad, dH.data<T>(),
                                                                     dH.stride(0));
    check_launch("sce_fused_backward(dH finalize)");
  }
  if (need_w) {
    const int64_t plane = Kpad * dpad;
    float* ws = ws_w.data<float>();
    check_cuda(cudaMemsetAsync(ws, 0, sizeof(float) * plane, st), "cudaMemsetAsync(dW workspace)");
    sce_fused_bwd_dw_kernel<T><<<static_cast<unsigned>(n_tiles), NT, 0, st>>>(
        Hn.data<T>(), Wn.data<T>(), yp, y.stride(0), lp, lse.stride(0), qp, q.stride(0), sp, scale.stride(0), B, K, d,
        Hn.stride(0),
        Wn.stride(0), ga, dpad, ws);
    check_launch("sce_fused_backward(dW)");
    sce_fused_bwd_finalize_kernel<T><<<grid_for(K * d), 256, 0, st>>>(ws, 1, plane, K, d, dpad, dW.data<T>(),
                                                                     dW.stride(0));
    check_launch("sce_fused_backward(dW finalize)");
  }
}

}  // namespace

void sce_fused_backward(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& lse,
                        const TensorView& q, const TensorView& scale, const TensorView& dH, const TensorView& dW, const TensorView& ws_h,
                        const TensorView& ws_w, int64_t num_classes,
                        double tau, int margin_type, double margin, double label_smoothing, int64_t ignore_index,
                        std::uintptr_t stream) {
  check_dim(Hn, 2, "Hn");
  check_dim(Wn, 2, "Wn");
  const int64_t B = Hn.size(0), d = Hn.size(1), K = Wn.size(0);
  if (Wn.size(1) != d) fail("Wn: expected as many columns as Hn");
  check_dtype(Wn, Hn.dtype, "Wn");
  check_shape(y, {B}, "y");
  check_dtype(y, DType::I64, "y");
  check_shape(lse, {B}, "lse");
  check_dtype(lse, DType::F64, "lse");
  check_shape(q, {B}, "q");
  check_dtype(q, DType::F64, "q");
  check_shape(scale, {B}, "scale");
  check_dtype(scale, DType::F64, "scale");
  if (d > 1 && (Hn.stride(1) != 1 || Wn.stride(1) != 1)) fail("Hn/Wn: rows must be contiguous");
  if (dH.numel() > 0) {
    check_shape(dH, {B, d}, "dH");
    check_dtype(dH, Hn.dtype, "dH");
    if (d > 1 && dH.stride(1) != 1) fail("dH: rows must be contiguous");
  }
  if (dW.numel() > 0) {
    check_shape(dW, {K, d}, "dW");
    check_dtype(dW, Hn.dtype, "dW");
    if (d > 1 && dW.stride(1) != 1) fail("dW: rows must be contiguous");
  }
  if (!(tau > 0)) fail("tau: must be > 0");
  if (num_classes < 1) fail("num_classes: must be >= 1");
  const int64_t Bpad = (B + BM - 1) / BM * BM, Kpad = (K + BN - 1) / BN * BN, dpad = (d + DC - 1) / DC * DC;
  if (dH.numel() > 0) {
    check_dim(ws_h, 3, "ws_h");
    check_dtype(ws_h, DType::F32, "ws_h");
    if (ws_h.size(0) < 1 || ws_h.size(0) > 65535 || ws_h.size(1) != Bpad || ws_h.size(2) != dpad)
      fail("ws_h: expected shape (splits, Bpad, dpad) with 1 <= splits <= 65535, Bpad = B rounded up to 64, "
           "dpad = d rounded up to 64");
    if (!ws_h.is_contiguous()) fail("ws_h: must be contiguous");
  }
  if (dW.numel() > 0) {
    check_shape(ws_w, {Kpad, dpad}, "ws_w");
    check_dtype(ws_w, DType::F32, "ws_w");
    if (!ws_w.is_contiguous()) fail("ws_w: must be contiguous");
  }
  if (B == 0 || K == 0 || d == 0 || (dH.numel() == 0 && dW.numel() == 0)) return;
  DeviceGuard g(Hn.device);
  const cudaStream_t st = as_stream(stream);
  switch (Hn.dtype) {
    case DType::F32:
      launch_bwd<float>(Hn, Wn, y, lse, q, scale, dH, dW, ws_h, ws_w, num_classes, tau, margin_type, margin,
                        label_smoothing, ignore_index, st);
      break;
    case DType::BF16:
      launch_bwd<bf16_t>(Hn, Wn, y, lse, q, scale, dH, dW, ws_h, ws_w, num_classes, tau, margin_type, margin,
                         label_smoothing, ignore_index, st);
      break;
    case DType::F16:
      launch_bwd<f16_t>(Hn, Wn, y, lse, q, scale, dH, dW, ws_h, ws_w, num_classes, tau, margin_type, margin,
                        label_smoothing, ignore_index, st);
      break;
    default: fail("Hn: the fused CUDA backward supports float32/bfloat16/float16");
  }
}

}  // namespace cuda
}  // namespace gnc
