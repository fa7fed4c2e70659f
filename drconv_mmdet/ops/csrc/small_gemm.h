// Products of small matrices, C = A B (or C += A B), for the region kernels.
//
// A region's group of pixels in a small map is a few dozen pixels: its product with the
// region's filter is a matrix with a few dozen columns. A BLAS copies (packs) both operands into
// its own layout on every call, which for so few columns costs more than the products, on top
// of a call's fixed cost. These products read A where it lies, by element, with any strides
// (a filter or its transpose, in place), and B and C as rows padded to whole vectors, and keep
// a tile of C in registers.
//
// They are compiled for AVX-512 and for AVX2 with FMA (GCC on x86-64), and for the compiler's
// baseline, and pick the widest set that the CPU has when first called. Like ATen's kernels,
// they take no wider set than ATEN_CPU_CAPABILITY names ("default", "avx2", "avx512"), which
// lets the narrower builds be tested on a CPU that has the wider ones.
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

namespace drconv {
namespace small_gemm {

// Rows of B and C hold their columns rounded up to this multiple (whole vectors of every
// instruction set); the extra columns are computed and have no meaning.
constexpr int64_t kColumnMultiple = 16;

inline int64_t padded_columns(int64_t columns) {
  return (columns + kColumnMultiple - 1) / kColumnMultiple * kColumnMultiple;
}

// C[i, j] = (C[i, j] if accumulate) + sum_l A[i, l] B[l, j] for i < rows, j < columns, l < inner,
// with A[i, l] = a[i * a_row + l * a_column], B[l, j] = b[l * ldb + j], C[i, j] = c[i * ldc + j];
// ldb and ldc are at least padded_columns(columns).
template <typename T>
struct Operands {
  int64_t rows, columns, inner;
  const T* a;
  int64_t a_row, a_column;
  const T* b;
  int64_t ldb;
  T* c;
  int64_t ldc;
  bool accumulate;
};

#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(_M_X64))
#define DRCONV_X86_KERNELS 1
#endif

#if defined(__GNUC__)
namespace baseline {
#define DRCONV_VECTOR_BYTES 16
#define DRCONV_TILE_ROWS 4
#include "small_gemm_kernel.inc"
#undef DRCONV_VECTOR_BYTES
#undef DRCONV_TILE_ROWS
}  // namespace baseline
#else
namespace baseline {
template <typename T>
void gemm(const Operands<T>& op) {
  const int64_t columns = padded_columns(op.columns);
  for (int64_t i = 0; i < op.rows; ++i) {
    T* c = op.c + i * op.ldc;
    for (int64_t j = 0; j < columns; ++j) {
      c[j] = op.accumulate ? c[j] : T(0);
    }
    for (int64_t l = 0; l < op.inner; ++l) {
      const T a = op.a[i * op.a_row + l * op.a_column];
      const T* b = op.b + l * op.ldb;
      for (int64_t j = 0; j < columns; ++j) {
        c[j] += a * b[j];
      }
    }
  }
}
}  // namespace baseline
#endif

#ifdef DRCONV_X86_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
#define DRCONV_VECTOR_BYTES 32
#define DRCONV_TILE_ROWS 6
#include "small_gemm_kernel.inc"
#undef DRCONV_VECTOR_BYTES
#undef DRCONV_TILE_ROWS
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,fma")
namespace avx512 {
#define DRCONV_VECTOR_BYTES 64
#define DRCONV_TILE_ROWS 8
#include "small_gemm_kernel.inc"
#undef DRCONV_VECTOR_BYTES
#undef DRCONV_TILE_ROWS
}  // namespace avx512
#pragma GCC pop_options
#endif

enum class InstructionSet { kBaseline, kAvx2, kAvx512 };

inline InstructionSet detect_instruction_set() {
#ifdef DRCONV_X86_KERNELS
  const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
  const std::string limit = cap ? cap : "";
  if (limit == "default") {
    return InstructionSet::kBaseline;
  }
  if (limit != "avx2" && __builtin_cpu_supports("avx512f")) {
    return InstructionSet::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return InstructionSet::kAvx2;
  }
#endif
  return InstructionSet::kBaseline;
}

inline InstructionSet instruction_set() {
  static const InstructionSet chosen = detect_instruction_set();
  return chosen;
}

inline const char* instruction_set_name() {
  switch (instruction_set()) {
    case InstructionSet::kAvx512:
      return "avx512";
    case InstructionSet::kAvx2:
      return "avx2";
    default:
      return "default";
  }
}

template <typename T>
void gemm(const Operands<T>& op) {
  TORCH_INTERNAL_ASSERT(op.ldb >= padded_columns(op.columns) &&
                        op.ldc >= padded_columns(op.columns));
  if (op.rows == 0 || op.columns == 0) {
    return;
  }
#ifdef DRCONV_X86_KERNELS
  switch (instruction_set()) {
    case InstructionSet::kAvx512:
      return avx512::gemm(op);
    case InstructionSet::kAvx2:
      return avx2::gemm(op);
    default:
      break;
  }
#endif
  baseline::gemm(op);
}

}  // namespace small_gemm
}  // namespace drconv
