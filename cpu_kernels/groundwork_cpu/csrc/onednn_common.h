// What the oneDNN handlers of onednn_conv.cc and onednn_layers.cc share: the engine, the
// plan cache, the scratchpad policy, per-thread staging buffers and the FFI slice
// bookkeeping.
#ifndef GROUNDWORK_CPU_CSRC_ONEDNN_COMMON_H_
#define GROUNDWORK_CPU_CSRC_ONEDNN_COMMON_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace groundwork {

inline dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A cache key: the values a plan depends on, comma-separated.
inline std::string Key(std::initializer_list<int64_t> values) {
  std::string key;
  for (int64_t v : values) key += (key.empty() ? "" : ",") + std::to_string(v);
  return key;
}

// Primitive descriptors are built once per shape and reused: building one costs far more
// than a small call. `make()` builds the plan of `key` the first time it is asked for; each
// call site (each `Make` type) has its own cache.
template <typename Plan, typename Make>
const Plan& CachedPlan(const std::string& key, Make make) {
  static std::mutex mutex;
  static std::unordered_map<std::string, std::shared_ptr<Plan>> plans;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto found = plans.find(key);
    if (found != plans.end()) return *found->second;
  }
  auto plan = std::make_shared<Plan>(make());
  std::lock_guard<std::mutex> lock(mutex);
  return *plans.emplace(key, plan).first->second;
}

// Scratchpads are the caller's (user mode) so concurrent calls from XLA's threads never
// share one.
inline dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Scratchpads and reordered operands live in per-thread buffers that only grow: a fresh
// allocation per call would be mapped anew and page-faulted in on every step.
inline void* ThreadBuffer(int slot, size_t bytes) {
  thread_local std::vector<char> buffers[4];
  auto& buffer = buffers[slot];
  if (buffer.size() < bytes + 64) buffer.resize(bytes + 64);
  auto address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<void*>((address + 63) / 64 * 64);
}

inline dnnl::memory Scratchpad(const dnnl::memory::desc& desc, int slot) {
  return dnnl::memory(desc, Engine(), ThreadBuffer(slot, desc.get_size()));
}

inline int64_t Product(xla::ffi::Span<const int64_t> dims, size_t count) {
  int64_t p = 1;
  for (size_t i = 0; i < count; ++i) p *= dims[i];
  return p;
}

}  // namespace groundwork

#endif  // GROUNDWORK_CPU_CSRC_ONEDNN_COMMON_H_
