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
#ifdef GNC_WITH_CUDA
#include "cuda/loss.h"
#endif
// end [loss]

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
  gnc::check_same_device(x, y, "x", "y");
  gnc::check_same_device(x, norm, "x", "norm");
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
  gnc::check_same_device(x, dy, "x", "grad");
  GNC_DISPATCH_DEVICE(x, gnc::cpu::normalize_rows_backward(x, norm, dy, dx, eps),
                      gnc::cuda::normalize_rows_backward(x, norm, dy, dx, eps, stream));
}

// ---- [hull] bindings (one-vs-rest / one-vs-one) ----------------------------
// ---- end [hull] -------------------------------------------------------------

// ---- [loss] bindings (spherical CE, HardMax) ---------------------------------
void check_loss_devices(const TensorView& first, std::initializer_list<std::pair<const TensorView*, const char*>> others,
                        const char* first_name = "tile") {
  for (auto& o : others) gnc::check_same_device(first, *o.first, first_name, o.second);
}

void sce_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& state,
              double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream) {
  check_loss_devices(tile, {{&y, "y"}, {&state, "state"}});
  if (margin_type < 0 || margin_type > 2) gnc::fail("margin_type: expected 0, 1 or 2");
  GNC_DISPATCH_DEVICE(tile, gnc::cpu::sce_fold(tile, y, col0, state, tau, margin_type, margin, ignore_index),
                      gnc::cuda::sce_fold(tile, y, col0, state, tau, margin_type, margin, ignore_index, stream));
}

void sce_grad(const TensorView& tile, const TensorView& y, int64_t col0, int64_t num_classes,
              const TensorView& lse, const TensorView& scale, double tau, int margin_type, double margin,
              double label_smoothing, int64_t ignore_index, std::uintptr_t stream) {
  check_loss_devices(tile, {{&y, "y"}, {&lse, "lse"}, {&scale, "scale"}});
  if (margin_type < 0 || margin_type > 2) gnc::fail("margin_type: expected 0, 1 or 2");
  GNC_DISPATCH_DEVICE(tile,
                      gnc::cpu::sce_grad(tile, y, col0, num_classes, lse, scale, tau, margin_type, margin,
                                         label_smoothing, ignore_index),
                      gnc::cuda::sce_grad(tile, y, col0, num_classes, lse, scale, tau, margin_type, margin,
                                          label_smoothing, ignore_index, stream));
}

void masked_argmax_fold(const TensorView& tile, const TensorView& y, int64_t col0, const TensorView& best,
                        const TensorView& arg, const TensorView& tgt, std::uintptr_t stream) {
  check_loss_devices(tile, {{&y, "y"}, {&best, "best"}, {&arg, "arg"}, {&tgt, "tgt"}});
  GNC_DISPATCH_DEVICE(tile, gnc::cpu::masked_argmax_fold(tile, y, col0, best, arg, tgt),
                      gnc::cuda::masked_argmax_fold(tile, y, col0, best, arg, tgt, stream));
}
void sce_fused_forward(const TensorView& Hn, const TensorView& Wn, const TensorView& y, const TensorView& state,
                       double tau, int margin_type, double margin, int64_t ignore_index, std::uintptr_t stream) {
  check_loss_devices(Hn, {{&Wn, "Wn"}, {&y, "y"}, {&state, "state"}}, "Hn");
  if (margin_type < 0 || margin_type > 2) gnc::fail("margin_type: expected 0, 1 or 2");
  GNC_DISPATCH_DEVICE(Hn,
                      throw std::invalid_argument("sce_fused_forward: CUDA only (the CPU path is the chunked engine)"),
                      gnc::cuda::sce_fused_forward(Hn, Wn, y, state, tau, margin_type, margin, ignore_index, stream));
}
// ---- end [loss] -------------------------------------------------------------

// ---- [metrics] bindings (GNC accumulators, NCC) ------------------------------
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
  // end [hull]
  // [loss] module definitions
  m.def("sce_fold", &sce_fold, py::arg("tile"), py::arg("y"), py::arg("col0"), py::arg("state"),
        py::arg("tau"), py::arg("margin_type"), py::arg("margin"), py::arg("ignore_index"),
        py::arg("stream") = 0, nogil);
  m.def("sce_grad", &sce_grad, py::arg("tile"), py::arg("y"), py::arg("col0"), py::arg("num_classes"),
        py::arg("lse"), py::arg("scale"), py::arg("tau"), py::arg("margin_type"), py::arg("margin"),
        py::arg("label_smoothing"), py::arg("ignore_index"), py::arg("stream") = 0, nogil);
  m.def("masked_argmax_fold", &masked_argmax_fold, py::arg("tile"), py::arg("y"), py::arg("col0"),
        py::arg("best"), py::arg("arg"), py::arg("tgt"), py::arg("stream") = 0, nogil);
  m.def("sce_fused_forward", &sce_fused_forward, py::arg("Hn"), py::arg("Wn"), py::arg("y"), py::arg("state"),
        py::arg("tau"), py::arg("margin_type"), py::arg("margin"), py::arg("ignore_index"), py::arg("stream") = 0,
        nogil);
  // end [loss]
  // [metrics] module definitions
  // end [metrics]
  // [solvers] module definitions
  // end [solvers]
}
