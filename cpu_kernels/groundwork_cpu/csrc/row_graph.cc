// The propagation graph on CPU (groundwork_cpu/row_graph.py `RowGraph`):
// W = D^-1/2 (A + A^T) D^-1/2 laid out row by row from the kNN lists, and W @ p over those
// rows. Both are XLA FFI handlers.
//
// Why native: laying W out with NumPy takes one sort of the 2Nk directed edges, and XLA's
// gather-and-sum product runs on one thread (XLA on CPU scatters one update at a time, far
// slower than it gathers). Here the rows come from counting (each row's in-edges arrive
// sorted by source) and one pass per row with marks instead of a sort; the product runs on
// every core, the classes of a neighbour read by vector loads. NOTES.md has the timings.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdint>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

#include "build_info.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------------------- graph

// Row r of A + A^T from its kNN list (edges r -> j, affinities `forward`) and its in-edges
// (sources `backward`, affinities `backward_affinity`, sorted by source): first the columns
// of its list in slot order, then the sources not in it; a column met more than once (a mutual
// pair, or a repeat) makes one entry holding the sum. `stamp`/`slot` [n] are the calling
// thread's marks of which columns the row has so far (stamp == `mark`, a value no other pass
// of this thread uses) and where. Returns the number of entries; writes them only if Write.
template <bool Write>
int32_t RowEntries(const int32_t* neighbours, const float* forward, int64_t k,
                   const int32_t* backward, const float* backward_affinity, int64_t in_count,
                   int32_t mark, int32_t* stamp, int32_t* slot, int32_t* column, float* weight) {
  int32_t size = 0;
  auto add = [&](int32_t j, float a) {
    if (stamp[j] == mark) {
      if (Write) weight[slot[j]] += a;
      return;
    }
    stamp[j] = mark;
    if (Write) {
      slot[j] = size;
      column[size] = j;
      weight[size] = a;
    }
    ++size;
  };
  for (int64_t m = 0; m < k; ++m) add(neighbours[m], forward[m]);
  for (int64_t b = 0; b < in_count; ++b) add(backward[b], backward_affinity[b]);
  return size;
}

// W for kNN lists `indices [n, k]` (values in [0, n)) with affinities `affinity [n, k]`:
// `row_start`, `row_length` [n], `column`, `weight` [2nk + 1] (past the entries: n and 0),
// and the degrees [n] of A + A^T. D^-1/2 is 0 at a node of degree 0, as the reference's
// `normalize_connection_graph` maps its inf to 0.
void Graph(const int32_t* indices, const float* affinity, int64_t n, int64_t k,
           int32_t* row_start, int32_t* row_length, int32_t* column, float* weight,
           float* degree) {
  const int64_t num_edges = n * k;
  const int threads = std::max(1, omp_get_max_threads());
  std::vector<int64_t> counts(static_cast<size_t>(threads) * n, 0);
  std::vector<int64_t> in_start(n + 1, 0), start(n + 1, 0);
  std::unique_ptr<int32_t[]> backward(new int32_t[num_edges]);
  std::unique_ptr<float[]> backward_affinity(new float[num_edges]);
  std::vector<float> scale(n);
#pragma omp parallel num_threads(threads)
  {
    // Each thread counts the in-edges of its share of sources; a row's in-edges are then laid
    // out thread by thread, so they come out sorted by source without a sort.
    const int t = omp_get_thread_num();
    const int64_t first = n * t / threads, last = n * (t + 1) / threads;
    int64_t* mine = counts.data() + static_cast<size_t>(t) * n;
    for (int64_t e = first * k; e < last * k; ++e) ++mine[indices[e]];
#pragma omp barrier
#pragma omp single
    for (int64_t j = 0; j < n; ++j) {
      int64_t offset = in_start[j];
      for (int s = 0; s < threads; ++s) {
        const int64_t count = counts[static_cast<size_t>(s) * n + j];
        counts[static_cast<size_t>(s) * n + j] = offset;
        offset += count;
      }
      in_start[j + 1] = offset;
    }
    for (int64_t i = first; i < last; ++i) {
      for (int64_t e = i * k; e < (i + 1) * k; ++e) {
        const int64_t at = mine[indices[e]]++;
        backward[at] = static_cast<int32_t>(i);
        backward_affinity[at] = affinity[e];
      }
    }
    // Rows are counted, then written where the counts put them. A stamp marks row r's columns:
    // r while counting, n + r while writing.
    std::vector<int32_t> stamp(n, -1), slot(n);
#pragma omp barrier
#pragma omp for schedule(dynamic, 256)
    for (int64_t r = 0; r < n; ++r) {
      start[r + 1] = RowEntries<false>(indices + r * k, affinity + r * k, k,
                                       backward.get() + in_start[r],
                                       backward_affinity.get() + in_start[r],
                                       in_start[r + 1] - in_start[r], static_cast<int32_t>(r),
                                       stamp.data(), nullptr, nullptr, nullptr);
    }
#pragma omp single
    for (int64_t r = 0; r < n; ++r) {
      row_length[r] = static_cast<int32_t>(start[r + 1]);
      start[r + 1] += start[r];
      row_start[r] = static_cast<int32_t>(start[r]);
    }
#pragma omp for schedule(dynamic, 256)
    for (int64_t r = 0; r < n; ++r) {
      const int64_t at = start[r];
      const int32_t length =
          RowEntries<true>(indices + r * k, affinity + r * k, k, backward.get() + in_start[r],
                           backward_affinity.get() + in_start[r], in_start[r + 1] - in_start[r],
                           static_cast<int32_t>(n + r), stamp.data(), slot.data(), column + at,
                           weight + at);
      float sum = 0.0f;
      for (int32_t e = 0; e < length; ++e) sum += weight[at + e];
      degree[r] = sum;
      scale[r] = sum > 0.0f ? 1.0f / std::sqrt(sum) : 0.0f;
    }
#pragma omp for schedule(dynamic, 256) nowait
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t e = start[r]; e < start[r + 1]; ++e) weight[e] *= scale[r] * scale[column[e]];
    }
    // Past the entries (often 40% of the room): column n, weight 0.
#pragma omp for schedule(static)
    for (int64_t e = start[n]; e < 2 * num_edges + 1; ++e) {
      column[e] = static_cast<int32_t>(n);
      weight[e] = 0.0f;
    }
  }
}

ffi::Error GraphHandler(ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> affinity,
                        ffi::ResultBuffer<ffi::S32> row_start,
                        ffi::ResultBuffer<ffi::S32> row_length,
                        ffi::ResultBuffer<ffi::S32> column, ffi::ResultBuffer<ffi::F32> weight,
                        ffi::ResultBuffer<ffi::F32> degree) {
  auto dims = indices.dimensions();
  if (dims.size() != 2 || affinity.element_count() != indices.element_count()) {
    return ffi::Error::InvalidArgument("kNN graph: indices and affinities must both be [N, k]");
  }
  const int64_t n = dims[0], k = dims[1];
  if (2 * n * k + 1 > INT32_MAX) {
    return ffi::Error::InvalidArgument("kNN graph: 2Nk + 1 entries must fit int32 positions");
  }
  const int32_t* idx = indices.typed_data();
  if (std::any_of(idx, idx + n * k, [n](int32_t j) { return j < 0 || j >= n; })) {
    return ffi::Error::InvalidArgument("kNN graph: every index must lie in [0, N)");
  }
  // element_count() is a size_t; n and k are dimensions, never negative.
  const auto rows = static_cast<size_t>(n), entries = static_cast<size_t>(2 * n * k + 1);
  if (row_start->element_count() != rows || row_length->element_count() != rows ||
      degree->element_count() != rows || column->element_count() != entries ||
      weight->element_count() != entries) {
    return ffi::Error::InvalidArgument("kNN graph: outputs must be [N] and [2Nk + 1]");
  }
  Graph(indices.typed_data(), affinity.typed_data(), n, k, row_start->typed_data(),
        row_length->typed_data(), column->typed_data(), weight->typed_data(),
        degree->typed_data());
  return ffi::Error::Success();
}

// ---------------------------------------------------------------------------------- matvec

// out[r] = sum over r's entries e of weight[e] * p[column[e]], for rows [first, last); p and
// out have `width` values a row. A row's values are summed in Chunks 16-wide registers at a
// time (the last masked), so each entry is read once per 16 Chunks values of its row.
template <int Chunks>
__attribute__((target("avx512f"))) void RowSpanAvx512(const int32_t* row_start,
                                                      const int32_t* degree,
                                                      const int32_t* column, const float* weight,
                                                      const float* p, int64_t width,
                                                      int64_t offset, int64_t first, int64_t last,
                                                      float* out) {
  __mmask16 mask[Chunks];
  for (int q = 0; q < Chunks; ++q) {
    const int64_t left = width - offset - 16 * q;
    mask[q] = left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1);
  }
  // Ways entries at a time into separate sums: an FMA waits 4 cycles for its sum, so a row of
  // one or two chunks would otherwise wait on the previous entry's.
  constexpr int Ways = Chunks >= 4 ? 1 : 4 / Chunks;
  for (int64_t r = first; r < last; ++r) {
    __m512 sum[Ways][Chunks];
    for (int u = 0; u < Ways; ++u) {
      for (int q = 0; q < Chunks; ++q) sum[u][q] = _mm512_setzero_ps();
    }
    int64_t e = row_start[r];
    const int64_t end = e + degree[r];
    for (; e + Ways <= end; e += Ways) {
      for (int u = 0; u < Ways; ++u) {
        const __m512 w = _mm512_set1_ps(weight[e + u]);
        const float* source = p + static_cast<int64_t>(column[e + u]) * width + offset;
        for (int q = 0; q < Chunks; ++q) {
          sum[u][q] =
              _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(mask[q], source + 16 * q), sum[u][q]);
        }
      }
    }
    for (int u = 0; e < end; ++e, ++u) {
      const __m512 w = _mm512_set1_ps(weight[e]);
      const float* source = p + static_cast<int64_t>(column[e]) * width + offset;
      for (int q = 0; q < Chunks; ++q) {
        sum[u][q] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(mask[q], source + 16 * q), sum[u][q]);
      }
    }
    for (int q = 0; q < Chunks; ++q) {
      for (int u = 1; u < Ways; ++u) sum[0][q] = _mm512_add_ps(sum[0][q], sum[u][q]);
      _mm512_mask_storeu_ps(out + r * width + offset + 16 * q, mask[q], sum[0][q]);
    }
  }
}

__attribute__((target("avx512f"))) void RowsAvx512(const int32_t* row_start,
                                                   const int32_t* degree, const int32_t* column,
                                                   const float* weight, const float* p,
                                                   int64_t width, int64_t first, int64_t last,
                                                   float* out) {
  for (int64_t offset = 0; offset < width; offset += 128) {
    const int64_t chunks = std::min<int64_t>(8, (width - offset + 15) / 16);
    auto span = chunks == 1   ? RowSpanAvx512<1>
                : chunks == 2 ? RowSpanAvx512<2>
                : chunks == 3 ? RowSpanAvx512<3>
                : chunks == 4 ? RowSpanAvx512<4>
                : chunks == 5 ? RowSpanAvx512<5>
                : chunks == 6 ? RowSpanAvx512<6>
                : chunks == 7 ? RowSpanAvx512<7>
                              : RowSpanAvx512<8>;
    span(row_start, degree, column, weight, p, width, offset, first, last, out);
  }
}

void RowsPlain(const int32_t* row_start, const int32_t* degree, const int32_t* column,
               const float* weight, const float* p, int64_t width, int64_t first, int64_t last,
               float* out) {
  for (int64_t r = first; r < last; ++r) {
    float* o = out + r * width;
    std::fill(o, o + width, 0.0f);
    for (int64_t e = row_start[r], end = e + degree[r]; e < end; ++e) {
      const float w = weight[e];
      const float* q = p + static_cast<int64_t>(column[e]) * width;
      for (int64_t c = 0; c < width; ++c) o[c] += w * q[c];
    }
  }
}

using RowsFn = void (*)(const int32_t*, const int32_t*, const int32_t*, const float*,
                        const float*, int64_t, int64_t, int64_t, float*);

ffi::Error RowProduct(ffi::Buffer<ffi::S32> row_start, ffi::Buffer<ffi::S32> degree,
                     ffi::Buffer<ffi::S32> column, ffi::Buffer<ffi::F32> weight,
                     ffi::Buffer<ffi::F32> p, ffi::ResultBuffer<ffi::F32> out) {
  auto dims = p.dimensions(), out_dims = out->dimensions();
  const auto n = static_cast<int64_t>(row_start.element_count());
  if (dims.size() != 2 || dims[0] != n || out_dims.size() != 2 || out_dims[0] != n ||
      out_dims[1] != dims[1]) {
    return ffi::Error::InvalidArgument("row product: p and W @ p must be [N, C]");
  }
  const int64_t width = dims[1];
  if (degree.element_count() != row_start.element_count() ||
      column.element_count() != weight.element_count()) {
    return ffi::Error::InvalidArgument("row product: rows, degrees and entries disagree");
  }
  static const RowsFn rows = __builtin_cpu_supports("avx512f") ? RowsAvx512 : RowsPlain;
  const int threads = std::max(1, omp_get_max_threads());
  // Rows in blocks handed out on demand: the hubs of a kNN graph have 10-100x the entries
  // of a typical row.
  constexpr int64_t kBlock = 512;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t b = 0; b < (n + kBlock - 1) / kBlock; ++b) {
    rows(row_start.typed_data(), degree.typed_data(), column.typed_data(), weight.typed_data(),
         p.typed_data(), width, b * kBlock, std::min(n, (b + 1) * kBlock), out->typed_data());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuRowGraph, GraphHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuRowProduct, RowProduct,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
