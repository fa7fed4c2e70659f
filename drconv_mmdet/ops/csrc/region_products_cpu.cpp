// The DRConv op's region products on CPU: the forward pass and the input and weight gradients.
//
// Output pixel p of sample b is weight[b, r] @ window(b, p) with r = regions[b, p]. The pixels
// of every sample are sorted by region (a counting sort). Work is cut into tasks that each
// gather a tile of windows into a small buffer, multiply it with one region's filter
// (at::mm, which inside a parallel region runs on the calling thread) and write the results
// straight to their pixels' channels-last rows, so that windows never exist for the whole map
// at once and every tile's data is still in cache when the product reads it.
//
// Windows are read from the input in channels-last rows (one pixel's C channels contiguous), or,
// where a sample's input and output fit in a core's cache together and the input is NCHW, from
// its NCHW planes straight, results going straight to NCHW planes too: the strided reads and
// writes then hit the cache, and the two passes over the whole map (a channels-last copy of the
// input, a transposition of the output) that would cost as much as the products on small maps
// are saved. Taps outside the input read zeros, so no padded copy of the input is made.
//
// On planes, a group has few pixels (a small map's share of m regions), so a tile's windows are
// gathered as columns (one row per channel and tap, one column per pixel: each row reads one
// cached plane) and multiplied by small_gemm.h's products, which use the filter in place. A
// BLAS call would pack the whole filter for a few dozen pixels. On rows, groups are large, and
// at::mm's packing pays for itself over tiles of hundreds of pixels.
//
// The regions are an int64 (B, Ho*Wo) map or the guide (B, m, Ho, Wo) itself, whose argmax over
// m (the first maximum winning, as torch.argmax) is taken per sample by the counting sort, so
// that no separate pass over the guide is made. A window is
// gathered either in the filter's own order (channel-major: c * taps + t), which lets the
// filter be used where it is, or tap-major (t * C + c), which copies whole channel rows but
// needs the filter reordered once per task: tap-major pays where a group has more pixels than
// its filter has rows (with one tap both orders are the same).
//
// Half types (float16, bfloat16) are computed in float32: windows and filters are converted
// when they are gathered, and every sum (over channels, taps, tiles and overlapping windows) is
// a float32 sum, as oneDNN and cuDNN accumulate. This needs no half-precision matrix product,
// which older torch lacks on CPU.
#include <torch/extension.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "small_gemm.h"

#include <algorithm>
#include <cmath>
#include <atomic>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using at::Tensor;

// Values of one tile's gathered windows (or of its output-channel gradients, if wider): small
// enough that a tile stays in a core's L2 cache from its gather to its products, large enough
// that a product is not dominated by the fixed cost of a call. A tile has at least
// kMinTilePixels pixels all the same: every product call streams (and the BLAS packs) the whole
// filter, or reads and writes the whole filter gradient, which a few pixels cannot amortize.
constexpr int64_t kTileValues = 1 << 16;
constexpr int64_t kMinTilePixels = 128;
constexpr int64_t kMaxTilePixels = 512;
// Pixels of a tile on planes: at most this many, so that a product's columns fill whole vectors
// and the tiles of one group are few.
constexpr int64_t kMaxPlanarTilePixels = 256;
// The backward pass is cut into (sample, channel block) tasks; a block has at least this many
// input channels, so that its products stay wide enough to be efficient.
constexpr int64_t kMinBlockChannels = 16;
// Bytes of one sample's input and output (in the computation's dtype) up to which the kernels
// work on NCHW planes directly: half a core's L2 cache, leaving room for the tiles and filters.
constexpr int64_t kPlanarSampleBytes = 1 << 19;
// Windows of up to this many values work on NCHW planes at any map size: a tile's products then
// read a filter that stays in a core's cache from tile to tile, where at::mm would pack it per
// tile, and the two passes over the map that rows cost are saved.
constexpr int64_t kPlanarWindow = 512;

struct Problem {
  int64_t batch, channels, height, width;
  int64_t regions, out_channels, kernel_h, kernel_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t out_h, out_w;

  int64_t taps() const { return kernel_h * kernel_w; }
  int64_t window() const { return channels * taps(); }
  int64_t out_pixels() const { return out_h * out_w; }
  int64_t groups() const { return batch * regions; }
  // Whether a group of `pixels` pixels gathers tap-major (see the top of this file); with one
  // tap both orders are the same, and tap-major's copies are contiguous.
  bool tap_major(int64_t pixels) const { return taps() == 1 || pixels > out_channels; }
  // Whether a group's filter is reordered to gather tap-major.
  bool reorders_filter(int64_t pixels) const { return taps() > 1 && pixels > out_channels; }
};

std::pair<int64_t, int64_t> as_pair(at::IntArrayRef values, const char* name) {
  TORCH_CHECK(values.size() == 2, name, " must hold 2 values, but got ", values);
  return {values[0], values[1]};
}

void check_cpu(const Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu(), name, " must be on the CPU, but is on ", tensor.device());
}

// The problem of a call, its arguments checked; `regions` where the call takes them. Every tensor
// may have any strides except `weight`, which is read in place.
Problem make_problem(const Tensor& input, const Tensor& weight,
                     const c10::optional<Tensor>& regions, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, "input must be 4-D (B, C, H, W), but got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 6, "weight must be 6-D (B, m, O, C, kh, kw), but got shape ",
              weight.sizes());
  check_cpu(input, "input");
  check_cpu(weight, "weight");
  const at::ScalarType dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              "input must be Double, Float, BFloat16 or Half, but got ", dtype);
  TORCH_CHECK(weight.scalar_type() == dtype, "weight must have the dtype of input (", dtype,
              "), but got ", weight.scalar_type());
  TORCH_CHECK(weight.is_contiguous(), "weight must be contiguous");
  Problem pb;
  pb.batch = input.size(0);
  pb.channels = input.size(1);
  pb.height = input.size(2);
  pb.width = input.size(3);
  pb.regions = weight.size(1);
  pb.out_channels = weight.size(2);
  pb.kernel_h = weight.size(4);
  pb.kernel_w = weight.size(5);
  TORCH_CHECK(weight.size(0) == pb.batch && pb.regions > 0 && weight.size(3) == pb.channels &&
                  pb.kernel_h > 0 && pb.kernel_w > 0,
              "weight must have shape (B=", pb.batch, ", m>0, O, C=", pb.channels,
              ", kh>0, kw>0), but got ", weight.sizes());
  std::tie(pb.stride_h, pb.stride_w) = as_pair(stride, "stride");
  std::tie(pb.pad_h, pb.pad_w) = as_pair(padding, "padding");
  std::tie(pb.dilation_h, pb.dilation_w) = as_pair(dilation, "dilation");
  TORCH_CHECK(pb.stride_h > 0 && pb.stride_w > 0 && pb.dilation_h > 0 && pb.dilation_w > 0 &&
                  pb.pad_h >= 0 && pb.pad_w >= 0,
              "stride and dilation must be positive and padding non-negative");
  pb.out_h = (pb.height + 2 * pb.pad_h - pb.dilation_h * (pb.kernel_h - 1) - 1) / pb.stride_h + 1;
  pb.out_w = (pb.width + 2 * pb.pad_w - pb.dilation_w * (pb.kernel_w - 1) - 1) / pb.stride_w + 1;
  TORCH_CHECK(pb.out_h > 0 && pb.out_w > 0, "input of spatial size ", input.sizes().slice(2),
              " is too small for the filters");
  if (!regions.has_value()) {
    return pb;
  }
  check_cpu(*regions, "regions");
  const bool is_map = regions->scalar_type() == at::kLong && regions->dim() == 2 &&
                      regions->size(0) == pb.batch && regions->size(1) == pb.out_pixels();
  const bool is_guide = at::isFloatingType(regions->scalar_type()) && regions->dim() == 4 &&
                        regions->size(0) == pb.batch && regions->size(1) == pb.regions &&
                        regions->size(2) == pb.out_h && regions->size(3) == pb.out_w;
  TORCH_CHECK(is_map || is_guide, "regions must be an int64 tensor of shape (B=", pb.batch,
              ", Ho*Wo=", pb.out_pixels(), ") or a floating guide of shape (B=", pb.batch,
              ", m=", pb.regions, ", Ho=", pb.out_h, ", Wo=", pb.out_w, "), but got ",
              regions->scalar_type(), " of shape ", regions->sizes());
  return pb;
}

void check_bias(const Problem& pb, const c10::optional<Tensor>& bias, const Tensor& input) {
  if (!bias.has_value() || !bias->defined()) {
    return;
  }
  check_cpu(*bias, "bias");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == pb.out_channels &&
                  bias->scalar_type() == input.scalar_type(),
              "bias must be a ", input.scalar_type(), " tensor of shape (O=", pb.out_channels,
              "), but got ", bias->scalar_type(), " of shape ", bias->sizes());
}

void check_grad_output(const Problem& pb, const Tensor& grad_output, const Tensor& input) {
  check_cpu(grad_output, "grad_output");
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == pb.batch &&
                  grad_output.size(1) == pb.out_channels && grad_output.size(2) == pb.out_h &&
                  grad_output.size(3) == pb.out_w &&
                  grad_output.scalar_type() == input.scalar_type(),
              "grad_output must be a ", input.scalar_type(), " tensor of shape (", pb.batch, ", ",
              pb.out_channels, ", ", pb.out_h, ", ", pb.out_w, "), but got ",
              grad_output.scalar_type(), " of shape ", grad_output.sizes());
}

// The layout nn.Conv2d gives a result computed from `tensor` (as conv_memory_format in
// region_products.py): channels-last for a channels-last tensor that is not also contiguous.
at::MemoryFormat conv_memory_format(const Tensor& tensor) {
  return tensor.is_contiguous(at::MemoryFormat::ChannelsLast) && !tensor.is_contiguous()
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// The output pixels of every sample sorted by region: group g = b * m + r holds the pixels
// order[start[g]:start[g + 1]], each an index into its sample's Ho * Wo pixels, in raster order
// (the sort is stable), so that neighbouring windows of a tile read neighbouring rows.
struct Groups {
  std::vector<int64_t> start;
  std::vector<int64_t> order;

  int64_t size(int64_t group) const { return start[group + 1] - start[group]; }
};

// The region of every output pixel of sample b from the guide (B, m, Ho, Wo), of any layout:
// the first of the highest scores, a NaN counting as the highest (as torch.argmax).
template <typename guide_t>
void guide_argmax(const Problem& pb, const Tensor& guide, int64_t b, int64_t* region_of) {
  using acc_t = at::opmath_type<guide_t>;
  const guide_t* data = guide.data_ptr<guide_t>() + b * guide.stride(0);
  const int64_t stride_r = guide.stride(1), stride_y = guide.stride(2), stride_x = guide.stride(3);
  std::vector<acc_t> best(pb.out_pixels());
  for (int64_t r = 0; r < pb.regions; ++r) {
    for (int64_t y = 0, p = 0; y < pb.out_h; ++y) {
      const guide_t* row = data + r * stride_r + y * stride_y;
      for (int64_t x = 0; x < pb.out_w; ++x, ++p) {
        const acc_t value = acc_t(row[x * stride_x]);
        if (r == 0 || value > best[p] || (std::isnan(value) && !std::isnan(best[p]))) {
          best[p] = value;
          region_of[p] = r;
        }
      }
    }
  }
}

Groups sort_by_region(const Problem& pb, const Tensor& regions) {
  const bool is_guide = regions.dim() == 4;
  const Tensor map = is_guide ? regions : regions.contiguous();
  const int64_t pixels = pb.out_pixels(), num_regions = pb.regions;
  Groups groups;
  groups.start.resize(pb.groups() + 1);
  groups.order.resize(pb.batch * pixels);
  groups.start[pb.groups()] = pb.batch * pixels;
  at::parallel_for(0, pb.batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> next(num_regions);
    std::vector<int64_t> guided(is_guide ? pixels : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t* sample = guided.data();
      if (is_guide) {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, map.scalar_type(),
                                        "drconv_guide_argmax",
                                        [&] { guide_argmax<scalar_t>(pb, map, b, guided.data()); });
      } else {
        sample = map.data_ptr<int64_t>() + b * pixels;
      }
      std::fill(next.begin(), next.end(), 0);
      for (int64_t p = 0; p < pixels; ++p) {
        TORCH_CHECK(sample[p] >= 0 && sample[p] < num_regions, "regions must lie in [0, ",
                    num_regions, "), but sample ", b, " has ", sample[p]);
        ++next[sample[p]];
      }
      int64_t offset = b * pixels;
      for (int64_t r = 0; r < num_regions; ++r) {
        groups.start[b * num_regions + r] = offset;
        std::swap(offset, next[r]);
        offset += next[r];
      }
      for (int64_t p = 0; p < pixels; ++p) {
        groups.order[next[sample[p]]++] = p;
      }
    }
  });
  return groups;
}

// Runs task(i) for every i in [0, num_tasks) on ATen's threads, a thread taking the next task
// as soon as it is done, since tasks differ in cost (groups differ in size). make_worker() is
// called once per thread and returns the task function, which owns that thread's buffers.
template <typename MakeWorker>
void run_tasks(int64_t num_tasks, const MakeWorker& make_worker) {
  if (num_tasks == 0) {
    return;
  }
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), num_tasks);
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    auto task = make_worker();
    for (int64_t i = next++; i < num_tasks; i = next++) {
      task(i);
    }
  });
}

int64_t tile_pixels(int64_t row_values) {
  return std::clamp(kTileValues / std::max<int64_t>(row_values, 1), kMinTilePixels,
                    kMaxTilePixels);
}

// Calls visit(t, offset) for every tap t of the window of output pixel `pixel`, with `offset`
// the tap's pixel in a sample's (H, W) raster, or -1 where the tap falls in the padding.
template <typename Visit>
inline void for_each_tap(const Problem& pb, int64_t pixel, const Visit& visit) {
  const int64_t top = (pixel / pb.out_w) * pb.stride_h - pb.pad_h;
  const int64_t left = (pixel % pb.out_w) * pb.stride_w - pb.pad_w;
  int64_t t = 0;
  for (int64_t ky = 0; ky < pb.kernel_h; ++ky) {
    const int64_t y = top + ky * pb.dilation_h;
    const bool row_inside = y >= 0 && y < pb.height;
    for (int64_t kx = 0; kx < pb.kernel_w; ++kx, ++t) {
      const int64_t x = left + kx * pb.dilation_w;
      visit(t, row_inside && x >= 0 && x < pb.width ? y * pb.width + x : -1);
    }
  }
}

// A window of `block` channels, one value per (tap t, channel c): where value (t, c) sits in a
// gathered row, tap-major or in the filter's channel-major order.
template <bool kTapMajor>
struct WindowOrder {
  int64_t taps, block;
  int64_t tap_step() const { return kTapMajor ? block : 1; }
  int64_t channel_step() const { return kTapMajor ? 1 : taps; }
};

// Channels [first, first + block) of the window of `pixel` from a sample's channels-last rows
// into `col` (taps * block values): zeros where a tap is in the padding.
template <bool kTapMajor, typename acc_t>
void gather_window(const Problem& pb, const acc_t* sample, int64_t pixel, int64_t first,
                   int64_t block, acc_t* col) {
  const WindowOrder<kTapMajor> order{pb.taps(), block};
  const int64_t channel_step = order.channel_step();
  for_each_tap(pb, pixel, [&](int64_t t, int64_t offset) {
    acc_t* dst = col + t * order.tap_step();
    if (offset < 0) {
      for (int64_t c = 0; c < block; ++c) {
        dst[c * channel_step] = acc_t(0);
      }
      return;
    }
    const acc_t* src = sample + offset * pb.channels + first;
    if (channel_step == 1) {
      std::copy_n(src, block, dst);
      return;
    }
    for (int64_t c = 0; c < block; ++c) {
      dst[c * channel_step] = src[c];
    }
  });
}

// The transpose of gather_window: adds `col` to the rows its window reads; taps in the padding
// are dropped.
template <bool kTapMajor, typename acc_t>
void add_window(const Problem& pb, acc_t* sample, int64_t pixel, int64_t first, int64_t block,
                const acc_t* col) {
  const WindowOrder<kTapMajor> order{pb.taps(), block};
  const int64_t channel_step = order.channel_step();
  for_each_tap(pb, pixel, [&](int64_t t, int64_t offset) {
    if (offset < 0) {
      return;
    }
    const acc_t* src = col + t * order.tap_step();
    acc_t* dst = sample + offset * pb.channels + first;
    for (int64_t c = 0; c < block; ++c) {
      dst[c] += src[c * channel_step];
    }
  });
}

// Calls visit(filter_index, matrix_index) for every value of channels [first, first + block)
// of one (O, C, kh, kw) filter, matrix_index being its place in an (O, block * taps) matrix
// whose columns are ordered like gathered windows; in the matrix's order, so that a copy into
// the matrix writes contiguously.
template <bool kTapMajor, typename Visit>
void for_each_filter_value(const Problem& pb, int64_t first, int64_t block, const Visit& visit) {
  const int64_t taps = pb.taps();
  int64_t index = 0;
  for (int64_t o = 0; o < pb.out_channels; ++o) {
    const int64_t row = (o * pb.channels + first) * taps;
    if (kTapMajor) {
      for (int64_t t = 0; t < taps; ++t) {
        for (int64_t c = 0; c < block; ++c) {
          visit(row + c * taps + t, index++);
        }
      }
    } else {
      for (int64_t i = 0; i < block * taps; ++i) {
        visit(row + i, index++);
      }
    }
  }
}

template <bool kTapMajor, typename acc_t>
void gather_tile(const Problem& pb, const acc_t* sample, const int64_t* pixels, int64_t count,
                 int64_t first, int64_t block, acc_t* cols) {
  const int64_t width = block * pb.taps();
  for (int64_t i = 0; i < count; ++i) {
    gather_window<kTapMajor>(pb, sample, pixels[i], first, block, cols + i * width);
  }
}

template <bool kTapMajor, typename acc_t>
void add_tile(const Problem& pb, acc_t* sample, const int64_t* pixels, int64_t count,
              int64_t first, int64_t block, const acc_t* grad_cols) {
  const int64_t width = block * pb.taps();
  for (int64_t i = 0; i < count; ++i) {
    add_window<kTapMajor>(pb, sample, pixels[i], first, block, grad_cols + i * width);
  }
}

// Dispatches a tile function on the window order chosen at run time.
#define DRCONV_BY_ORDER(tap_major, function, ...) \
  ((tap_major) ? function<true>(__VA_ARGS__) : function<false>(__VA_ARGS__))

// A (rows, cols) matrix over `data` with row stride `ld`, for at::mm.
template <typename T>
Tensor matrix(T* data, int64_t rows, int64_t cols, int64_t ld) {
  using value_t = std::remove_const_t<T>;
  return at::from_blob(const_cast<value_t*>(data), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<value_t>::value));
}

// Whether a call works on NCHW planes (see the top of this file): an NCHW input whose samples'
// input and output fit in the cache together, or whose windows are short.
bool works_on_planes(const Problem& pb, const Tensor& input) {
  const int64_t sample_values = pb.channels * pb.height * pb.width +
                                pb.out_channels * pb.out_pixels();
  return conv_memory_format(input) == at::MemoryFormat::Contiguous &&
         (pb.window() <= kPlanarWindow ||
          sample_values * at::elementSize(at::toOpMathType(input.scalar_type())) <=
              kPlanarSampleBytes);
}

at::MemoryFormat memory_format(bool planar) {
  return planar ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
}

// A (B, C, H, W) tensor in the computation's dtype as channels-last rows: the tensor itself
// where it is that already, else one converting copy.
Tensor as_rows(const Tensor& tensor, at::ScalarType acc_type) {
  return tensor.to(acc_type).contiguous(at::MemoryFormat::ChannelsLast);
}

template <typename acc_t>
std::vector<acc_t> bias_values(const c10::optional<Tensor>& bias, int64_t out_channels) {
  std::vector<acc_t> values(out_channels, acc_t(0));
  if (bias.has_value() && bias->defined()) {
    const Tensor bias_acc = bias->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    std::copy_n(bias_acc.data_ptr<acc_t>(), out_channels, values.begin());
  }
  return values;
}

// A run of one group's pixels: order[first:first + count] of group `group`.
struct Run {
  int64_t count, group, first;

  bool operator>(const Run& other) const {
    return std::tie(count, group, first) > std::tie(other.count, other.group, other.first);
  }
};

// The forward pass's tasks: runs of at most a share of the call that leaves every thread
// several tasks, so that the largest groups are split, and of whole tiles otherwise, so that a
// converted or reordered filter is made once per task.
std::vector<Run> forward_runs(const Problem& pb, const Groups& groups, int64_t tile) {
  const int64_t share = pb.batch * pb.out_pixels() / (4 * at::get_num_threads()) + 1;
  const int64_t length = std::max(tile, (share + tile - 1) / tile * tile);
  std::vector<Run> runs;
  for (int64_t g = 0; g < pb.groups(); ++g) {
    for (int64_t i = groups.start[g]; i < groups.start[g + 1]; i += length) {
      runs.push_back({std::min(length, groups.start[g + 1] - i), g, i});
    }
  }
  return runs;
}

// Columns [first, first + width) of a filter matrix (rows, ld) in the computation's dtype: in
// place, or converted into `converted` (rows * ld values, the same places); the result points
// at column `first` of row 0.
template <typename scalar_t, typename acc_t>
const acc_t* filter_columns_in(const scalar_t* filter, int64_t rows, int64_t ld, int64_t first,
                               int64_t width, std::vector<acc_t>& converted) {
  if constexpr (std::is_same<acc_t, scalar_t>::value) {
    return filter + first;
  } else {
    for (int64_t row = 0; row < rows; ++row) {
      std::transform(filter + row * ld + first, filter + row * ld + first + width,
                     converted.begin() + row * ld + first,
                     [](scalar_t value) { return acc_t(value); });
    }
    return converted.data() + first;
  }
}

// `values` filter values in the computation's dtype: in place, or converted into `converted`.
template <typename scalar_t, typename acc_t>
const acc_t* filter_in(const scalar_t* filter, int64_t values, std::vector<acc_t>& converted) {
  return filter_columns_in(filter, 1, values, 0, values, converted);
}

// Pixels of a tile on planes: as many as keep the larger of its gathered windows and its
// products within kTileValues, whole vectors of columns.
int64_t planar_tile_pixels(int64_t row_values) {
  const int64_t pixels = std::clamp(kTileValues / std::max<int64_t>(row_values, 1),
                                    drconv::small_gemm::kColumnMultiple, kMaxPlanarTilePixels);
  return pixels / drconv::small_gemm::kColumnMultiple * drconv::small_gemm::kColumnMultiple;
}

// For a tile of output pixels, where each tap of their windows reads in a sample's (H, W)
// raster: offsets[t * count + i] for tap t of pixel i, -1 in the padding.
void tap_offsets(const Problem& pb, const int64_t* pixels, int64_t count, int64_t* offsets) {
  for (int64_t i = 0; i < count; ++i) {
    for_each_tap(pb, pixels[i], [&](int64_t t, int64_t offset) { offsets[t * count + i] = offset; });
  }
}

// Channels [first, first + block) of a tile's windows from a sample's NCHW planes, in the
// filter's order: value (c, t) of pixel i goes to out[((c - first) * taps + t) * value_step +
// i * pixel_step]; zeros in the padding. Each (c, t) reads one plane, which is in the cache.
template <typename scalar_t, typename acc_t>
void gather_planes(const Problem& pb, const scalar_t* planes, const int64_t* offsets,
                   int64_t count, int64_t first, int64_t block, int64_t value_step,
                   int64_t pixel_step, acc_t* out) {
  const int64_t plane = pb.height * pb.width, taps = pb.taps();
  for (int64_t c = 0; c < block; ++c) {
    const scalar_t* src = planes + (first + c) * plane;
    for (int64_t t = 0; t < taps; ++t) {
      const int64_t* offset = offsets + t * count;
      acc_t* dst = out + (c * taps + t) * value_step;
      for (int64_t i = 0; i < count; ++i) {
        dst[i * pixel_step] = offset[i] < 0 ? acc_t(0) : acc_t(src[offset[i]]);
      }
    }
  }
}

template <typename T>
void small_product(int64_t rows, int64_t columns, int64_t inner, const T* a, int64_t a_row,
                   int64_t a_column, const T* b, int64_t ldb, T* c, int64_t ldc,
                   bool accumulate) {
  drconv::small_gemm::gemm(drconv::small_gemm::Operands<T>{
      rows, columns, inner, a, a_row, a_column, b, ldb, c, ldc, accumulate});
}

template <typename scalar_t>
void forward_planes(const Problem& pb, const Tensor& input, const Tensor& weight,
                    const Groups& groups, const c10::optional<Tensor>& bias, Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<acc_t, scalar_t>::value;
  const Tensor planes = input.contiguous();
  const scalar_t* in = planes.data_ptr<scalar_t>();
  const scalar_t* weight_data = weight.data_ptr<scalar_t>();
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t window = pb.window(), out_channels = pb.out_channels;
  const int64_t in_sample = pb.channels * pb.height * pb.width, out_plane = pb.out_pixels();
  const std::vector<acc_t> bias_acc = bias_values<acc_t>(bias, out_channels);
  const int64_t tile = planar_tile_pixels(std::max(window, out_channels));
  const int64_t ld_tile = drconv::small_gemm::padded_columns(tile);
  // Runs are in sample order, so that the threads work on a few samples at a time, which stay
  // in the cache. A sample's groups write to the same cache lines of its output planes (their
  // pixels interleave), so where the samples are enough to keep every thread busy, a task is a
  // whole sample: two threads writing one line would pass it back and forth between their
  // caches.
  const std::vector<Run> runs = forward_runs(pb, groups, tile);
  std::vector<int64_t> task_runs;  // task t runs runs[task_runs[t]:task_runs[t + 1]]
  const bool whole_samples = pb.batch >= 2 * at::get_num_threads();
  for (int64_t i = 0; i < static_cast<int64_t>(runs.size()); ++i) {
    if (!whole_samples || i == 0 ||
        runs[i].group / pb.regions != runs[i - 1].group / pb.regions) {
      task_runs.push_back(i);
    }
  }
  task_runs.push_back(static_cast<int64_t>(runs.size()));
  run_tasks(static_cast<int64_t>(task_runs.size()) - 1, [&] {
    return [&, offsets = std::vector<int64_t>(pb.taps() * tile),
            cols = std::vector<acc_t>(window * ld_tile),
            products = std::vector<acc_t>(out_channels * ld_tile),
            converted = std::vector<acc_t>(kConvert ? out_channels * window : 0)](
               int64_t task) mutable {
      for (int64_t r = task_runs[task]; r < task_runs[task + 1]; ++r) {
        const Run& run = runs[r];
        const int64_t b = run.group / pb.regions;
        const acc_t* filter =
            filter_in(weight_data + run.group * out_channels * window, out_channels * window,
                      converted);
        for (int64_t first = run.first; first < run.first + run.count; first += tile) {
          const int64_t count = std::min(tile, run.first + run.count - first);
          const int64_t ld = drconv::small_gemm::padded_columns(count);
          const int64_t* pixels = groups.order.data() + first;
          tap_offsets(pb, pixels, count, offsets.data());
          gather_planes(pb, in + b * in_sample, offsets.data(), count, 0, pb.channels, ld, 1,
                        cols.data());
          small_product(out_channels, count, window, filter, window, 1, cols.data(), ld,
                        products.data(), ld, false);
          for (int64_t o = 0; o < out_channels; ++o) {
            scalar_t* dst = out + (b * out_channels + o) * out_plane;
            const acc_t* src = products.data() + o * ld;
            for (int64_t i = 0; i < count; ++i) {
              dst[pixels[i]] = scalar_t(src[i] + bias_acc[o]);
            }
          }
        }
      }
    };
  });
}

template <typename scalar_t>
void forward_rows(const Problem& pb, const Tensor& input, const Tensor& weight,
                  const Groups& groups, const c10::optional<Tensor>& bias, Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<acc_t, scalar_t>::value;
  const Tensor rows = as_rows(input, c10::CppTypeToScalarType<acc_t>::value);
  const acc_t* rows_data = rows.data_ptr<acc_t>();
  const scalar_t* weight_data = weight.data_ptr<scalar_t>();
  const int64_t window = pb.window(), out_channels = pb.out_channels;
  const int64_t sample_values = pb.height * pb.width * pb.channels;
  const std::vector<acc_t> bias_acc = bias_values<acc_t>(bias, out_channels);
  const int64_t tile = tile_pixels(window);
  // Largest first, so that the small ones fill the gaps at the end.
  std::vector<Run> runs = forward_runs(pb, groups, tile);
  std::sort(runs.begin(), runs.end(), std::greater<>());
  scalar_t* out = output.data_ptr<scalar_t>();
  const int64_t stride_b = pb.out_pixels() * out_channels;
  run_tasks(static_cast<int64_t>(runs.size()), [&] {
    return [&, cols = std::vector<acc_t>(tile * window),
            products = std::vector<acc_t>(tile * out_channels),
            prepared = std::vector<acc_t>(out_channels * window)](int64_t task) mutable {
      const Run& run = runs[task];
      const int64_t b = run.group / pb.regions;
      const bool tap_major = pb.tap_major(groups.size(run.group));
      const scalar_t* source = weight_data + run.group * out_channels * window;
      const acc_t* filter = reinterpret_cast<const acc_t*>(source);
      if (kConvert || pb.reorders_filter(groups.size(run.group))) {
        const auto copy = [&](int64_t from, int64_t to) { prepared[to] = acc_t(source[from]); };
        DRCONV_BY_ORDER(tap_major, for_each_filter_value, pb, 0, pb.channels, copy);
        filter = prepared.data();
      }
      for (int64_t first = run.first; first < run.first + run.count; first += tile) {
        const int64_t count = std::min(tile, run.first + run.count - first);
        const int64_t* pixels = groups.order.data() + first;
        DRCONV_BY_ORDER(tap_major, gather_tile, pb, rows_data + b * sample_values, pixels,
                        count, 0, pb.channels, cols.data());
        Tensor tile_products = matrix(products.data(), count, out_channels, out_channels);
        at::mm_out(tile_products, matrix(cols.data(), count, window, window),
                   matrix(filter, out_channels, window, window).t());
        for (int64_t i = 0; i < count; ++i) {
          scalar_t* dst = out + b * stride_b + pixels[i] * out_channels;
          const acc_t* src = products.data() + i * out_channels;
          for (int64_t o = 0; o < out_channels; ++o) {
            dst[o] = scalar_t(src[o] + bias_acc[o]);
          }
        }
      }
    };
  });
}

Tensor region_forward(const Tensor& input, const Tensor& weight, const Tensor& regions,
                      const c10::optional<Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Problem pb = make_problem(input, weight, regions, stride, padding, dilation);
  check_bias(pb, bias, input);
  // Off the planes, results go to their pixels in channels-last rows, one contiguous row per
  // pixel: a pixel's values in O planes of a map larger than the cache would be O scattered
  // writes, each to a cache line that the other regions' pixels write again. NCHW results are
  // then one sequential transposition of those rows.
  const bool planar = works_on_planes(pb, input);
  Tensor output = at::empty({pb.batch, pb.out_channels, pb.out_h, pb.out_w},
                            input.options().memory_format(memory_format(planar)));
  if (output.numel() == 0) {
    return output.contiguous(conv_memory_format(input));
  }
  const Groups groups = sort_by_region(pb, regions);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                  "drconv_region_forward", [&] {
                                    if (planar) {
                                      forward_planes<scalar_t>(pb, input, weight, groups, bias,
                                                               output);
                                    } else {
                                      forward_rows<scalar_t>(pb, input, weight, groups, bias,
                                                             output);
                                    }
                                  });
  return output.contiguous(conv_memory_format(input));
}

// The backward pass's tasks are (sample, block of input channels): a task owns those channels
// of the sample's input gradient and of its m filters' gradients, so no two tasks write the same
// value. Overlapping windows (kernel larger than stride) add to the same input values, which
// within one task happens in order; tasks over pixels would race there, and per-thread copies
// of the input gradient would cost a full-size buffer per thread. All tasks have the same
// number of pixels, so they are evenly sized; channel blocks are cut finer where the samples
// alone are too few for the threads.
struct ChannelBlocks {
  int64_t size, count;
};

ChannelBlocks channel_blocks(const Problem& pb) {
  const int64_t wanted = std::min(std::max<int64_t>(1, pb.channels / kMinBlockChannels),
                                  (at::get_num_threads() + pb.batch - 1) / pb.batch);
  const int64_t size = (pb.channels + wanted - 1) / wanted;
  return {size, (pb.channels + size - 1) / size};
}

// Zeros channels [first, first + block) of a filter gradient (O, C * taps): a region without
// pixels has a zero gradient.
template <typename scalar_t>
void zero_filter_block(const Problem& pb, scalar_t* grad_filter, int64_t first, int64_t block) {
  for (int64_t o = 0; o < pb.out_channels; ++o) {
    std::fill_n(grad_filter + o * pb.window() + first * pb.taps(), block * pb.taps(),
                scalar_t(0));
  }
}

// The NCHW planes that the gradients on planes read: the input and the output gradient.
template <typename scalar_t>
struct GradientPlanes {
  const Tensor input, grad_output;
  const scalar_t* in;
  const scalar_t* grad_out;

  GradientPlanes(const Tensor& input_, const Tensor& grad_output_)
      : input(input_.contiguous()),
        grad_output(grad_output_.contiguous()),
        in(input.data_ptr<scalar_t>()),
        grad_out(grad_output.data_ptr<scalar_t>()) {}

  // The output gradients of a tile of sample b's pixels as columns: grads[o * ld + i].
  template <typename acc_t>
  void gather_grads(const Problem& pb, int64_t b, const int64_t* pixels, int64_t count,
                    int64_t ld, acc_t* grads) const {
    for (int64_t o = 0; o < pb.out_channels; ++o) {
      const scalar_t* src = grad_out + (b * pb.out_channels + o) * pb.out_pixels();
      acc_t* dst = grads + o * ld;
      for (int64_t i = 0; i < count; ++i) {
        dst[i] = acc_t(src[pixels[i]]);
      }
    }
  }
};

// On planes: a tile's output gradients as columns, products by small_gemm.h, the input
// gradient added to the planes of the computation's dtype in `grad_planes`.
template <typename scalar_t>
void backward_planes(const Problem& pb, const Tensor& input, const Tensor& weight,
                     const Groups& groups, const Tensor& grad_output, Tensor* grad_planes,
                     Tensor* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<acc_t, scalar_t>::value;
  const GradientPlanes<scalar_t> planes(input, grad_output);
  const scalar_t* weight_data = weight.data_ptr<scalar_t>();
  acc_t* grad_in = grad_planes ? grad_planes->data_ptr<acc_t>() : nullptr;
  scalar_t* grad_weight_data = grad_weight ? grad_weight->data_ptr<scalar_t>() : nullptr;
  const int64_t taps = pb.taps(), window = pb.window(), out_channels = pb.out_channels;
  const int64_t in_plane = pb.height * pb.width;
  const ChannelBlocks blocks = channel_blocks(pb);
  const int64_t block_width = blocks.size * taps;
  const int64_t tile = planar_tile_pixels(std::max(block_width, out_channels));
  const int64_t ld_tile = drconv::small_gemm::padded_columns(tile);
  const int64_t ld_width = drconv::small_gemm::padded_columns(block_width);

  run_tasks(pb.batch * blocks.count, [&] {
    return [&, offsets = std::vector<int64_t>(taps * tile),
            grads = std::vector<acc_t>(out_channels * ld_tile),
            cols = std::vector<acc_t>(grad_weight ? tile * ld_width : 0),
            grad_cols = std::vector<acc_t>(grad_planes ? block_width * ld_tile : 0),
            converted = std::vector<acc_t>(kConvert && grad_planes ? out_channels * window : 0),
            grad_filter = std::vector<acc_t>(grad_weight ? out_channels * ld_width : 0)](
               int64_t task) mutable {
      const int64_t b = task / blocks.count, first = (task % blocks.count) * blocks.size;
      const int64_t channels = std::min(blocks.size, pb.channels - first);
      const int64_t width = channels * taps;
      for (int64_t r = 0; r < pb.regions; ++r) {
        const int64_t g = b * pb.regions + r;
        scalar_t* grad_filter_dest =
            grad_weight ? grad_weight_data + g * out_channels * window : nullptr;
        if (groups.size(g) == 0) {
          if (grad_weight) {
            zero_filter_block(pb, grad_filter_dest, first, channels);
          }
          continue;
        }
        const acc_t* filter = nullptr;
        if (grad_planes) {
          filter = filter_columns_in(weight_data + g * out_channels * window, out_channels,
                                     window, first * taps, width, converted);
        }
        for (int64_t start = groups.start[g]; start < groups.start[g + 1]; start += tile) {
          const int64_t count = std::min(tile, groups.start[g + 1] - start);
          const int64_t ld = drconv::small_gemm::padded_columns(count);
          const int64_t* pixels = groups.order.data() + start;
          tap_offsets(pb, pixels, count, offsets.data());
          planes.gather_grads(pb, b, pixels, count, ld, grads.data());
          if (grad_weight) {
            gather_planes(pb, planes.in + b * pb.channels * in_plane, offsets.data(), count, first,
                          channels, 1, ld_width, cols.data());
            small_product(out_channels, width, count, grads.data(), ld, 1, cols.data(), ld_width,
                          grad_filter.data(), ld_width, start != groups.start[g]);
          }
          if (grad_planes) {
            small_product(width, count, out_channels, filter, 1, window, grads.data(), ld,
                          grad_cols.data(), ld, false);
            for (int64_t c = 0; c < channels; ++c) {
              acc_t* plane = grad_in + (b * pb.channels + first + c) * in_plane;
              for (int64_t t = 0; t < taps; ++t) {
                const acc_t* src = grad_cols.data() + (c * taps + t) * ld;
                const int64_t* offset = offsets.data() + t * count;
                for (int64_t i = 0; i < count; ++i) {
                  if (offset[i] >= 0) {
                    plane[offset[i]] += src[i];
                  }
                }
              }
            }
          }
        }
        if (grad_weight) {
          for (int64_t o = 0; o < out_channels; ++o) {
            std::transform(grad_filter.data() + o * ld_width,
                           grad_filter.data() + o * ld_width + width,
                           grad_filter_dest + o * window + first * taps,
                           [](acc_t value) { return scalar_t(value); });
          }
        }
      }
    };
  });
}

// On rows: tiles of windows gathered as rows, at::mm, the input gradient added to channels-last
// rows of the computation's dtype in `grad_rows`.
template <typename scalar_t>
void backward_rows(const Problem& pb, const Tensor& input, const Tensor& weight,
                   const Groups& groups, const Tensor& grad_output, Tensor* grad_rows,
                   Tensor* grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<acc_t, scalar_t>::value;
  constexpr at::ScalarType kAccType = c10::CppTypeToScalarType<acc_t>::value;
  const Tensor rows = as_rows(input, kAccType);
  const Tensor grad_output_rows = as_rows(grad_output, kAccType);
  const acc_t* rows_data = rows.data_ptr<acc_t>();
  const acc_t* grad_out = grad_output_rows.data_ptr<acc_t>();
  acc_t* grad_rows_data = grad_rows ? grad_rows->data_ptr<acc_t>() : nullptr;
  scalar_t* grad_weight_data = grad_weight ? grad_weight->data_ptr<scalar_t>() : nullptr;
  const scalar_t* weight_data = weight.data_ptr<scalar_t>();
  const int64_t taps = pb.taps(), window = pb.window(), out_channels = pb.out_channels;
  const int64_t sample_values = pb.height * pb.width * pb.channels;
  const ChannelBlocks blocks = channel_blocks(pb);
  const int64_t block_width = blocks.size * taps;
  const int64_t tile = tile_pixels(std::max(block_width, out_channels));

  run_tasks(pb.batch * blocks.count, [&] {
    return [&, cols = std::vector<acc_t>(tile * block_width),
            grads = std::vector<acc_t>(tile * out_channels),
            grad_cols = std::vector<acc_t>(grad_rows ? tile * block_width : 0),
            filter_block = std::vector<acc_t>(grad_rows ? out_channels * block_width : 0),
            grad_filter_block = std::vector<acc_t>(grad_weight ? out_channels * block_width : 0)](
               int64_t task) mutable {
      const int64_t b = task / blocks.count, first = (task % blocks.count) * blocks.size;
      const int64_t channels = std::min(blocks.size, pb.channels - first);
      const int64_t width = channels * taps;
      for (int64_t r = 0; r < pb.regions; ++r) {
        const int64_t g = b * pb.regions + r, count_all = groups.size(g);
        const scalar_t* filter_source = weight_data + g * out_channels * window;
        scalar_t* grad_filter_dest =
            grad_weight ? grad_weight_data + g * out_channels * window : nullptr;
        if (count_all == 0) {
          if (grad_weight) {
            zero_filter_block(pb, grad_filter_dest, first, channels);
          }
          continue;
        }
        const bool tap_major = pb.tap_major(count_all);
        // The filter block and its gradient: in place (channel-major columns of the filter,
        // row stride `window`) unless converted or reordered.
        const bool in_place = !kConvert && !pb.reorders_filter(count_all);
        const int64_t ld = in_place ? window : width;
        const acc_t* filter = in_place
                                  ? reinterpret_cast<const acc_t*>(filter_source) + first * taps
                                  : filter_block.data();
        acc_t* grad_filter = !grad_weight ? nullptr
                             : in_place   ? reinterpret_cast<acc_t*>(grad_filter_dest) + first * taps
                                          : grad_filter_block.data();
        if (!in_place && grad_rows) {
          const auto copy = [&](int64_t from, int64_t to) {
            filter_block[to] = acc_t(filter_source[from]);
          };
          DRCONV_BY_ORDER(tap_major, for_each_filter_value, pb, first, channels, copy);
        }
        for (int64_t start = groups.start[g]; start < groups.start[g + 1]; start += tile) {
          const int64_t count = std::min(tile, groups.start[g + 1] - start);
          const int64_t* pixels = groups.order.data() + start;
          for (int64_t i = 0; i < count; ++i) {
            std::copy_n(grad_out + (b * pb.out_pixels() + pixels[i]) * out_channels,
                        out_channels, grads.data() + i * out_channels);
          }
          const Tensor tile_grads = matrix(grads.data(), count, out_channels, out_channels);
          if (grad_weight) {
            DRCONV_BY_ORDER(tap_major, gather_tile, pb, rows_data + b * sample_values, pixels,
                            count, first, channels, cols.data());
            Tensor tile_grad_filter = matrix(grad_filter, out_channels, width, ld);
            const Tensor tile_cols = matrix(cols.data(), count, width, width);
            if (start == groups.start[g]) {
              at::mm_out(tile_grad_filter, tile_grads.t(), tile_cols);
            } else {
              tile_grad_filter.addmm_(tile_grads.t(), tile_cols);
            }
          }
          if (grad_rows) {
            Tensor tile_grad_cols = matrix(grad_cols.data(), count, width, width);
            at::mm_out(tile_grad_cols, tile_grads, matrix(filter, out_channels, width, ld));
            DRCONV_BY_ORDER(tap_major, add_tile, pb, grad_rows_data + b * sample_values, pixels,
                            count, first, channels, grad_cols.data());
          }
        }
        if (grad_weight && !in_place) {
          const auto store = [&](int64_t to, int64_t from) {
            grad_filter_dest[to] = scalar_t(grad_filter_block[from]);
          };
          DRCONV_BY_ORDER(tap_major, for_each_filter_value, pb, first, channels, store);
        }
      }
    };
  });
}

std::tuple<c10::optional<Tensor>, c10::optional<Tensor>> region_backward(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight, const Tensor& regions,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool need_input,
    bool need_weight) {
  const Problem pb = make_problem(input, weight, regions, stride, padding, dilation);
  check_grad_output(pb, grad_output, input);
  const at::ScalarType dtype = input.scalar_type();
  const at::ScalarType acc_type = at::toOpMathType(dtype);
  const at::MemoryFormat input_format = conv_memory_format(input);
  // The input gradient is accumulated in the input map's layout (planes or rows) of the
  // computation's dtype: in the result itself where that is such a tensor.
  const bool planar = works_on_planes(pb, input);
  const bool accumulates_in_result = acc_type == dtype && input_format == memory_format(planar);
  Tensor grad_accumulated, grad_weight;
  if (need_input) {
    // at::zeros takes no memory format
    grad_accumulated =
        at::empty(input.sizes(),
                  input.options().dtype(acc_type).memory_format(memory_format(planar)))
            .zero_();
  }
  if (need_weight) {
    // Every value is written: products of a region's pixels, zeros for a region without any.
    grad_weight = at::empty(weight.sizes(), weight.options());
  }
  if ((need_input || need_weight) && grad_output.numel() > 0 && pb.channels > 0) {
    const Groups groups = sort_by_region(pb, regions);
    Tensor* grad_input_ptr = need_input ? &grad_accumulated : nullptr;
    Tensor* grad_weight_ptr = need_weight ? &grad_weight : nullptr;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "drconv_region_backward", [&] {
      if (planar) {
        backward_planes<scalar_t>(pb, input, weight, groups, grad_output, grad_input_ptr,
                                  grad_weight_ptr);
      } else {
        backward_rows<scalar_t>(pb, input, weight, groups, grad_output, grad_input_ptr,
                                grad_weight_ptr);
      }
    });
  }
  c10::optional<Tensor> grad_input;
  if (need_input) {
    grad_input = accumulates_in_result ? grad_accumulated
                                       : grad_accumulated.to(dtype).contiguous(input_format);
  }
  c10::optional<Tensor> grad_weight_result;
  if (need_weight) {
    grad_weight_result = grad_weight;
  }
  return {grad_input, grad_weight_result};
}

// The guide's straight-through gradient needs every region's response at every pixel (Eq. 7):
// dots[b, j, p] = <grad_output[b, :, p], weight[b, j] window(b, p)>, m convolutions of work. On
// planes a tile of a sample's pixels (in raster order, all regions alike) is gathered once, and
// each region's responses are a small product whose dot products with the tile's output
// gradients are taken while both are in the cache. Off the planes the maps are large, and a
// backend's grouped convolutions over whole maps are faster: the result is then None.
template <typename scalar_t>
void guide_dots_planes(const Problem& pb, const Tensor& input, const Tensor& weight,
                       const Tensor& grad_output, Tensor& dots) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kConvert = !std::is_same<acc_t, scalar_t>::value;
  const GradientPlanes<scalar_t> planes(input, grad_output);
  const scalar_t* weight_data = weight.data_ptr<scalar_t>();
  acc_t* dots_data = dots.data_ptr<acc_t>();
  const int64_t window = pb.window(), out_channels = pb.out_channels;
  const int64_t in_sample = pb.channels * pb.height * pb.width, out_plane = pb.out_pixels();
  const int64_t filters = pb.regions * out_channels * window;
  const int64_t tile = planar_tile_pixels(std::max(window, out_channels));
  const int64_t ld_tile = drconv::small_gemm::padded_columns(tile);
  const int64_t tiles = (out_plane + tile - 1) / tile;
  run_tasks(pb.batch * tiles, [&] {
    return [&, pixels = std::vector<int64_t>(tile), offsets = std::vector<int64_t>(pb.taps() * tile),
            cols = std::vector<acc_t>(window * ld_tile),
            grads = std::vector<acc_t>(out_channels * ld_tile),
            responses = std::vector<acc_t>(out_channels * ld_tile),
            converted = std::vector<acc_t>(kConvert ? filters : 0),
            converted_sample = int64_t(-1)](int64_t task) mutable {
      const int64_t b = task / tiles, first = (task % tiles) * tile;
      // A thread takes the tasks of a sample one after another: half types convert the
      // sample's filters once for all of them.
      const acc_t* sample_filters =
          kConvert && converted_sample == b
              ? converted.data()
              : filter_in(weight_data + b * filters, filters, converted);
      converted_sample = b;
      const int64_t count = std::min(tile, out_plane - first);
      const int64_t ld = drconv::small_gemm::padded_columns(count);
      for (int64_t i = 0; i < count; ++i) {
        pixels[i] = first + i;
      }
      tap_offsets(pb, pixels.data(), count, offsets.data());
      gather_planes(pb, planes.in + b * in_sample, offsets.data(), count, 0, pb.channels, ld, 1,
                    cols.data());
      planes.gather_grads(pb, b, pixels.data(), count, ld, grads.data());
      for (int64_t r = 0; r < pb.regions; ++r) {
        small_product(out_channels, count, window, sample_filters + r * out_channels * window,
                      window, 1, cols.data(), ld, responses.data(), ld, false);
        acc_t* dst = dots_data + (b * pb.regions + r) * out_plane + first;
        std::fill_n(dst, count, acc_t(0));
        for (int64_t o = 0; o < out_channels; ++o) {
          const acc_t* response = responses.data() + o * ld;
          const acc_t* grad = grads.data() + o * ld;
          for (int64_t i = 0; i < count; ++i) {
            dst[i] += response[i] * grad[i];
          }
        }
      }
    };
  });
}

c10::optional<Tensor> guide_dots(const Tensor& grad_output, const Tensor& input,
                                 const Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  const Problem pb = make_problem(input, weight, c10::nullopt, stride, padding, dilation);
  check_grad_output(pb, grad_output, input);
  if (!works_on_planes(pb, input)) {
    return c10::nullopt;
  }
  Tensor dots = at::empty({pb.batch, pb.regions, pb.out_h, pb.out_w},
                          input.options().dtype(at::toOpMathType(input.scalar_type())));
  if (dots.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                    "drconv_guide_dots", [&] {
                                      guide_dots_planes<scalar_t>(pb, input, weight, grad_output,
                                                                  dots);
                                    });
  }
  return dots;
}

// Whether calls with these arguments work on NCHW planes (the rule of works_on_planes above).
bool works_on_planes_op(const Tensor& input, const Tensor& weight, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  return works_on_planes(make_problem(input, weight, c10::nullopt, stride, padding, dilation),
                         input);
}

}  // namespace

TORCH_LIBRARY(drconv_cpu, m) {
  m.def("region_forward(Tensor input, Tensor weight, Tensor regions, Tensor? bias, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor");
  m.def("region_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor regions, "
        "int[] stride, int[] padding, int[] dilation, bool need_input, bool need_weight) "
        "-> (Tensor?, Tensor?)");
  m.def("guide_dots(Tensor grad_output, Tensor input, Tensor weight, int[] stride, "
        "int[] padding, int[] dilation) -> Tensor?");
  m.def("works_on_planes(Tensor input, Tensor weight, int[] stride, int[] padding, "
        "int[] dilation) -> bool");
}

TORCH_LIBRARY_IMPL(drconv_cpu, CPU, m) {
  m.impl("region_forward", &region_forward);
  m.impl("region_backward", &region_backward);
  m.impl("guide_dots", &guide_dots);
  m.impl("works_on_planes", &works_on_planes_op);
}

// The ops are registered when the library loads; the module makes it importable, and tells which
// instruction set small_gemm.h's products use in this process.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("instruction_set", &drconv::small_gemm::instruction_set_name);
}
