#include "engine/ops.h"

#include <omp.h>

#include <cmath>
#include <cstdlib>
#include <sstream>

#include "engine/op_profile.h"
#include "kernels/cpu/cpu_ops.h"
#ifdef SD3_HAVE_CUDA
#include "kernels/cuda/cuda_ops.h"
#endif

extern "C" void openblas_set_num_threads(int num_threads);

namespace sd3 {

// ---- fusion switches ----------------------------------------------------------------------

Fusion parse_unfused(const std::string& list) {
  Fusion f;
  std::stringstream ss(list);
  std::string name;
  while (std::getline(ss, name, ',')) {
    if (name.empty() || name == "none") continue;
    if (name == "all") {
      f = Fusion{false, false, false, false};
    } else if (name == "adaln") {
      f.adaln = false;
    } else if (name == "attn") {
      f.attn = false;
    } else if (name == "groupnorm") {
      f.groupnorm = false;
    } else if (name == "euler") {
      f.euler = false;
    } else {
      fail("unknown fusion '", name, "' in unfused list '", list,
           "' (expected adaln, attn, groupnorm, euler, all or none)");
    }
  }
  return f;
}

Fusion& fusion() {
  static Fusion f = [] {
    const char* env = std::getenv("SD3_UNFUSED");
    return env ? parse_unfused(env) : Fusion{};
  }();
  return f;
}

void set_num_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

namespace ops {

namespace {

// All tensor inputs of one op must live on one device; returns it.
Device common_device(std::initializer_list<const Tensor*> ts, const char* op) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t->defined()) continue;
    if (!first) {
      first = t;
    } else {
      SD3_CHECK(t->device() == first->device(), op, ": inputs on different devices (",
                first->str(), " and ", t->str(), ")");
    }
  }
  SD3_CHECK(first != nullptr, op, ": no defined input");
  return first->device();
}

}  // namespace

// DISPATCH(op, {inputs...}, args...) runs cpu::op or cuda::op for the inputs' device, timed
// as `op` when the op profile is on (Note [Op profile]; ops composed of other ops open their
// own OpScope first, so their parts are not counted apart).
#ifdef SD3_HAVE_CUDA
#define DISPATCH(op, inputs, ...)                                        \
  ([&]() -> Tensor {                                                     \
    const Device dev_ = common_device(inputs, #op);                      \
    OpScope scope_(#op, dev_);                                           \
    return dev_.is_cpu() ? cpu::op(__VA_ARGS__) : cuda::op(__VA_ARGS__); \
  }())
#else
#define DISPATCH(op, inputs, ...)                                  \
  ([&]() -> Tensor {                                               \
    const Device dev_ = common_device(inputs, #op);                \
    if (!dev_.is_cpu()) fail(#op ": ", cuda_unavailable_reason()); \
    OpScope scope_(#op, dev_);                                     \
    return cpu::op(__VA_ARGS__);                                   \
  }())
#endif
#define IN(...) \
  { __VA_ARGS__ }

Tensor linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act) {
  return DISPATCH(linear, IN(&x, &w, &bias), x, w, bias, act);
}
Tensor matmul(const Tensor& a, const Tensor& b) { return DISPATCH(matmul, IN(&a, &b), a, b); }

Tensor add(const Tensor& a, const Tensor& b) { return DISPATCH(add, IN(&a, &b), a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return DISPATCH(sub, IN(&a, &b), a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return DISPATCH(mul, IN(&a, &b), a, b); }
Tensor scale(const Tensor& x, float s) { return DISPATCH(scale, IN(&x), x, s); }
Tensor add_scalar(const Tensor& x, float s) { return DISPATCH(add_scalar, IN(&x), x, s); }
Tensor axpby(const Tensor& x, float a, const Tensor& y, float b) {
  return DISPATCH(axpby, IN(&x, &y), x, a, y, b);
}
Tensor cast(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  return DISPATCH(cast, IN(&x), x, dtype);
}
Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  return DISPATCH(contiguous, IN(&x), x);
}

Tensor activation(const Tensor& x, Activation act) {
  if (act == Activation::None) return x;
  return DISPATCH(activation, IN(&x), x, act);
}
Tensor silu(const Tensor& x) { return activation(x, Activation::Silu); }
Tensor gelu(const Tensor& x) { return activation(x, Activation::Gelu); }
Tensor gelu_tanh(const Tensor& x) { return activation(x, Activation::GeluTanh); }
Tensor quick_gelu(const Tensor& x) { return activation(x, Activation::QuickGelu); }
Tensor softmax(const Tensor& x) { return DISPATCH(softmax, IN(&x), x); }

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, float eps) {
  return DISPATCH(layer_norm, IN(&x, &weight, &bias), x, weight, bias, eps);
}
Tensor rms_norm(const Tensor& x, const Tensor& weight, float eps) {
  return DISPATCH(rms_norm, IN(&x, &weight), x, weight, eps);
}
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                  float eps) {
  return DISPATCH(group_norm, IN(&x, &weight, &bias), x, groups, weight, bias, eps);
}

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionOptions& opt) {
  OpScope scope("attention", q.device());
  if (fusion().attn) return DISPATCH(attention, IN(&q, &k, &v, &opt.bias), q, k, v, opt);
  // Unfused: per head, S = q k^T * scale (+ bias, causal mask), P = softmax(S), O = P v.
  const int64_t B = q.size(0), Lq = q.size(1), Lk = k.size(1), H = opt.heads;
  SD3_CHECK(H > 0 && q.size(2) % H == 0, "attention: width ", q.size(2), " not divisible by ",
            H, " heads");
  const int64_t D = q.size(2) / H;
  const float sc = opt.scale != 0.0f ? opt.scale : 1.0f / std::sqrt(static_cast<float>(D));
  // q, k, v may be strided views (slices of a fused qkv projection): gathered first.
  Tensor qh = permute(contiguous(q).view({B, Lq, H, D}), {0, 2, 1, 3});  // [B, H, Lq, D]
  Tensor kt = permute(contiguous(k).view({B, Lk, H, D}), {0, 2, 3, 1});  // [B, H, D, Lk]
  Tensor vh = permute(contiguous(v).view({B, Lk, H, D}), {0, 2, 1, 3});  // [B, H, Lk, D]
  Tensor s = scale(matmul(qh, kt), sc);                          // [B, H, Lq, Lk]
  if (opt.bias.defined()) s = add(s, opt.bias);
  if (opt.causal) {
    std::vector<float> mask(static_cast<size_t>(Lq * Lk));
    for (int64_t i = 0; i < Lq; ++i)
      for (int64_t j = 0; j < Lk; ++j) mask[i * Lk + j] = j > i ? -INFINITY : 0.0f;
    s = add(s, Tensor::from_floats(mask, {Lq, Lk}).to(s.device()));
  }
  Tensor o = matmul(softmax(s), vh);                        // [B, H, Lq, D]
  return permute(o, {0, 2, 1, 3}).view({B, Lq, H * D});  // [B, Lq, H*D]
}

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& opt) {
  return DISPATCH(conv2d, IN(&x, &w, &bias), x, w, bias, opt);
}
Tensor upsample_nearest2x(const Tensor& x) { return DISPATCH(upsample_nearest2x, IN(&x), x); }
Tensor pad2d(const Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom,
             float value) {
  return DISPATCH(pad2d, IN(&x), x, left, right, top, bottom, value);
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  SD3_CHECK(!xs.empty(), "concat of no tensors");
  const Device d = xs[0].device();
  for (const Tensor& t : xs)
    SD3_CHECK(t.device() == d, "concat: inputs on different devices (", xs[0].str(), " and ",
              t.str(), ")");
  OpScope scope("concat", d);
#ifdef SD3_HAVE_CUDA
  return d.is_cpu() ? cpu::concat(xs, dim) : cuda::concat(xs, dim);
#else
  SD3_CHECK(d.is_cpu(), "concat: ", cuda_unavailable_reason());
  return cpu::concat(xs, dim);
#endif
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  dim = wrap_dim(dim, x.dim());
  int64_t total = 0;
  for (int64_t s : sizes) total += s;
  SD3_CHECK(total == x.size(dim), "split of ", x.str(), " along ", dim, " into pieces summing to ",
            total);
  std::vector<Tensor> out;
  int64_t start = 0;
  for (int64_t s : sizes) {
    out.push_back(x.slice(dim, start, start + s));
    start += s;
  }
  return out;
}

std::vector<Tensor> chunk(const Tensor& x, int64_t n, int64_t dim) {
  SD3_CHECK(n > 0 && x.size(dim) % n == 0, "chunk of ", x.str(), " into ", n, " along ", dim);
  return split(x, std::vector<int64_t>(static_cast<size_t>(n), x.size(dim) / n), dim);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& order) {
  OpScope scope("permute", x.device());
  return contiguous(x.permute(order));
}

Tensor embedding(const Tensor& ids, const Tensor& table) {
  return DISPATCH(embedding, IN(&ids, &table), ids, table);
}

Tensor adaln_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale_t, float eps) {
  OpScope scope("adaln_modulate", x.device());
  if (fusion().adaln)
    return DISPATCH(adaln_modulate, IN(&x, &shift, &scale_t), x, shift, scale_t, eps);
  // Unfused: LN(x) * (1 + scale) + shift with [B, C] vectors broadcast over the tokens.
  Tensor n = layer_norm(x, Tensor(), Tensor(), eps);
  Tensor s1 = add_scalar(scale_t, 1.0f).unsqueeze(1);  // [B, 1, C]
  return add(mul(n, s1), shift.unsqueeze(1));
}

Tensor gated_add(const Tensor& x, const Tensor& gate, const Tensor& y) {
  return DISPATCH(gated_add, IN(&x, &gate, &y), x, gate, y);
}

Tensor groupnorm_silu(const Tensor& x, int64_t groups, const Tensor& weight, const Tensor& bias,
                      float eps) {
  OpScope scope("groupnorm_silu", x.device());
  if (fusion().groupnorm)
    return DISPATCH(groupnorm_silu, IN(&x, &weight, &bias), x, groups, weight, bias, eps);
  return silu(group_norm(x, groups, weight, bias, eps));
}

Tensor timestep_embedding(const Tensor& t, int64_t dim, float max_period) {
  return DISPATCH(timestep_embedding, IN(&t), t, dim, max_period);
}
Tensor patchify(const Tensor& x, int64_t p) { return DISPATCH(patchify, IN(&x), x, p); }
Tensor unpatchify(const Tensor& x, int64_t h, int64_t w, int64_t p, int64_t c) {
  return DISPATCH(unpatchify, IN(&x), x, h, w, p, c);
}

Tensor cfg_combine(const Tensor& cond, const Tensor& uncond, float s) {
  OpScope scope("cfg_combine", cond.device());
  return axpby(uncond, 1.0f - s, cond, s);
}

Tensor euler_step(const Tensor& x, const Tensor& denoised, float sigma, float sigma_next) {
  // d = (x - denoised) / sigma; x + d * (sigma_next - sigma)
  const float r = (sigma_next - sigma) / sigma;
  OpScope scope("euler_step", x.device());
  return axpby(x, 1.0f + r, denoised, -r);
}

Tensor cfg_euler_step(const Tensor& x, const Tensor& v_cond, const Tensor& v_uncond, float s,
                      float sigma, float sigma_next) {
  OpScope scope("cfg_euler_step", x.device());
  if (fusion().euler)
    return DISPATCH(cfg_euler_step, IN(&x, &v_cond, &v_uncond), x, v_cond, v_uncond, s, sigma,
                    sigma_next);
  Tensor v = cfg_combine(v_cond, v_uncond, s);
  return axpby(x, 1.0f, v, sigma_next - sigma);
}

}  // namespace ops
}  // namespace sd3
