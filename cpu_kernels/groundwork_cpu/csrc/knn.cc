// Exact k nearest neighbours by inner product on CPU: oneDNN matmul tiles, each scanned for
// candidates while it is still in cache.
//
// faiss's IndexFlatIP (the reference code's search) computes large similarity blocks with
// BLAS and then tests every entry against a per-row heap. Here each thread multiplies
// kQueryTile queries by kBaseTile database rows at a time (a 2 MB tile, near its core's
// cache) with oneDNN, then scans each row of the tile 16 values per vector compare against
// the row's current k-th best similarity; once a row's heap has filled almost no chunk holds
// a candidate, so the scan costs a fraction of a scalar heap test per value. The timings, and
// the other tile sizes tried, are in NOTES.md. groundwork_cpu/knn.py calls
// `groundwork_cpu_knn_search` through ctypes.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

#include "build_info.h"

namespace {

using dnnl::memory;
constexpr int64_t kQueryTile = 256;
constexpr int64_t kBaseTile = 2048;
constexpr int kChunk = 16;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// S[m, n] = sum_k Q[m, k] B[n, k] for row-major Q [m, d] and B [n, d] (B read transposed).
// Scratchpads are the caller's (user mode): the threads run the same primitive at once.
struct Product {
  dnnl::matmul primitive;
  size_t scratchpad_bytes;
};

const Product& GetProduct(int64_t m, int64_t n, int64_t d) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t>, Product> products;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = products.find({m, n, d});
  if (found != products.end()) return found->second;
  memory::desc q({m, d}, memory::data_type::f32, memory::format_tag::ab);
  memory::desc b({d, n}, memory::data_type::f32, memory::format_tag::ba);
  memory::desc s({m, n}, memory::data_type::f32, memory::format_tag::ab);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::matmul::primitive_desc pd(Engine(), q, b, s, attr);
  Product product{dnnl::matmul(pd), pd.scratchpad_desc().get_size()};
  return products.emplace(std::make_tuple(m, n, d), product).first->second;
}

// A row's k best so far: a min-heap on similarity, its root the k-th best (the threshold).
void SiftDown(float* values, int32_t* ids, int64_t size) {
  int64_t i = 0;
  while (true) {
    int64_t smallest = i, left = 2 * i + 1, right = left + 1;
    if (left < size && values[left] < values[smallest]) smallest = left;
    if (right < size && values[right] < values[smallest]) smallest = right;
    if (smallest == i) return;
    std::swap(values[i], values[smallest]);
    std::swap(ids[i], ids[smallest]);
    i = smallest;
  }
}

// The first position from `j` on, in steps of 16, whose 16 values hold one above `threshold`
// (or where fewer than 16 remain): one vector compare per 16 values. Compiled for AVX-512
// and AVX2 and picked at run time, so one build runs on any x86-64.
__attribute__((target("avx512f"))) int64_t SkipAvx512(const float* s, int64_t j, int64_t count,
                                                      float threshold) {
  const __m512 t = _mm512_set1_ps(threshold);
  for (; j + kChunk <= count; j += kChunk) {
    if (_mm512_cmp_ps_mask(_mm512_loadu_ps(s + j), t, _CMP_GT_OQ)) return j;
  }
  return j;
}

__attribute__((target("avx2"))) int64_t SkipAvx2(const float* s, int64_t j, int64_t count,
                                                 float threshold) {
  const __m256 t = _mm256_set1_ps(threshold);
  for (; j + kChunk <= count; j += kChunk) {
    __m256 above = _mm256_or_ps(_mm256_cmp_ps(_mm256_loadu_ps(s + j), t, _CMP_GT_OQ),
                                _mm256_cmp_ps(_mm256_loadu_ps(s + j + 8), t, _CMP_GT_OQ));
    if (_mm256_movemask_ps(above)) return j;
  }
  return j;
}

int64_t SkipPlain(const float* s, int64_t j, int64_t count, float threshold) {
  for (; j + kChunk <= count; j += kChunk) {
    for (int c = 0; c < kChunk; ++c) {
      if (s[j + c] > threshold) return j;
    }
  }
  return j;
}

using SkipFn = int64_t (*)(const float*, int64_t, int64_t, float);
SkipFn Skip() {
  static const SkipFn skip = __builtin_cpu_supports("avx512f") ? SkipAvx512
                             : __builtin_cpu_supports("avx2") ? SkipAvx2
                                                              : SkipPlain;
  return skip;
}

// Offers row `s` (similarities to database rows first_id, first_id + 1, ...) to the heap.
void ScanRow(const float* s, int64_t count, int32_t first_id, float* values, int32_t* ids,
             int64_t k) {
  const SkipFn skip = Skip();
  float threshold = values[0];
  int64_t j = 0;
  while (j < count) {
    j = skip(s, j, count, threshold);
    const int64_t end = std::min(j + kChunk, count);
    for (; j < end; ++j) {
      if (s[j] > threshold) {
        values[0] = s[j];
        ids[0] = first_id + static_cast<int32_t>(j);
        SiftDown(values, ids, k);
        threshold = values[0];
      }
    }
  }
}

// Best first; equal similarities by index, so the order does not depend on the tiling.
void SortRow(float* values, int32_t* ids, int64_t k) {
  std::vector<int64_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return values[a] != values[b] ? values[a] > values[b] : ids[a] < ids[b];
  });
  std::vector<float> v(k);
  std::vector<int32_t> i(k);
  for (int64_t r = 0; r < k; ++r) {
    v[r] = values[order[r]];
    i[r] = ids[order[r]];
  }
  std::memcpy(values, v.data(), k * sizeof(float));
  std::memcpy(ids, i.data(), k * sizeof(int32_t));
}

}  // namespace

// x: [n, d] row-major float32; writes the k most similar rows of each row (itself included,
// as a database search does) into sims/ids [n, k], best first. Returns 0, or 1 with a message.
extern "C" int groundwork_cpu_knn_search(const float* x, int64_t n, int64_t d, int64_t k,
                                         float* sims, int32_t* ids, char* error,
                                         int64_t error_size) {
  if (n <= 0 || d <= 0 || k <= 0 || k > n || n > std::numeric_limits<int32_t>::max()) {
    std::snprintf(error, error_size, "knn_search: need 0 < k <= n < 2^31, got n=%ld d=%ld k=%ld",
                  static_cast<long>(n), static_cast<long>(d), static_cast<long>(k));
    return 1;
  }
  const int64_t tiles = (n + kQueryTile - 1) / kQueryTile;
  try {
    // Primitives are made before the parallel region: oneDNN then runs each one on the
    // calling thread, and the threads split the query tiles between them.
    for (int64_t m : {std::min(kQueryTile, n), n % kQueryTile}) {
      for (int64_t b : {std::min(kBaseTile, n), n % kBaseTile}) {
        if (m > 0 && b > 0) GetProduct(m, b, d);
      }
    }
  } catch (const dnnl::error& e) {
    std::snprintf(error, error_size, "knn_search: oneDNN: %s", e.what());
    return 1;
  }
#pragma omp parallel
  {
    dnnl::stream stream(Engine());
    std::vector<float> tile(kQueryTile * kBaseTile);
    std::vector<char> scratchpad;
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t first = t * kQueryTile, rows = std::min(kQueryTile, n - first);
      float* values = sims + first * k;
      int32_t* row_ids = ids + first * k;
      std::fill(values, values + rows * k, -std::numeric_limits<float>::infinity());
      std::fill(row_ids, row_ids + rows * k, -1);
      memory q({{rows, d}, memory::data_type::f32, memory::format_tag::ab}, Engine(),
               const_cast<float*>(x + first * d));
      for (int64_t base = 0; base < n; base += kBaseTile) {
        const int64_t count = std::min(kBaseTile, n - base);
        memory b({{d, count}, memory::data_type::f32, memory::format_tag::ba}, Engine(),
                 const_cast<float*>(x + base * d));
        memory s({{rows, count}, memory::data_type::f32, memory::format_tag::ab}, Engine(),
                 tile.data());
        const Product& product = GetProduct(rows, count, d);
        if (scratchpad.size() < product.scratchpad_bytes) {
          scratchpad.resize(product.scratchpad_bytes);
        }
        memory scratch({{static_cast<int64_t>(product.scratchpad_bytes)}, memory::data_type::u8,
                        memory::format_tag::x}, Engine(), scratchpad.data());
        product.primitive.execute(stream, {{DNNL_ARG_SRC, q}, {DNNL_ARG_WEIGHTS, b},
                                           {DNNL_ARG_DST, s}, {DNNL_ARG_SCRATCHPAD, scratch}});
        stream.wait();
        for (int64_t r = 0; r < rows; ++r) {
          ScanRow(tile.data() + r * count, count, static_cast<int32_t>(base), values + r * k,
                  row_ids + r * k, k);
        }
      }
      for (int64_t r = 0; r < rows; ++r) SortRow(values + r * k, row_ids + r * k, k);
    }
  }
  return 0;
}
