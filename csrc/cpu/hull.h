// [hull] one-vs-rest / one-vs-one geometry: native pieces (CPU, C++17 + OpenMP).
// The CUDA twins in cuda/hull.h have the same names and contracts.
//
// 1. hull_topm_update: the top-m epilogue of the similarity-reduce engine. Folds one
//    similarity tile S (R x c, rows = classes row_ids[r], columns = classes col0 + j)
//    into per-row running top-m lists (vals/idx, R x m, a min-heap per row), skipping
//    the self pair (col == row id). Used for hull candidates and one-vs-one neighbours.
// 2. hull_price_update: the pricing / certificate epilogue. Tile S[r, j] = <u_r, w_j>
//    for unit residual directions u. Keeps, per row, the max/argmax over j != row id
//    (equivalently the min/argmin of the certificate margin <w_k - w_j, u_k>), and the
//    top-q columns whose value exceeds thresh[r] (the violators).
// 3. hull_solve: a batch of exact min-norm-point problems (Wolfe's algorithm with an
//    incremental Cholesky factorisation of the corral matrix [y_i.y_j + 1], fp64).
#pragma once
#include <cstdint>

#include "common/tensor_view.h"

namespace gnc {
namespace cpu {

// tile: (R, c) f32/f64, row-contiguous. row_ids: (R,) int64. vals: (R, m) same dtype as
// tile, initialised to -inf; idx: (R, m) int64, initialised to -1. Unsorted heaps.
void hull_topm_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                      const TensorView& vals, const TensorView& idx);

// tile: (R, c) f64. thresh: (R,) f64. best_val (R,) f64 (init -inf), best_idx (R,) int64
// (init -1), viol_val (R, q) f64 (init -inf), viol_idx (R, q) int64 (init -1).
void hull_price_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                       const TensorView& thresh, const TensorView& best_val,
                       const TensorView& best_idx, const TensorView& viol_val,
                       const TensorView& viol_idx);

// W: (K, d) float (any float dtype, rows contiguous). classes: (B,) int64. cand: (B, n)
// int64, -1 padded, entries in [0, K) and != the class (others are skipped).
// gram (B, n, n) f64: gram[b, i, j] = <w_ci - w_k, w_cj - w_k> for c = cand[b] (entries
// at padding positions are ignored), formed by the caller with a batched GEMM; on CPU it
// may be empty (numel 0), and each class forms its Gram matrix natively.
// init_sup (B, s0) int64 / init_wt (B, s0) f64: optional warm start (numel 0: none), a
// previous corral whose points are among the candidates; ignored if not usable.
// Outputs (all caller-allocated): proj (B, d) f64 = p_k; dist (B,) f64 = ||w_k - p_k||;
// support (B, s) int64 (-1 padded), weights (B, s) f64; iters (B,) int64;
// status (B,) int64: 0 converged, 1 iteration cap, 2 stopped on numerical degeneracy.
// gap_tol: stop when (||x||^2 - min_j <x, y_j>) <= max(gap_tol * ||x||, floor), i.e.
// the certified gap restricted to the candidates is <= gap_tol (up to fp64 rounding).
void hull_solve(const TensorView& W, const TensorView& classes, const TensorView& cand,
                const TensorView& gram, const TensorView& init_sup, const TensorView& init_wt, double gap_tol, int64_t max_iter, const TensorView& proj, const TensorView& dist,
                const TensorView& support, const TensorView& weights, const TensorView& iters,
                const TensorView& status);

}  // namespace cpu
}  // namespace gnc
