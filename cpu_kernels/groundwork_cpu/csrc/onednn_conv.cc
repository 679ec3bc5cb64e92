// 2-D convolutions on CPU through oneDNN, as XLA FFI handlers.
//
// XLA's CPU backend lowers convolutions to Eigen, which reaches a quarter to a half of what
// oneDNN's JIT kernels (PyTorch's CPU convolutions) reach on the same cores, so on CPU the
// encoders call these three handlers instead: forward, input gradient and weight gradient of
// a float32 NHWC x HWIO -> NHWC convolution with strides and explicit non-negative pads.
// groundwork_cpu/conv.py registers the handlers and wires them into a custom VJP.
//
// Layouts: activations stay in XLA's row-major NHWC, which oneDNN's channels-last kernels
// read directly; weights are reordered from HWIO into the blocked layout the kernel asks
// for on every call (a kernel is small next to a batch of activations). Onto small output
// maps a convolution runs instead as one matrix product of gathered patches and the HWIO
// kernel as it is (`UseMatrixProduct`). The measurements behind both rules are in NOTES.md.
// Leading dimensions beyond the four of NHWC/HWIO come from `vmap` (broadcast_all): each
// slice is one convolution.

#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#include "build_info.h"
#include "onednn_common.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

using groundwork::Engine;
using groundwork::Product;
using groundwork::ThreadBuffer;
using groundwork::UserScratchpad;

// The geometry of one convolution: everything a primitive depends on.
struct Geometry {
  int64_t n, h, w, c_in, kh, kw, c_out, oh, ow, sh, sw, pt, pb, pl, pr;

  std::string Key(char kind) const {
    return groundwork::Key({kind, n, h, w, c_in, kh, kw, c_out, oh, ow, sh, sw, pt, pb, pl, pr});
  }
  memory::desc Src() const { return {{n, c_in, h, w}, memory::data_type::f32, tag::nhwc}; }
  memory::desc Dst() const { return {{n, c_out, oh, ow}, memory::data_type::f32, tag::nhwc}; }
  memory::desc UserWeights() const {
    return {{c_out, c_in, kh, kw}, memory::data_type::f32, tag::hwio};
  }
  memory::desc AnyWeights() const {
    return {{c_out, c_in, kh, kw}, memory::data_type::f32, tag::any};
  }
  memory::dims Strides() const { return {sh, sw}; }
  // The convolution as a matrix product: one row of patches per output pixel, one column
  // per (kh, kw, ci) tap.
  int64_t PatchRows() const { return n * oh * ow; }
  int64_t PatchCols() const { return kh * kw * c_in; }
  // Offset in NHWC x of the pixel under tap (i, j) of output (image, oy, ox); -1 in the pads.
  int64_t TapPixel(int64_t image, int64_t oy, int64_t ox, int64_t i, int64_t j) const {
    int64_t iy = oy * sh + i - pt, ix = ox * sw + j - pl;
    if (iy < 0 || iy >= h || ix < 0 || ix >= w) return -1;
    return ((image * h + iy) * w + ix) * c_in;
  }
  memory::dims PadLow() const { return {pt, pl}; }
  memory::dims PadHigh() const { return {pb, pr}; }
};

// One tensor a primitive reads or writes: the layout XLA holds it in (NHWC, HWIO), the
// layout the primitive wants, and so whether it goes through a reorder on the way.
struct Operand {
  Operand(int arg, const memory::desc& user, const memory::desc& primitive, bool is_output)
      : arg(arg), user(user), primitive(primitive), is_output(is_output) {
    if (user != primitive) {
      reorder = is_output ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                Engine(), primitive, Engine(), user))
                          : dnnl::reorder(dnnl::reorder::primitive_desc(
                                Engine(), user, Engine(), primitive));
    }
  }
  int arg;
  memory::desc user, primitive;
  bool is_output;
  dnnl::reorder reorder;  // user -> primitive for inputs, back for the output
};

// A primitive and its three operands in the handler's argument order (input, input, result).
struct Plan {
  dnnl::primitive primitive;
  std::vector<Operand> operands;
  size_t scratchpad_bytes;
};

// `blocked`: activations in the channel-blocked layout oneDNN prefers, reordered from and to
// NHWC around the primitive; otherwise oneDNN reads and writes NHWC directly.
Plan MakePlan(char kind, const Geometry& g, bool blocked) {
  memory::desc src = g.Src(), dst = g.Dst();
  if (blocked) {
    src = memory::desc(src.get_dims(), memory::data_type::f32, tag::any);
    dst = memory::desc(dst.get_dims(), memory::data_type::f32, tag::any);
  }
  auto forward = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src,
      g.AnyWeights(), dst, g.Strides(), g.PadLow(), g.PadHigh(), UserScratchpad());
  Plan plan;
  if (kind == 'f') {
    plan.primitive = dnnl::convolution_forward(forward);
    plan.operands = {{DNNL_ARG_SRC, g.Src(), forward.src_desc(), false},
                     {DNNL_ARG_WEIGHTS, g.UserWeights(), forward.weights_desc(), false},
                     {DNNL_ARG_DST, g.Dst(), forward.dst_desc(), true}};
    plan.scratchpad_bytes = forward.scratchpad_desc().get_size();
  } else if (kind == 'd') {
    auto backward = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, g.AnyWeights(), dst, g.Strides(),
        g.PadLow(), g.PadHigh(), forward, UserScratchpad());
    plan.primitive = dnnl::convolution_backward_data(backward);
    plan.operands = {{DNNL_ARG_DIFF_DST, g.Dst(), backward.diff_dst_desc(), false},
                     {DNNL_ARG_WEIGHTS, g.UserWeights(), backward.weights_desc(), false},
                     {DNNL_ARG_DIFF_SRC, g.Src(), backward.diff_src_desc(), true}};
    plan.scratchpad_bytes = backward.scratchpad_desc().get_size();
  } else {
    auto backward = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, src, g.AnyWeights(), dst, g.Strides(),
        g.PadLow(), g.PadHigh(), forward, UserScratchpad());
    plan.primitive = dnnl::convolution_backward_weights(backward);
    plan.operands = {{DNNL_ARG_SRC, g.Src(), backward.src_desc(), false},
                     {DNNL_ARG_DIFF_DST, g.Dst(), backward.diff_dst_desc(), false},
                     {DNNL_ARG_DIFF_WEIGHTS, g.UserWeights(), backward.diff_weights_desc(), true}};
    plan.scratchpad_bytes = backward.scratchpad_desc().get_size();
  }
  return plan;
}

void Execute(const Plan& plan, float* const data[3]) {
  auto& engine = Engine();
  dnnl::stream stream(engine);
  std::unordered_map<int, memory> args;
  std::vector<std::tuple<const Operand*, memory, memory>> outputs;  // reordered after
  for (int i = 0; i < 3; ++i) {
    const Operand& op = plan.operands[i];
    memory user(op.user, engine, data[i]);
    if (op.primitive == op.user) {
      args.emplace(op.arg, user);
      continue;
    }
    memory staged(op.primitive, engine, ThreadBuffer(i, op.primitive.get_size()));
    if (op.is_output) {
      outputs.emplace_back(&op, staged, user);
    } else {
      op.reorder.execute(stream, user, staged);
    }
    args.emplace(op.arg, staged);
  }
  args.emplace(DNNL_ARG_SCRATCHPAD,
               memory(memory::desc({static_cast<int64_t>(plan.scratchpad_bytes)},
                                   memory::data_type::u8, tag::x),
                      engine, ThreadBuffer(3, plan.scratchpad_bytes)));
  plan.primitive.execute(stream, args);
  for (auto& [op, staged, user] : outputs) op->reorder.execute(stream, staged, user);
  stream.wait();
}

// Which activation layout a geometry runs in. On larger maps NHWC is as fast or faster, since
// a reorder to and from the blocked layout costs about as much as the convolution there; on
// small maps the blocked layout runs forward and input gradient much faster, while the
// weight gradient is never faster blocked (NOTES.md, "Layouts"). A fixed rule rather than
// timing each geometry keeps results bit-reproducible from run to run.
constexpr int64_t kBlockedMaxPixels = 25;  // output maps up to 5x5

bool UseBlocked(char kind, const Geometry& g) {
  return kind != 'w' && g.oh * g.ow <= kBlockedMaxPixels;
}

const Plan& GetPlan(char kind, const Geometry& g) {
  return groundwork::CachedPlan<Plan>(g.Key(kind),
                                      [&] { return MakePlan(kind, g, UseBlocked(kind, g)); });
}

// Where a convolution runs as one matrix product over gathered patches (dnnl::sgemm) instead
// of oneDNN's convolution primitive, whose kernels parallelise poorly over few output pixels
// and reorder the kernel to a blocked layout on every call. The thresholds are where the
// product won in measurements (NOTES.md, "Small maps"): the weight gradient onto maps of 3x3
// and smaller, and onto maps up to 5x5 with 512 or more input channels (with fewer, or on 6x6
// and larger maps, the primitive wins); the forward pass onto maps of 3x3 and smaller; the
// input gradient onto maps of 3x3 and smaller only when the convolution is strided (an
// unstrided one, or one onto a larger map, is faster as the primitive).
constexpr int64_t kProductMaxPixels = 9;          // output maps up to 3x3
constexpr int64_t kWideProductMaxPixels = 25;     // weight gradient: maps up to 5x5 ...
constexpr int64_t kWideProductMinChannels = 512;  // ... with this many input channels or more

bool UseMatrixProduct(char kind, const Geometry& g) {
  const int64_t pixels = g.oh * g.ow;
  if (kind == 'f') return pixels <= kProductMaxPixels;
  if (kind == 'd') return pixels <= kProductMaxPixels && g.sh * g.sw > 1;
  return pixels <= kProductMaxPixels ||
         (pixels <= kWideProductMaxPixels && g.c_in >= kWideProductMinChannels);
}

// patches[(n, oh, ow), (kh, kw, ci)] = x[n, oh*sh + kh - pt, ow*sw + kw - pl, ci] from NHWC x,
// zeros in the pads: the rows x columns left operand of a convolution as a matrix product.
float* GatherPatches(const Geometry& g, const float* x) {
  const int64_t rows = g.PatchRows(), cols = g.PatchCols();
  auto* patches = static_cast<float*>(ThreadBuffer(0, rows * cols * sizeof(float)));
#pragma omp parallel for
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t image = r / (g.oh * g.ow), oy = r / g.ow % g.oh, ox = r % g.ow;
    float* out = patches + r * cols;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j, out += g.c_in) {
        const int64_t pixel = g.TapPixel(image, oy, ox, i, j);
        if (pixel < 0) {
          std::memset(out, 0, g.c_in * sizeof(float));
        } else {
          std::memcpy(out, x + pixel, g.c_in * sizeof(float));
        }
      }
    }
  }
  return patches;
}

void Sgemm(char transa, char transb, int64_t m, int64_t n, int64_t k, const float* a,
           int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, const char* what) {
  dnnl::status status = dnnl::sgemm(transa, transb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
  if (status != dnnl::status::success) throw dnnl::error(static_cast<dnnl_status_t>(status), what);
}

// y = patches(x) w: HWIO w is the (kh, kw, ci) x co right operand as it is.
void ForwardByProduct(const Geometry& g, const float* x, const float* w, float* y) {
  Sgemm('N', 'N', g.PatchRows(), g.c_out, g.PatchCols(), GatherPatches(g, x), g.PatchCols(), w,
        g.c_out, y, g.c_out, "sgemm of the forward convolution");
}

// dx = the patches of dy w^T added back where they came from (each image by one thread: the
// patches of neighbouring outputs overlap).
void InputGradientByProduct(const Geometry& g, const float* dy, const float* w, float* dx) {
  const int64_t rows = g.PatchRows(), cols = g.PatchCols();
  auto* patches = static_cast<float*>(ThreadBuffer(0, rows * cols * sizeof(float)));
  Sgemm('N', 'T', rows, cols, g.c_out, dy, g.c_out, w, g.c_out, patches, cols,
        "sgemm of the input gradient");
  std::memset(dx, 0, g.n * g.h * g.w * g.c_in * sizeof(float));
#pragma omp parallel for
  for (int64_t image = 0; image < g.n; ++image) {
    const float* in = patches + image * g.oh * g.ow * cols;
    for (int64_t oy = 0; oy < g.oh; ++oy) {
      for (int64_t ox = 0; ox < g.ow; ++ox) {
        for (int64_t i = 0; i < g.kh; ++i) {
          for (int64_t j = 0; j < g.kw; ++j, in += g.c_in) {
            const int64_t pixel = g.TapPixel(image, oy, ox, i, j);
            if (pixel < 0) continue;
            for (int64_t c = 0; c < g.c_in; ++c) dx[pixel + c] += in[c];
          }
        }
      }
    }
  }
}

// dW = patches(x)^T dy: the product's row-major (kh, kw, ci) x co result is HWIO.
void WeightGradientByProduct(const Geometry& g, const float* x, const float* dy, float* dw) {
  Sgemm('T', 'N', g.PatchCols(), g.c_out, g.PatchRows(), GatherPatches(g, x), g.PatchCols(), dy,
        g.c_out, dw, g.c_out, "sgemm of the weight gradient");
}

// Runs convolution `kind` ('f' forward, 'd' input gradient, 'w' weight gradient) on one
// slice: `data` = (input, input, result) in the handler's order.
void RunOne(char kind, const Geometry& g, float* const data[3]) {
  if (!UseMatrixProduct(kind, g)) {
    Execute(GetPlan(kind, g), data);
  } else if (kind == 'f') {
    ForwardByProduct(g, data[0], data[1], data[2]);
  } else if (kind == 'd') {
    InputGradientByProduct(g, data[0], data[1], data[2]);
  } else {
    WeightGradientByProduct(g, data[0], data[1], data[2]);
  }
}

// The slices of a (possibly vmapped) call: inputs NHWC `x` and HWIO-or-NHWC `b`, result `r`.
ffi::Error Run(char kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> r,
               ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  if (a.element_type() != ffi::F32 || b.element_type() != ffi::F32 ||
      r->element_type() != ffi::F32) {
    return ffi::Error::InvalidArgument("oneDNN convolution: float32 buffers only");
  }
  auto ad = a.dimensions(), bd = b.dimensions(), rd = r->dimensions();
  if (ad.size() < 4 || bd.size() != ad.size() || rd.size() != ad.size() ||
      strides.size() != 2 || pads.size() != 4) {
    return ffi::Error::InvalidArgument("oneDNN convolution: rank-4 (+ batch) buffers only");
  }
  const size_t lead = ad.size() - 4;
  int64_t slices = Product(ad, lead);
  if (Product(bd, lead) != slices || Product(rd, lead) != slices) {
    return ffi::Error::InvalidArgument("oneDNN convolution: batch dimensions disagree");
  }
  // x: NHWC input, k: HWIO kernel, y: NHWC output, in whichever of a, b, r holds each.
  ffi::Span<const int64_t> x = kind == 'd' ? rd : ad;
  ffi::Span<const int64_t> k = kind == 'w' ? rd : bd;
  ffi::Span<const int64_t> y = kind == 'f' ? rd : (kind == 'd' ? ad : bd);
  Geometry g{x[lead], x[lead + 1], x[lead + 2], x[lead + 3], k[lead], k[lead + 1],
             k[lead + 3], y[lead + 1], y[lead + 2], strides[0], strides[1],
             pads[0], pads[1], pads[2], pads[3]};
  if (k[lead + 2] != g.c_in || y[lead] != g.n || y[lead + 3] != g.c_out ||
      (g.h + g.pt + g.pb - g.kh) / g.sh + 1 != g.oh ||
      (g.w + g.pl + g.pr - g.kw) / g.sw + 1 != g.ow) {
    return ffi::Error::InvalidArgument("oneDNN convolution: shapes do not form a convolution");
  }
  int64_t a_size = Product(ad, ad.size()) / slices, b_size = Product(bd, bd.size()) / slices,
          r_size = Product(rd, rd.size()) / slices;
  auto* a_data = static_cast<float*>(a.untyped_data());
  auto* b_data = static_cast<float*>(b.untyped_data());
  auto* r_data = static_cast<float*>(r->untyped_data());
  try {
    for (int64_t i = 0; i < slices; ++i) {
      float* const data[3] = {a_data + i * a_size, b_data + i * b_size, r_data + i * r_size};
      RunOne(kind, g, data);
    }
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  return Run('f', x, w, y, strides, pads);
}
ffi::Error InputGradient(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                         ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  return Run('d', dy, w, dx, strides, pads);
}
ffi::Error WeightGradient(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          ffi::Span<const int64_t> strides, ffi::Span<const int64_t> pads) {
  return Run('w', x, dy, dw, strides, pads);
}

}  // namespace

#define GROUNDWORK_CPU_CONV_BINDING                    \
  ffi::Ffi::Bind()                                     \
      .Arg<ffi::AnyBuffer>()                           \
      .Arg<ffi::AnyBuffer>()                           \
      .Ret<ffi::AnyBuffer>()                           \
      .Attr<ffi::Span<const int64_t>>("strides")       \
      .Attr<ffi::Span<const int64_t>>("pads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuConvForward, Forward, GROUNDWORK_CPU_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuConvInputGradient, InputGradient,
                              GROUNDWORK_CPU_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(GroundworkCpuConvWeightGradient, WeightGradient,
                              GROUNDWORK_CPU_CONV_BINDING);
