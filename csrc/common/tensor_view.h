// Framework-neutral view of a strided tensor handed over from Python.
//
// The hand-off convention (see gnc_ext/_native.py): Python builds a `TensorView`
// from a torch tensor with (data_ptr, dtype code, device index, shape, strides in
// elements). Device index -1 means host memory; >= 0 means that CUDA device. Python
// owns the memory (torch's allocator) and keeps the tensor alive for the call; the
// native code never allocates outputs and never links libtorch.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace gnc {

enum class DType : int { F32 = 0, F64 = 1, F16 = 2, BF16 = 3, I64 = 4, I32 = 5, U8 = 6 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::F64: return "float64";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    case DType::I64: return "int64";
    case DType::I32: return "int32";
    case DType::U8: return "uint8";
  }
  return "unknown";
}

inline int64_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::U8: return 1;
  }
  return 1;
}

inline bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::F16 || t == DType::BF16;
}

struct TensorView {
  std::uintptr_t ptr = 0;
  DType dtype = DType::F32;
  int device = -1;                 // -1: host, >= 0: CUDA device index
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;    // in elements

  int dim() const { return static_cast<int>(shape.size()); }
  int64_t size(int i) const { return shape.at(i); }
  int64_t stride(int i) const { return strides.at(i); }
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
  }
  bool is_cuda() const { return device >= 0; }
  template <typename T> T* data() const { return reinterpret_cast<T*>(ptr); }
  bool is_contiguous() const {
    int64_t expected = 1;
    for (int i = dim() - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expected) return false;
      expected *= shape[i];
    }
    return true;
  }
};

// Bytes [lo, hi) spanned by the elements of t (lo == hi when t has no elements).
struct ByteExtent {
  std::uintptr_t lo = 0, hi = 0;
};
inline ByteExtent byte_extent(const TensorView& t) {
  if (t.numel() == 0) return {};
  int64_t lo = 0, hi = 0;  // element offsets of the first and last reachable element
  for (int i = 0; i < t.dim(); ++i) {
    const int64_t span = (t.shape[i] - 1) * t.strides[i];
    (span < 0 ? lo : hi) += span;
  }
  const int64_t es = dtype_size(t.dtype);
  return {t.ptr + static_cast<std::uintptr_t>(lo * es), t.ptr + static_cast<std::uintptr_t>((hi + 1) * es)};
}
// True when a and b are the same view of the same memory (pointer, dtype, device, shape,
// strides): an elementwise kernel that reads each element before writing it may take
// them as input and output.
inline bool same_view(const TensorView& a, const TensorView& b) {
  return a.ptr == b.ptr && a.dtype == b.dtype && a.device == b.device && a.shape == b.shape &&
         a.strides == b.strides;
}
// True when the byte ranges spanned by a and b intersect on the same device (a
// conservative test, like torch's partial-overlap check: interleaved views count).
inline bool may_overlap(const TensorView& a, const TensorView& b) {
  if (a.device != b.device) return false;
  const ByteExtent x = byte_extent(a), y = byte_extent(b);
  return x.lo < x.hi && y.lo < y.hi && x.lo < y.hi && y.lo < x.hi;
}

// ---- checks: raise std::invalid_argument (-> ValueError in Python) -----------
[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline void check_dim(const TensorView& t, int d, const char* name) {
  if (t.dim() != d)
    fail(std::string(name) + ": expected a " + std::to_string(d) + "-D tensor, got " +
         std::to_string(t.dim()) + "-D");
}
inline void check_dtype(const TensorView& t, DType d, const char* name) {
  if (t.dtype != d)
    fail(std::string(name) + ": expected dtype " + dtype_name(d) + ", got " + dtype_name(t.dtype));
}
inline void check_same_device(const TensorView& a, const TensorView& b, const char* na,
                              const char* nb) {
  if (a.device != b.device)
    fail(std::string(na) + " and " + nb + " must be on the same device");
}
inline void check_shape(const TensorView& t, std::initializer_list<int64_t> s, const char* name) {
  std::vector<int64_t> v(s);
  if (t.shape != v) {
    std::string want = "(", got = "(";
    for (size_t i = 0; i < v.size(); ++i) want += (i ? ", " : "") + std::to_string(v[i]);
    for (size_t i = 0; i < t.shape.size(); ++i) got += (i ? ", " : "") + std::to_string(t.shape[i]);
    fail(std::string(name) + ": expected shape " + want + "), got " + got + ")");
  }
}
inline void check_row_contiguous(const TensorView& t, const char* name) {
  if (t.dim() == 2 && t.shape[0] > 0 && t.shape[1] > 1 && t.strides[1] != 1)
    fail(std::string(name) + ": rows must be contiguous (stride 1 along the last dimension)");
}
// An output that must not share memory with an input (or another output).
inline void check_no_overlap(const TensorView& out, const TensorView& other, const char* out_name,
                             const char* other_name) {
  if (may_overlap(out, other))
    fail(std::string(out_name) + ": must not share memory with " + other_name);
}
// A 1-D tensor the kernels index as p[i]: unit stride (or at most one element).
inline void check_contiguous_1d(const TensorView& t, const char* name) {
  if (t.dim() == 1 && t.shape[0] > 1 && t.strides[0] != 1)
    fail(std::string(name) + ": must be contiguous (stride 1), got stride " + std::to_string(t.strides[0]));
}
// A 2-D output whose rows are written independently (in parallel): unit column stride
// and rows that do not overlap (row stride at least the row length, e.g. not an expand).
inline void check_distinct_rows(const TensorView& t, const char* name) {
  check_row_contiguous(t, name);
  if (t.dim() == 2 && t.shape[0] > 1 && t.shape[1] > 0 && t.strides[0] < t.shape[1])
    fail(std::string(name) + ": rows overlap (row stride " + std::to_string(t.strides[0]) +
         " < row length " + std::to_string(t.shape[1]) + ")");
}

inline void check_ptr(const TensorView& t, const char* name) {
  if (t.ptr == 0 && t.numel() > 0) fail(std::string(name) + ": null data pointer");
}

}  // namespace gnc
