// The one place the native API is declared. Every function takes TensorView objects
// built by gnc_ext/_native.py plus plain scalars, dispatches on the device to cpu::
// or cuda::, and releases the GIL while it runs. Errors are C++ exceptions that
// pybind11 turns into Python exceptions (std::invalid_argument -> ValueError).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/tensor_view.h"
#include "cpu/ops.h"
#ifdef GNC_WITH_CUDA
#include "cuda/ops.h"
#endif
// [loss] headers
#include "cpu/loss.h"
#include "cpu/loss_stored.h"
#include "cpu/loss_stored_checks.h"
#ifdef GNC_WITH_CUDA
#include "cuda/loss.h"
#include "cuda/loss_stored.h"
#endif
// end [loss]
// [metrics] headers
#include "cpu/metrics.h"
#ifdef GNC_WITH_CUDA
#include "cuda/metrics.h"
#endif
// end [metrics] headers

namespace py = pybind11;
using gnc::TensorView;

namespace {

#ifdef GNC_WITH_CUDA
constexpr bool kWithCuda = true;
#else
constexpr bool kWithCuda = false;
#endif

// Runs the CPU or CUDA implementation depending on where `t` lives.
#ifdef GNC_WITH_CUDA
#define GNC_DISPATCH_DEVICE(t, cpu_call, cuda_call) \
  do {                                              \
    if ((t).is_cuda()) {                            \
      cuda_call;                                    \
    } else {                                        \
      cpu_call;                                     \
    }                                               \
  } while (0)
#else
#define GNC_DISPATCH_DEVICE(t, cpu_call, cuda_call)                                        \
  do {                                                                                     \
    if ((t).is_cuda())                                                                     \
      throw std::runtime_error("gnc_ext was built without CUDA kernels; reinstall with " \
                               "nvcc available (GNC_CUDA=on) to use CUDA tensors");        \
    cpu_call;                                                                              \
  } while (0)
#endif

void normalize_rows_forward(const TensorView& x, const TensorView& y, const TensorView& norm,
                            double eps, std::uintptr_t stream) {
  gnc::check_dim(x, 2, "x");
  gnc::check_shape(y, {x.size(0), x.size(1)}, "y");
  gnc::check_shape(norm, {x.size(0)}, "norm");
  gnc::check_dtype(y, x.dtype, "y");
  gnc::check_dtype(norm, x.dtype == gnc::DType::F64 ? gnc::DType::F64 : gnc::DType::F32, "norm");
  gnc::check_contiguous_1d(norm, "norm");
  gnc::check_same_device(x, y, "x", "y");
  gnc::check_same_device(x, norm, "x", "norm");
  gnc::check_no_overlap(y, x, "y", "x");
  gnc::check_no_overlap(norm, x, "norm", "x");
  gnc::check_no_overlap(norm, y, "norm", "y");
  if (!(eps >= 0)) gnc::fail("eps: must be >= 0");
  GNC_DISPATCH_DEVICE(x, gnc::cpu::normalize_rows_forward(x, y, norm, eps),
                      gnc::cuda::normalize_rows_forward(x, y, norm, eps, stream));
}

void normalize_rows_backward(const TensorView& x, const TensorView& norm, const TensorView& dy,
                             const TensorView& dx, double eps, std::uintptr_t stream) {
  gnc::check_dim(x, 2, "x");
  gnc::check_shape(dy, {x.size(0), x.size(1)}, "grad");
  gnc::check_shape(dx, {x.size(0), x.size(1)}, "grad_input");
  gnc::check_shape(norm, {x.size(0)}, "norm");
  gnc::check_dtype(dy, x.dtype, "grad");
  gnc::check_dtype(dx, x.dtype, "grad_input");
  gnc::check_dtype(norm, x.dtype == gnc::DType::F64 ? gnc::DType::F64 : gnc::DType::F32, "norm");
  gnc::check_contiguous_1d(norm, "norm");
  gnc::check_same_device(x, dy, "x", "grad");
  gnc::check_same_device(x, dx, "x", "grad_input");
  gnc::check_same_device(x, norm, "x", "norm");
  // grad_input may be grad itself (in place: each element is read before it is written,
  // by the same thread); any other sharing of memory with an input is refused.
  if (!gnc::same_view(dx, dy)) gnc::check_no_overlap(dx, dy, "grad_input", "grad (unless it is grad itself)");
  gnc::check_no_overlap(dx, x, "grad_input", "x");
  gnc::check_no_overlap(dx, norm, "grad_input", "norm");
  if (!(eps >= 0)) gnc::fail("eps: must be >= 0");
  GNC_DISPATCH_DEVICE(x, gnc::cpu::normalize_rows_backward(x, norm, dy, dx, eps),
                      gnc::cuda::normalize_rows_backward(x, norm, dy, dx, eps, stream));
}

// ---- [hull] bindings (one-vs-rest / one-vs-one) ----------------------------
}  // namespace
#include "cpu/hull.h"
#ifdef GNC_WITH_CUDA
#include "cuda/hull.h"
#endif
namespace {

void hull_topm_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                      const TensorView& vals, const TensorView& idx, std::uintptr_t stream) {
  gnc::check_dim(tile, 2, "tile");
  const int64_t R = tile.size(0);
  gnc::check_shape(row_ids, {R}, "row_ids");
  gnc::check_dtype(row_ids, gnc::DType::I64, "row_ids");
  gnc::check_dim(vals, 2, "vals");
  if (vals.size(0) != R || vals.size(1) < 1) gnc::fail("vals: expected shape (R, m) with m >= 1");
  gnc::check_shape(idx, {R, vals.size(1)}, "idx");
  gnc::check_dtype(vals, tile.dtype, "vals");
  gnc::check_dtype(idx, gnc::DType::I64, "idx");
  gnc::check_row_contiguous(tile, "tile");
  gnc::check_row_contiguous(vals, "vals");
  gnc::check_row_contiguous(idx, "idx");
  gnc::check_same_device(tile, vals, "tile", "vals");
  gnc::check_same_device(tile, idx, "tile", "idx");
  gnc::check_same_device(tile, row_ids, "tile", "row_ids");
  if (col0 < 0) gnc::fail("col0: must be >= 0");
  GNC_DISPATCH_DEVICE(tile, gnc::cpu::hull_topm_update(tile, row_ids, col0, vals, idx),
                      gnc::cuda::hull_topm_update(tile, row_ids, col0, vals, idx, stream));
}

void hull_price_update(const TensorView& tile, const TensorView& row_ids, int64_t col0,
                       const TensorView& thresh, const TensorView& best_val,
                       const TensorView& best_idx, const TensorView& viol_val,
                       const TensorView& viol_idx, std::uintptr_t stream) {
  gnc::check_dim(tile, 2, "tile");
  const int64_t R = tile.size(0);
  gnc::check_dtype(tile, gnc::DType::F64, "tile");
  gnc::check_row_contiguous(tile, "tile");
  gnc::check_shape(row_ids, {R}, "row_ids");
  gnc::check_dtype(row_ids, gnc::DType::I64, "row_ids");
  gnc::check_shape(thresh, {R}, "thresh");
  gnc::check_dtype(thresh, gnc::DType::F64, "thresh");
  gnc::check_shape(best_val, {R}, "best_val");
  gnc::check_dtype(best_val, gnc::DType::F64, "best_val");
  gnc::check_shape(best_idx, {R}, "best_idx");
  gnc::check_dtype(best_idx, gnc::DType::I64, "best_idx");
  gnc::check_dim(viol_val, 2, "viol_val");
  if (viol_val.size(0) != R || viol_val.size(1) < 1) gnc::fail("viol_val: expected shape (R, q) with q >= 1");
  gnc::check_shape(viol_idx, {R, viol_val.size(1)}, "viol_idx");
  gnc::check_dtype(viol_val, gnc::DType::F64, "viol_val");
  gnc::check_dtype(viol_idx, gnc::DType::I64, "viol_idx");
  gnc::check_row_contiguous(viol_val, "viol_val");
  gnc::check_row_contiguous(viol_idx, "viol_idx");
  for (const TensorView* t : {&row_ids, &thresh, &best_val, &best_idx, &viol_val, &viol_idx})
    gnc::check_same_device(tile, *t, "tile", "hull_price_update buffers");
  if (col0 < 0) gnc::fail("col0: must be >= 0");
  GNC_DISPATCH_DEVICE(tile,
                      gnc::cpu::hull_price_update(tile, row_ids, col0, thresh, best_val, best_idx, viol_val, viol_idx),
                      gnc::cuda::hull_price_update(tile, row_ids, col0, thresh, best_val, best_idx, viol_val,
                                                   viol_idx, stream));
}

void hull_solve(const TensorView& W, const TensorView& classes, const TensorView& cand,
                const TensorView& gram, const TensorView& init_sup, const TensorView& init_wt, double gap_tol,
                int64_t max_iter, const TensorView& proj, const TensorView& dist, const TensorView& support,
                const TensorView& weights, const TensorView& iters, const TensorView& status,
                const TensorView& workspace, std::uintptr_t stream) {
  gnc::check_dim(W, 2, "W");
  gnc::check_row_contiguous(W, "W");
  const int64_t K = W.size(0), d = W.size(1), B = classes.size(0);
  gnc::check_dim(classes, 1, "classes");
  gnc::check_dtype(classes, gnc::DType::I64, "classes");
  gnc::check_dim(cand, 2, "cand");
  gnc::check_dtype(cand, gnc::DType::I64, "cand");
  if (cand.size(0) != B) gnc::fail("cand: expected one row per class");
  gnc::check_row_contiguous(cand, "cand");
  if (gram.numel() > 0 || W.is_cuda()) {  // optional on CPU (formed natively when empty)
    gnc::check_shape(gram, {B, cand.size(1), cand.size(1)}, "gram");
    gnc::check_dtype(gram, gnc::DType::F64, "gram");
    if (!gram.is_contiguous()) gnc::fail("gram: must be contiguous");
    gnc::check_same_device(W, gram, "W", "gram");
  }
  gnc::check_shape(proj, {B, d}, "proj");
  gnc::check_dtype(proj, gnc::DType::F64, "proj");
  gnc::check_distinct_rows(proj, "proj");
  gnc::check_shape(dist, {B}, "dist");
  gnc::check_dtype(dist, gnc::DType::F64, "dist");
  gnc::check_contiguous_1d(dist, "dist");
  gnc::check_dim(support, 2, "support");
  if (support.size(0) != B || support.size(1) < 1) gnc::fail("support: expected shape (B, s), s >= 1");
  gnc::check_dtype(support, gnc::DType::I64, "support");
  gnc::check_shape(weights, {B, support.size(1)}, "weights");
  gnc::check_dtype(weights, gnc::DType::F64, "weights");
  // outputs: rows written in parallel (each row's own stride is used), 1-D outputs indexed
  // densely
  gnc::check_distinct_rows(support, "support");
  gnc::check_distinct_rows(weights, "weights");
  gnc::check_shape(iters, {B}, "iters");
  gnc::check_dtype(iters, gnc::DType::I64, "iters");
  gnc::check_contiguous_1d(iters, "iters");
  gnc::check_shape(status, {B}, "status");
  gnc::check_dtype(status, gnc::DType::I64, "status");
  gnc::check_contiguous_1d(status, "status");
  {
    struct Named {
      const TensorView* t;
      const char* name;
    };
    const Named outs[] = {{&proj, "proj"}, {&dist, "dist"}, {&support, "support"},
                          {&weights, "weights"}, {&iters, "iters"}, {&status, "status"}};
    for (size_t a = 0; a < 6; ++a) {
      for (size_t b = a + 1; b < 6; ++b) gnc::check_no_overlap(*outs[a].t, *outs[b].t, outs[a].name, outs[b].name);
      for (const Named& in : {Named{&W, "W"}, Named{&classes, "classes"}, Named{&cand, "cand"},
                              Named{&gram, "gram"}, Named{&init_sup, "init_support"},
                              Named{&init_wt, "init_weights"}, Named{&workspace, "workspace"}})
        gnc::check_no_overlap(*outs[a].t, *in.t, outs[a].name, in.name);
    }
  }
  for (const TensorView* t : {&classes, &cand, &proj, &dist, &support, &weights, &iters, &status})
    gnc::check_same_device(W, *t, "W", "hull_solve buffers");
  if (init_sup.numel() > 0) {
    gnc::check_dim(init_sup, 2, "init_support");
    if (init_sup.size(0) != B) gnc::fail("init_support: expected one row per class");
    gnc::check_dtype(init_sup, gnc::DType::I64, "init_support");
    gnc::check_shape(init_wt, {B, init_sup.size(1)}, "init_weights");
    gnc::check_dtype(init_wt, gnc::DType::F64, "init_weights");
    gnc::check_row_contiguous(init_sup, "init_support");
    gnc::check_row_contiguous(init_wt, "init_weights");
    gnc::check_same_device(W, init_sup, "W", "init_support");
    gnc::check_same_device(W, init_wt, "W", "init_weights");
  }
  if (!(gap_tol >= 0)) gnc::fail("tol: must be >= 0");
  if (max_iter < 1) gnc::fail("max_iter: must be >= 1");
  (void)K;
  GNC_DISPATCH_DEVICE(W,
                      gnc::cpu::hull_solve(W, classes, cand, gram, init_sup, init_wt, gap_tol, max_iter, proj, dist, support, weights, iters,
                                           status),
                      gnc::cuda::hull_solve(W, classes, cand, gram, init_sup, init_wt, gap_tol, max_iter, proj, dist, support, weights,
                                            iters, status, workspace, stream));
}
// ---- end [hull] -------------------------------------------------------------

// ---- [loss] bindings (spherical CE, HardMax) ---------------------------------
void check_loss_devices(const TensorView& first, std::initializer_list<std::pair<const TensorView*, const char*>> others,
                        const char* first_name = "tile") {
  for (auto& o : others) gnc::check_same_device(first, *o.first, first_name, o.second);
}

void check_epilogue_options(int margin_type, double interclass_threshold) {
  if (margin_type < 0 || margin_type > 3) gnc::fail("margin_type: expected 0, 1, 2 or 3");
  if (!(interclass_threshold >= -1.0 && interclass_threshold <= 1.0))
    gnc::fail("interclass_threshold: expected a value in [-1, 1] (0 = off)");
}

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream,
              double interclass_threshold) {
  check_loss_devices(tile, {{&y, "y"}, {&state, "state"}});
  check_epilogue_options(margin_type, interclass_threshold);
  GNC_DISPATCH_DEVICE(tile,
                      gnc::cpu::sce_fold(tile, y, col0, state, tau, margin_type, margin, ignore_index,
                                         interclass_threshold),
                      gnc::cuda::sce_fold(tile, y, col0, state, tau, margin_type, margin, ignore_index, stream,
                                          interclass_threshold));
}

void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& q, const TensorView& scale, double tau, int margin_type,
              double margin, double label_smoothing, int64_t ignore_index, std::uintptr_t stream,
              double interclass_threshold) {
  check_loss_devices(tile, {{&y, "y"}, {&lse, "lse"}, {&q, "q"}, {&scale, "scale"}});
  check_epilogue_options(margin_type, interclass_threshold);
  GNC_DISPATCH_DEVICE(tile,
                      gnc::cpu::sce_grad(tile, y, col0, num_classes, lse, q, scale, tau, margin_type, margin,
                                         label_smoothing, ignore_index, interclass_threshold),
                      gnc::cuda::sce_grad(tile, y, col0, num_classes, lse, q, scale, tau, margin_type, margin,
                                          label_smoothing, ignore_index, stream, interclass_threshold));
}

void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& best,
                        const TensorView& arg, const TensorView& tgt, std::uintptr_t stream) {
  check_loss_devices(tile, {{&y, "y"}, {&best, "best"}, {&arg, "arg"}, {&tgt, "tgt"}});
  GNC_DISPATCH_DEVICE(tile, gnc::cpu::masked_argmax_fold(tile, y, col0, best, arg, tgt),
                      gnc::cuda::masked_argmax_fold(tile, y, col0, best, arg, tgt, stream));
}
// stored-exponent strategy (cpu/loss_stored.h)
void sce_stored_exp(const TensorView& tile, const TensorView& inv_n, const TensorView& y, int64_t col0,
                    const TensorView& shift, const TensorView& E, const TensorView& state, double tau,
                    int64_t ignore_index, const TensorView& workspace, std::uintptr_t stream) {
  // workspace: CUDA only (float64, sce_stored_exp_workspace_doubles(rows, cols) values on the
  // tile's device); the CPU epilogue needs none and ignores it (pass an empty tensor).
  GNC_DISPATCH_DEVICE(tile, gnc::cpu::sce_stored_exp(tile, inv_n, y, col0, shift, E, state, tau, ignore_index),
                      gnc::cuda::sce_stored_exp(tile, inv_n, y, col0, shift, E, state, tau, ignore_index, workspace,
                                                stream));
}
void sce_stored_dw(const TensorView& X, const TensorView& W, const TensorView& inv_n, const TensorView& v,
                   const TensorView& dW, double eps, bool project, std::uintptr_t stream) {
  GNC_DISPATCH_DEVICE(X, gnc::cpu::sce_stored_dw(X, W, inv_n, v, dW, eps, project),
                      gnc::cuda::sce_stored_dw(X, W, inv_n, v, dW, eps, project, stream));
}
// ---- end [loss] -------------------------------------------------------------

// ---- [metrics] bindings (GNC accumulators, NCC) ------------------------------
void metrics_update_batch(const TensorView& features, const TensorView& labels,
                          const TensorView& shift, const TensorView& dsum, const TensorView& sqsum,
                          const TensorView& counts, const TensorView& Z, const TensorView& first,
                          bool normalize, double eps, std::uintptr_t stream) {
  gnc::check_dim(features, 2, "features");
  const int64_t B = features.size(0), d = features.size(1);
  gnc::check_dim(shift, 2, "shift");
  const int64_t K = shift.size(0);
  gnc::check_shape(labels, {B}, "labels");
  gnc::check_dtype(labels, gnc::DType::I64, "labels");
  gnc::check_shape(shift, {K, d}, "shift");
  gnc::check_shape(dsum, {K, d}, "dsum");
  gnc::check_shape(sqsum, {K}, "sqsum");
  gnc::check_shape(counts, {K}, "counts");
  gnc::check_shape(Z, {B, d}, "Z");
  gnc::check_shape(first, {K}, "first");
  gnc::check_dtype(shift, gnc::DType::F32, "shift");
  gnc::check_dtype(dsum, gnc::DType::F64, "dsum");
  gnc::check_dtype(sqsum, gnc::DType::F64, "sqsum");
  gnc::check_dtype(counts, gnc::DType::I64, "counts");
  gnc::check_dtype(Z, gnc::DType::F64, "Z");
  gnc::check_dtype(first, gnc::DType::I64, "first");
  if (!Z.is_contiguous()) gnc::fail("Z: must be contiguous");
  gnc::check_row_contiguous(shift, "shift");
  gnc::check_row_contiguous(dsum, "dsum");
  if (K > 0 && (sqsum.stride(0) != 1 || counts.stride(0) != 1 || first.stride(0) != 1))
    gnc::fail("sqsum/counts/first: must be contiguous");
  for (auto* t : {&labels, &shift, &dsum, &sqsum, &counts, &Z, &first})
    gnc::check_same_device(features, *t, "features", "state");
  for (auto* t : {&features, &labels, &shift, &dsum, &sqsum, &counts, &Z, &first})
    gnc::check_ptr(*t, "metrics_update_batch");
  if (!(eps >= 0)) gnc::fail("eps: must be >= 0");
  GNC_DISPATCH_DEVICE(features,
                      gnc::cpu::metrics_update_batch(features, labels, shift, dsum, sqsum, counts, Z,
                                                     normalize, eps),
                      gnc::cuda::metrics_update_batch(features, labels, shift, dsum, sqsum, counts, Z,
                                                      first, normalize, eps, stream));
}

void ncc_argmax_update(const TensorView& tile, const TensorView& bias, int64_t col0,
                       const TensorView& best_val, const TensorView& best_idx, std::uintptr_t stream) {
  gnc::check_dim(tile, 2, "tile");
  gnc::check_dim(bias, 1, "bias");
  const int64_t B = tile.size(0), c = tile.size(1);
  gnc::check_shape(best_val, {B}, "best_val");
  gnc::check_shape(best_idx, {B}, "best_idx");
  gnc::check_dtype(bias, tile.dtype, "bias");
  gnc::check_dtype(best_val, tile.dtype, "best_val");
  gnc::check_dtype(best_idx, gnc::DType::I64, "best_idx");
  if (c > 1 && tile.stride(1) != 1) gnc::fail("tile: rows must be contiguous");
  if (col0 < 0 || col0 + c > bias.size(0))
    gnc::fail("col0: tile columns [" + std::to_string(col0) + ", " + std::to_string(col0 + c) +
              ") exceed bias length " + std::to_string(bias.size(0)));
  gnc::check_same_device(tile, bias, "tile", "bias");
  gnc::check_same_device(tile, best_val, "tile", "best_val");
  gnc::check_same_device(tile, best_idx, "tile", "best_idx");
  GNC_DISPATCH_DEVICE(tile, gnc::cpu::ncc_argmax_update(tile, bias, col0, best_val, best_idx),
                      gnc::cuda::ncc_argmax_update(tile, bias, col0, best_val, best_idx, stream));
}
// Pairwise-statistics epilogue of nc_metrics (see cpu/metrics.h). CPU only: on CUDA
// gnc_ext.ops.metrics reduces the tiles with torch.
void pair_stats_fold(const TensorView& C, const TensorView& Xi, const TensorView& Xj, const TensorView& ri,
                     const TensorView& rj, const TensorView& si, const TensorView& sj, bool diag, int64_t kernel,
                     double riesz_s, double cdnv_p, double close_cos, double kshift, const TensorView& rowmax,
                     const TensorView& colmax, const TensorView& acc) {
  gnc::check_dim(C, 2, "C");
  gnc::check_dim(Xi, 2, "Xi");
  const int64_t bi = C.size(0), bj = C.size(1), d = Xi.size(1);
  gnc::check_shape(Xi, {bi, d}, "Xi");
  gnc::check_shape(Xj, {bj, d}, "Xj");
  gnc::check_shape(rowmax, {bi}, "rowmax");
  gnc::check_shape(colmax, {bj}, "colmax");
  gnc::check_shape(acc, {4}, "acc");
  for (auto* t : {&C, &Xi, &Xj, &rowmax, &colmax, &acc}) gnc::check_dtype(*t, gnc::DType::F64, "C/Xi/Xj/rowmax/colmax/acc");
  if (diag && bi != bj) gnc::fail("C: a diagonal block must be square");
  if (ri.numel() > 0) {
    gnc::check_shape(ri, {bi}, "ri");
    gnc::check_shape(si, {bi}, "si");
    gnc::check_shape(rj, {bj}, "rj");
    gnc::check_shape(sj, {bj}, "sj");
    for (auto* t : {&ri, &rj, &si, &sj}) {
      gnc::check_dtype(*t, gnc::DType::F64, "ri/rj/si/sj");
      if (t->size(0) > 1 && t->stride(0) != 1) gnc::fail("ri/rj/si/sj: must be contiguous");
      gnc::check_same_device(C, *t, "C", "ri/rj/si/sj");
    }
  } else if (rj.numel() > 0 || si.numel() > 0 || sj.numel() > 0) {
    gnc::fail("ri/rj/si/sj: all four or none");
  }
  if (bi > 0 && bj > 1 && C.stride(1) != 1) gnc::fail("C: rows must be contiguous");
  gnc::check_row_contiguous(Xi, "Xi");
  gnc::check_row_contiguous(Xj, "Xj");
  for (auto* t : {&rowmax, &colmax, &acc})
    if (t->size(0) > 1 && t->stride(0) != 1) gnc::fail("rowmax/colmax/acc: must be contiguous");
  if (kernel < -1 || kernel > 2) gnc::fail("kernel: expected -1 (none), 0 (log), 1 (riesz) or 2 (distance)");
  if (!(cdnv_p > 0)) gnc::fail("cdnv_p: must be > 0");
  for (auto* t : {&Xi, &Xj, &rowmax, &colmax, &acc}) gnc::check_same_device(C, *t, "C", "Xi/Xj/state");
  GNC_DISPATCH_DEVICE(C,
                      gnc::cpu::pair_stats_fold(C, Xi, Xj, ri, rj, si, sj, diag, kernel, riesz_s, cdnv_p, close_cos,
                                                kshift, rowmax, colmax, acc),
                      throw std::invalid_argument("pair_stats_fold: CPU only (CUDA uses the torch tile path)"));
}

// Certified argmax fold: approximate fp32 tile + exact fp64 re-scoring (see
// cpu/metrics.h). Empty bias / y / checked (numel 0) mean "none"; they are never read,
// so they may live on any device. A and B need unit column stride (any row stride).
void certified_argmax_fold(const TensorView& tile, const TensorView& A, const TensorView& B,
                           const TensorView& bias, const TensorView& y, int64_t col0,
                           const TensorView& eps, const TensorView& approx_max,
                           const TensorView& best_val, const TensorView& best_idx,
                           const TensorView& checked, std::uintptr_t stream) {
  gnc::check_dim(tile, 2, "tile");
  gnc::check_dtype(tile, gnc::DType::F32, "tile");
  const int64_t R = tile.size(0), c = tile.size(1);
  if (c > 1 && R > 0 && tile.stride(1) != 1) gnc::fail("tile: rows must be contiguous (column stride 1)");
  gnc::check_dim(A, 2, "A");
  if (A.dtype != gnc::DType::F32 && A.dtype != gnc::DType::F64)
    gnc::fail(std::string("A: expected dtype float32 or float64, got ") + gnc::dtype_name(A.dtype));
  const int64_t d = A.size(1);
  gnc::check_shape(A, {R, d}, "A");
  gnc::check_row_contiguous(A, "A");
  gnc::check_dim(B, 2, "B");
  gnc::check_dtype(B, A.dtype, "B");
  const int64_t K = B.size(0);
  if (B.size(1) != d)
    gnc::fail("B: expected " + std::to_string(d) + " columns (A's d), got " + std::to_string(B.size(1)));
  gnc::check_row_contiguous(B, "B");
  if (bias.numel() > 0) {
    gnc::check_shape(bias, {K}, "bias");
    gnc::check_dtype(bias, A.dtype, "bias");
  }
  if (y.numel() > 0) {
    gnc::check_shape(y, {R}, "y");
    gnc::check_dtype(y, gnc::DType::I64, "y");
  }
  if (col0 < 0 || col0 > K || c > K - col0)
    gnc::fail("col0: tile columns [" + std::to_string(col0) + ", " + std::to_string(col0 + c) +
              ") exceed the class count K = " + std::to_string(K) + " (rows of B)");
  gnc::check_shape(eps, {R}, "eps");
  gnc::check_dtype(eps, gnc::DType::F64, "eps");
  gnc::check_shape(approx_max, {R}, "approx_max");
  gnc::check_dtype(approx_max, gnc::DType::F64, "approx_max");
  gnc::check_shape(best_val, {R}, "best_val");
  gnc::check_dtype(best_val, gnc::DType::F64, "best_val");
  gnc::check_shape(best_idx, {R}, "best_idx");
  gnc::check_dtype(best_idx, gnc::DType::I64, "best_idx");
  if (checked.numel() > 0) {
    gnc::check_shape(checked, {R}, "checked");
    gnc::check_dtype(checked, gnc::DType::I64, "checked");
  }
  struct Named {
    const TensorView* t;
    const char* name;
  };
  for (const Named& n : {Named{&A, "A"}, Named{&B, "B"}, Named{&bias, "bias"}, Named{&y, "y"},
                         Named{&eps, "eps"}, Named{&approx_max, "approx_max"}, Named{&best_val, "best_val"},
                         Named{&best_idx, "best_idx"}, Named{&checked, "checked"}}) {
    if (n.t->numel() == 0) continue;
    if (n.t->device != tile.device)
      gnc::fail(std::string(n.name) + ": must be on the same device as tile");
    gnc::check_ptr(*n.t, n.name);
  }
  gnc::check_ptr(tile, "tile");
  GNC_DISPATCH_DEVICE(tile,
                      gnc::cpu::certified_argmax_fold(tile, A, B, bias, y, col0, eps, approx_max, best_val,
                                                      best_idx, checked),
                      gnc::cuda::certified_argmax_fold(tile, A, B, bias, y, col0, eps, approx_max, best_val,
                                                       best_idx, checked, stream));
}
// ---- end [metrics] ----------------------------------------------------------

// ---- [solvers] bindings -----------------------------------------------------
// ---- end [solvers] ----------------------------------------------------------

py::dict build_info() {
  py::dict d;
#ifdef GNC_CXX_COMPILER
  d["compiler"] = std::string(GNC_CXX_COMPILER);
#endif
  d["cxx_standard"] = 17;
#ifdef GNC_WITH_OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["omp_threads"] = gnc::cpu::num_threads();
  d["cuda_compiled"] = kWithCuda;
#ifdef GNC_WITH_CUDA
  d["cuda_archs"] = std::string(GNC_CUDA_ARCHS);
  d["cuda_compiler_version"] = std::string(GNC_CUDA_COMPILER_VERSION);
  d["cuda_runtime"] = std::string("static");
  d["cuda_device_count"] = gnc::cuda::device_count();
#else
  d["cuda_archs"] = std::string("");
  d["cuda_device_count"] = 0;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gnc_ext native core (framework-neutral C++/CUDA kernels)";

  py::enum_<gnc::DType>(m, "DType")
      .value("float32", gnc::DType::F32)
      .value("float64", gnc::DType::F64)
      .value("float16", gnc::DType::F16)
      .value("bfloat16", gnc::DType::BF16)
      .value("int64", gnc::DType::I64)
      .value("int32", gnc::DType::I32)
      .value("uint8", gnc::DType::U8);

  py::class_<TensorView>(m, "TensorView")
      .def(py::init([](std::uintptr_t ptr, gnc::DType dtype, int device, std::vector<int64_t> shape,
                       std::vector<int64_t> strides) {
             if (shape.size() != strides.size())
               throw std::invalid_argument("TensorView: shape and strides differ in length");
             TensorView t;
             t.ptr = ptr;
             t.dtype = dtype;
             t.device = device;
             t.shape = std::move(shape);
             t.strides = std::move(strides);
             return t;
           }),
           py::arg("ptr"), py::arg("dtype"), py::arg("device"), py::arg("shape"), py::arg("strides"))
      .def_readonly("ptr", &TensorView::ptr)
      .def_readonly("dtype", &TensorView::dtype)
      .def_readonly("device", &TensorView::device)
      .def_readonly("shape", &TensorView::shape)
      .def_readonly("strides", &TensorView::strides);

  m.def("build_info", &build_info);

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("normalize_rows_forward", &normalize_rows_forward, py::arg("x"), py::arg("y"),
        py::arg("norm"), py::arg("eps"), py::arg("stream") = 0, nogil);
  m.def("normalize_rows_backward", &normalize_rows_backward, py::arg("x"), py::arg("norm"),
        py::arg("grad"), py::arg("grad_input"), py::arg("eps"), py::arg("stream") = 0, nogil);

  // [hull] module definitions
  m.def("hull_topm_update", &hull_topm_update, py::arg("tile"), py::arg("row_ids"), py::arg("col0"),
        py::arg("vals"), py::arg("idx"), py::arg("stream") = 0, nogil);
  m.def("hull_price_update", &hull_price_update, py::arg("tile"), py::arg("row_ids"), py::arg("col0"),
        py::arg("thresh"), py::arg("best_val"), py::arg("best_idx"), py::arg("viol_val"), py::arg("viol_idx"),
        py::arg("stream") = 0, nogil);
  m.def("hull_solve", &hull_solve, py::arg("W"), py::arg("classes"), py::arg("cand"), py::arg("gram"), py::arg("init_support"),
        py::arg("init_weights"), py::arg("gap_tol"),
        py::arg("max_iter"), py::arg("proj"), py::arg("dist"), py::arg("support"), py::arg("weights"),
        py::arg("iters"), py::arg("status"), py::arg("workspace"), py::arg("stream") = 0, nogil);
  // end [hull]
  // [loss] module definitions
  m.def("sce_fold", &sce_fold, py::arg("tile"), py::arg("y"), py::arg("col0"), py::arg("state"),
        py::arg("tau"), py::arg("margin_type"), py::arg("margin"), py::arg("ignore_index"),
        py::arg("stream") = 0, py::arg("interclass_threshold") = 0.0, nogil);
  m.def("sce_grad", &sce_grad, py::arg("tile"), py::arg("y"), py::arg("col0"), py::arg("num_classes"),
        py::arg("lse"), py::arg("q"), py::arg("scale"), py::arg("tau"), py::arg("margin_type"), py::arg("margin"),
        py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("stream") = 0,
        py::arg("interclass_threshold") = 0.0, nogil);
  m.def("masked_argmax_fold", &masked_argmax_fold, py::arg("tile"), py::arg("y"), py::arg("col0"),
        py::arg("best"), py::arg("arg"), py::arg("tgt"), py::arg("stream") = 0, nogil);
  m.def("sce_stored_exp", &sce_stored_exp, py::arg("tile"), py::arg("inv_n"), py::arg("y"), py::arg("col0"),
        py::arg("shift"), py::arg("E"), py::arg("state"), py::arg("tau"), py::arg("ignore_index"),
        py::arg("workspace"), py::arg("stream") = 0, nogil);
  m.def("sce_stored_exp_workspace_doubles", &gnc::stored_exp_workspace_doubles, py::arg("rows"), py::arg("cols"),
        "float64 values of CUDA workspace sce_stored_exp needs for a rows x cols tile (0 rows or columns: 0)");
  m.def("sce_stored_dw", &sce_stored_dw, py::arg("X"), py::arg("W"), py::arg("inv_n"), py::arg("v"), py::arg("dW"),
        py::arg("eps"), py::arg("project"), py::arg("stream") = 0, nogil);
  // end [loss]
  // [metrics] module definitions
  m.def("metrics_update_batch", &metrics_update_batch, py::arg("features"), py::arg("labels"),
        py::arg("shift"), py::arg("dsum"), py::arg("sqsum"), py::arg("counts"), py::arg("Z"),
        py::arg("first"), py::arg("normalize"), py::arg("eps"), py::arg("stream") = 0, nogil);
  m.def("ncc_argmax_update", &ncc_argmax_update, py::arg("tile"), py::arg("bias"), py::arg("col0"),
        py::arg("best_val"), py::arg("best_idx"), py::arg("stream") = 0, nogil);
  m.def("pair_stats_fold", &pair_stats_fold, py::arg("C"), py::arg("Xi"), py::arg("Xj"), py::arg("ri"),
        py::arg("rj"), py::arg("si"), py::arg("sj"), py::arg("diag"), py::arg("kernel"), py::arg("riesz_s"),
        py::arg("cdnv_p"), py::arg("close_cos"), py::arg("kshift"), py::arg("rowmax"), py::arg("colmax"),
        py::arg("acc"), nogil);
  m.def("certified_argmax_fold", &certified_argmax_fold, py::arg("tile"), py::arg("A"), py::arg("B"),
        py::arg("bias"), py::arg("y"), py::arg("col0"), py::arg("eps"), py::arg("approx_max"),
        py::arg("best_val"), py::arg("best_idx"), py::arg("checked"), py::arg("stream") = 0, nogil);
  // end [metrics]
  // [solvers] module definitions
  // end [solvers]
}
