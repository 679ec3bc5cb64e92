// BatchNorm (training mode) and max-pooling on CPU through oneDNN, as XLA FFI handlers.
//
// With the convolutions on oneDNN (onednn_conv.cc), what XLA still runs of a ResNet step
// is mostly BatchNorm and pooling, and XLA's CPU lowering of both is several passes over
// the activations (the max-pool's gradient goes through select-and-scatter, which is slow
// on XLA's CPU backend; NOTES.md has the times). oneDNN's kernels are what PyTorch runs for
// both. groundwork_cpu/layers.py registers the handlers and wires them into custom VJPs.
//
// All tensors are float32 in XLA's row-major layout: activations NHWC, statistics [C].
// Leading dimensions beyond those come from `vmap` (broadcast_all): each slice is one call.

#include <cstdint>
#include <cstring>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#include "build_info.h"
#include "onednn_common.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using groundwork::Engine;
using groundwork::Product;
using groundwork::Scratchpad;
using groundwork::UserScratchpad;
using tag = dnnl::memory::format_tag;

namespace {

// ------------------------------------------------------------------------------ BatchNorm
// One slice is [rows, C] row-major (rows = N*H*W): oneDNN's channels-last layout with
// spatial size 1, which its NHWC kernels treat exactly as they treat N x H x W.

struct NormPlan {
  dnnl::batch_normalization_forward forward;
  dnnl::batch_normalization_backward backward;
  memory::desc data, stats, forward_scratchpad, backward_scratchpad;
};

NormPlan MakeNormPlan(int64_t rows, int64_t channels, float epsilon) {
  memory::desc data({rows, channels, 1, 1}, memory::data_type::f32, tag::nhwc);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  auto forward = dnnl::batch_normalization_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, data, data, epsilon, flags, UserScratchpad());
  auto backward = dnnl::batch_normalization_backward::primitive_desc(
      Engine(), dnnl::prop_kind::backward, data, data, data, epsilon, flags, forward,
      UserScratchpad());
  return {dnnl::batch_normalization_forward(forward), dnnl::batch_normalization_backward(backward),
          data, forward.mean_desc(), forward.scratchpad_desc(), backward.scratchpad_desc()};
}

const NormPlan& GetNormPlan(int64_t rows, int64_t channels, float epsilon) {
  uint32_t bits;  // epsilon, exactly
  std::memcpy(&bits, &epsilon, sizeof bits);
  return groundwork::CachedPlan<NormPlan>(
      groundwork::Key({rows, channels, bits}),
      [&] { return MakeNormPlan(rows, channels, epsilon); });
}

// Slices and per-slice sizes of a call whose per-channel operand `stats` has rank lead + 1.
struct Slicing {
  int64_t slices, rows, channels;
};

ffi::Error NormSlicing(ffi::AnyBuffer x, ffi::AnyBuffer stats, Slicing* s) {
  if (x.element_type() != ffi::F32 || stats.element_type() != ffi::F32) {
    return ffi::Error::InvalidArgument("oneDNN BatchNorm: float32 buffers only");
  }
  auto xd = x.dimensions(), sd = stats.dimensions();
  if (sd.size() < 1 || xd.size() < sd.size() + 1) {
    return ffi::Error::InvalidArgument("oneDNN BatchNorm: activations need a batch axis");
  }
  size_t lead = sd.size() - 1;
  s->slices = Product(sd, lead);
  s->channels = sd[lead];
  if (Product(xd, lead) != s->slices || xd[xd.size() - 1] != s->channels) {
    return ffi::Error::InvalidArgument("oneDNN BatchNorm: channels or batch axes disagree");
  }
  s->rows = Product(xd, xd.size()) / (s->slices * s->channels);
  return ffi::Error::Success();
}

float* F32(ffi::AnyBuffer b) { return static_cast<float*>(b.untyped_data()); }
float* F32(ffi::Result<ffi::AnyBuffer>& b) { return static_cast<float*>(b->untyped_data()); }

ffi::Error NormForward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                       ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                       ffi::Result<ffi::AnyBuffer> variance, float epsilon) {
  Slicing s;
  if (auto error = NormSlicing(x, scale, &s); error.failure()) return error;
  try {
    const NormPlan& plan = GetNormPlan(s.rows, s.channels, epsilon);
    dnnl::stream stream(Engine());
    int64_t size = s.rows * s.channels;
    for (int64_t i = 0; i < s.slices; ++i) {
      int64_t c = i * s.channels;
      plan.forward.execute(stream, {
          {DNNL_ARG_SRC, memory(plan.data, Engine(), F32(x) + i * size)},
          {DNNL_ARG_DST, memory(plan.data, Engine(), F32(y) + i * size)},
          {DNNL_ARG_SCALE, memory(plan.stats, Engine(), F32(scale) + c)},
          {DNNL_ARG_SHIFT, memory(plan.stats, Engine(), F32(shift) + c)},
          {DNNL_ARG_MEAN, memory(plan.stats, Engine(), F32(mean) + c)},
          {DNNL_ARG_VARIANCE, memory(plan.stats, Engine(), F32(variance) + c)},
          {DNNL_ARG_SCRATCHPAD, Scratchpad(plan.forward_scratchpad, 0)}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN BatchNorm: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error NormBackward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                        ffi::AnyBuffer mean, ffi::AnyBuffer variance,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                        ffi::Result<ffi::AnyBuffer> dshift, float epsilon) {
  Slicing s;
  if (auto error = NormSlicing(x, scale, &s); error.failure()) return error;
  try {
    const NormPlan& plan = GetNormPlan(s.rows, s.channels, epsilon);
    dnnl::stream stream(Engine());
    int64_t size = s.rows * s.channels;
    for (int64_t i = 0; i < s.slices; ++i) {
      int64_t c = i * s.channels;
      plan.backward.execute(stream, {
          {DNNL_ARG_SRC, memory(plan.data, Engine(), F32(x) + i * size)},
          {DNNL_ARG_DIFF_DST, memory(plan.data, Engine(), F32(dy) + i * size)},
          {DNNL_ARG_SCALE, memory(plan.stats, Engine(), F32(scale) + c)},
          {DNNL_ARG_MEAN, memory(plan.stats, Engine(), F32(mean) + c)},
          {DNNL_ARG_VARIANCE, memory(plan.stats, Engine(), F32(variance) + c)},
          {DNNL_ARG_DIFF_SRC, memory(plan.data, Engine(), F32(dx) + i * size)},
          {DNNL_ARG_DIFF_SCALE, memory(plan.stats, Engine(), F32(dscale) + c)},
          {DNNL_ARG_DIFF_SHIFT, memory(plan.stats, Engine(), F32(dshift) + c)},
          {DNNL_ARG_SCRATCHPAD, Scratchpad(plan.backward_scratchpad, 1)}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN BatchNorm: ") + e.what());
  }
  return ffi::Error::Success();
}

// ------------------------------------------------------------------------------ max-pool
// Forward in training mode also writes a workspace (which input held each maximum), which
// the backward reads; layers.py asks `groundwork_cpu_max_pool_workspace_bytes` for its
// size when it traces the forward.

struct PoolPlan {
  dnnl::pooling_forward forward;
  dnnl::pooling_backward backward;
  memory::desc src, dst, workspace, forward_scratchpad, backward_scratchpad;
};

// The geometry of one max-pool slice: everything its primitives depend on, in the order of
// `groundwork_cpu_max_pool_workspace_bytes`'s argument.
struct PoolGeometry {
  int64_t n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pb, pl, pr;

  std::string Key() const {
    return groundwork::Key({n, h, w, c, oh, ow, kh, kw, sh, sw, pt, pb, pl, pr});
  }
};
static_assert(sizeof(PoolGeometry) == 14 * sizeof(int64_t), "14 int64 fields, no padding");

PoolPlan MakePoolPlan(const PoolGeometry& g) {
  memory::desc src({g.n, g.c, g.h, g.w}, memory::data_type::f32, tag::nhwc);
  memory::desc dst({g.n, g.c, g.oh, g.ow}, memory::data_type::f32, tag::nhwc);
  memory::dims kernel{g.kh, g.kw}, strides{g.sh, g.sw}, dilation{0, 0};
  memory::dims pad_low{g.pt, g.pl}, pad_high{g.pb, g.pr};
  auto forward = dnnl::pooling_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::pooling_max, src, dst,
      strides, kernel, dilation, pad_low, pad_high, UserScratchpad());
  auto backward = dnnl::pooling_backward::primitive_desc(
      Engine(), dnnl::algorithm::pooling_max, src, dst, strides, kernel, dilation, pad_low,
      pad_high, forward, UserScratchpad());
  return {dnnl::pooling_forward(forward), dnnl::pooling_backward(backward), src, dst,
          forward.workspace_desc(), forward.scratchpad_desc(), backward.scratchpad_desc()};
}

// `x`: [..., N, H, W, C] input (or its gradient), `y`: [..., N, OH, OW, C] output; the
// number of slices and each slice's geometry.
ffi::Error PoolSlicing(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y,
                       ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                       ffi::Span<const int64_t> pads, int64_t* slices, PoolGeometry* g) {
  if (x.size() < 4 || y.size() != x.size() || window.size() != 2 || strides.size() != 2 ||
      pads.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN max-pool: rank-4 (+ batch) buffers only");
  }
  size_t lead = x.size() - 4;
  *slices = Product(x, lead);
  *g = {x[lead], x[lead + 1], x[lead + 2], x[lead + 3], y[lead + 1], y[lead + 2], window[0],
        window[1], strides[0], strides[1], pads[0], pads[1], pads[2], pads[3]};
  if (Product(y, lead) != *slices || y[lead] != g->n || y[lead + 3] != g->c) {
    return ffi::Error::InvalidArgument("oneDNN max-pool: input and output shapes disagree");
  }
  return ffi::Error::Success();
}

const PoolPlan& GetPoolPlan(const PoolGeometry& g) {
  return groundwork::CachedPlan<PoolPlan>(g.Key(), [&] { return MakePoolPlan(g); });
}

ffi::Error PoolForward(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y,
                       ffi::Result<ffi::AnyBuffer> workspace, ffi::Span<const int64_t> window,
                       ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  if (x.element_type() != ffi::F32) {
    return ffi::Error::InvalidArgument("oneDNN max-pool: float32 buffers only");
  }
  int64_t slices;
  PoolGeometry g;
  if (auto error = PoolSlicing(x.dimensions(), y->dimensions(), window, strides, pads, &slices,
                               &g);
      error.failure()) {
    return error;
  }
  try {
    const PoolPlan& plan = GetPoolPlan(g);
    size_t ws_bytes = plan.workspace.get_size();
    if (workspace->size_bytes() != static_cast<size_t>(slices) * ws_bytes) {
      return ffi::Error::InvalidArgument("oneDNN max-pool: workspace of the wrong size");
    }
    dnnl::stream stream(Engine());
    int64_t x_size = g.n * g.h * g.w * g.c, y_size = g.n * g.oh * g.ow * g.c;
    auto* ws = static_cast<char*>(workspace->untyped_data());
    for (int64_t i = 0; i < slices; ++i) {
      plan.forward.execute(stream, {
          {DNNL_ARG_SRC, memory(plan.src, Engine(), F32(x) + i * x_size)},
          {DNNL_ARG_DST, memory(plan.dst, Engine(), F32(y) + i * y_size)},
          {DNNL_ARG_WORKSPACE, memory(plan.workspace, Engine(), ws + i * ws_bytes)},
          {DNNL_ARG_SCRATCHPAD, Scratchpad(plan.forward_scratchpad, 2)}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN max-pool: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error PoolBackward(ffi::AnyBuffer dy, ffi::AnyBuffer workspace,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Span<const int64_t> window,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  int64_t slices;
  PoolGeometry g;
  if (auto error = PoolSlicing(dx->dimensions(), dy.dimensions(), window, strides, pads,
                               &slices, &g);
      error.failure()) {
    return error;
  }
  try {
    const PoolPlan& plan = GetPoolPlan(g);
    size_t ws_bytes = plan.workspace.get_size();
    dnnl::stream stream(Engine());
    int64_t x_size = g.n * g.h * g.w * g.c, y_size = g.n * g.oh * g.ow * g.c;
    auto* ws = static_cast<char*>(workspace.untyped_data());
    for (int64_t i = 0; i < slices; ++i) {
      plan.backward.execute(stream, {
          {DNNL_ARG_DIFF_DST, memory(plan.dst, Engine(), F32(dy) + i * y_size)},
          {DNNL_ARG_WORKSPACE, memory(plan.workspace, Engine(), ws + i * ws_bytes)},
          {DNNL_ARG_DIFF_SRC, memory(plan.src, Engine(), F32(dx) + i * x_size)},
          {DNNL_ARG_SCRATCHPAD, Scratchpad(plan.backward_scratchpad, 3)}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN max-pool: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// Bytes of workspace one slice's forward writes; `geometry` = n, h, w, c, oh, ow, kh, kw,
// sh, sw, pt, pb, pl, pr. Returns -1 when oneDNN rejects the geometry.
extern "C" int64_t groundwork_cpu_max_pool_workspace_bytes(const int64_t* geometry) {
  try {
    PoolGeometry g;
    std::memcpy(&g, geometry, sizeof g);
    return static_cast<int64_t>(GetPoolPlan(g).workspace.get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuBatchNormForward, NormForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuBatchNormBackward, NormBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon"));

#define GROUNDWORK_CPU_POOL_ATTRS                 \
  .Attr<ffi::Span<const int64_t>>("window")       \
      .Attr<ffi::Span<const int64_t>>("strides")  \
      .Attr<ffi::Span<const int64_t>>("pads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuMaxPoolForward, PoolForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() GROUNDWORK_CPU_POOL_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuMaxPoolBackward, PoolBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>() GROUNDWORK_CPU_POOL_ATTRS);
