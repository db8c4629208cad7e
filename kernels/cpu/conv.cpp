// conv2d (NCHW) as im2col + sgemm, nearest 2x upsampling and 2-D padding.
//
// Note [CPU conv2d]
// A 1x1, stride-1, unpadded convolution is one sgemm per image: W [Cout, Cin] times the
// image as [Cin, H*W]. Anything else unfolds a band of output rows at a time into
// col [Cin*kh*kw, rows*Wout] (zeros where the window hangs over the padding) and multiplies
// W [Cout, Cin*kh*kw] by it, writing the band of every output channel in place (ldc = Hout*Wout).
// A band holds at most about kColFloats values, so a 1024x1024 VAE layer needs tens of MiB
// of scratch, not gigabytes.
#include <cstring>

#include "kernels/cpu/cpu_common.h"
#include "kernels/cpu/cpu_ops.h"

namespace sd3::cpu {

namespace {

constexpr int64_t kColFloats = int64_t{4} << 20;  // 16 MiB of im2col scratch

// Input row r of width w -> output rows 2r and 2r+1 of width 2w, each element twice.
template <class T>
void upsample_rows(const char* src, char* dst, int64_t rows, int64_t w) {
#pragma omp parallel for schedule(static) if (rows * w * 4 >= detail::kParallelGrain)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = reinterpret_cast<const T*>(src) + r * w;
    T* o = reinterpret_cast<T*>(dst) + r * 4 * w;
    for (int64_t j = 0; j < w; ++j) o[2 * j] = o[2 * j + 1] = in[j];
    std::memcpy(o + 2 * w, o, static_cast<size_t>(2 * w) * sizeof(T));
  }
}

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor& bias, const Conv2dOptions& opt) {
  detail::check_float(x, "conv2d", "x");
  detail::check_float(w, "conv2d", "weight");
  SD3_CHECK(x.dim() == 4, "conv2d: x must be [B, C, H, W], got ", x.str());
  SD3_CHECK(w.dim() == 4 && w.size(1) == x.size(1), "conv2d: weight ", w.str(), " must be [Cout, ",
            x.size(1), ", kh, kw] for x ", x.str());
  const int64_t nb = x.size(0), cin = x.size(1), h = x.size(2), wd = x.size(3);
  const int64_t cout = w.size(0), kh = w.size(2), kw = w.size(3);
  detail::check_vector(bias, cout, "conv2d", "bias");
  const int64_t s = opt.stride, pt = opt.pad_top, pb = opt.pad_bottom, pl = opt.pad_left,
                pr = opt.pad_right;
  SD3_CHECK(s >= 1 && pt >= 0 && pb >= 0 && pl >= 0 && pr >= 0, "conv2d: stride ", s,
            " and padding (", pt, ", ", pb, ", ", pl, ", ", pr,
            ") must be positive / non-negative");
  SD3_CHECK(kh >= 1 && kw >= 1 && h + pt + pb >= kh && wd + pl + pr >= kw, "conv2d: kernel ", kh,
            "x", kw, " larger than the padded input ", x.str());
  const int64_t ho = (h + pt + pb - kh) / s + 1, wo = (wd + pl + pr - kw) / s + 1;
  detail::OutF32 out({nb, cout, ho, wo}, x.dtype());
  if (nb * cout * ho * wo == 0) return out.finish();
  float* y = out.ptr();
  const int64_t kdim = cin * kh * kw, plane = ho * wo;
  const Tensor wf = detail::as_f32(w);
  const float* wp = wf.data<float>();
  if (kdim == 0) {
    std::fill_n(y, nb * cout * plane, 0.0f);
  } else {
    const Tensor xf = detail::as_f32(x);
    const float* xp = xf.data<float>();
    if (kh == 1 && kw == 1 && s == 1 && pt + pb + pl + pr == 0) {
      for (int64_t b = 0; b < nb; ++b)
        detail::sgemm(false, false, cout, plane, cin, 1.0f, wp, cin, xp + b * cin * h * wd, plane,
                      0.0f, y + b * cout * plane, plane);
    } else {
      // Note [CPU conv2d]
      const int64_t band = std::clamp<int64_t>(kColFloats / (kdim * wo), 1, ho);
      float* col = detail::team_scratch(detail::ScratchSlot::Columns, 1,
                                        static_cast<size_t>(kdim * band * wo));
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = xp + b * cin * h * wd;
        for (int64_t r0 = 0; r0 < ho; r0 += band) {
          const int64_t nr = std::min(band, ho - r0), ncols = nr * wo;
#pragma omp parallel for schedule(static) if (kdim * ncols >= detail::kParallelGrain)
          for (int64_t kidx = 0; kidx < kdim; ++kidx) {
            const int64_t ci = kidx / (kh * kw), ky = (kidx / kw) % kh, kx = kidx % kw;
            const float* xc = xb + ci * h * wd;
            // Output columns whose input column ox*s - pl + kx lies inside the image.
            const int64_t ox0 = std::min(wo, std::max<int64_t>(0, (pl - kx + s - 1) / s));
            const int64_t ox1 = std::max(ox0, std::min(wo, (wd + pl - kx + s - 1) / s));
            for (int64_t r = 0; r < nr; ++r) {
              float* dst = col + kidx * ncols + r * wo;
              const int64_t iy = (r0 + r) * s - pt + ky;
              if (iy < 0 || iy >= h) {
                std::fill_n(dst, wo, 0.0f);
                continue;
              }
              const float* src = xc + iy * wd - pl + kx;
              std::fill_n(dst, ox0, 0.0f);
              if (s == 1) {
                std::memcpy(dst + ox0, src + ox0, static_cast<size_t>(ox1 - ox0) * 4);
              } else {
                for (int64_t ox = ox0; ox < ox1; ++ox) dst[ox] = src[ox * s];
              }
              std::fill(dst + ox1, dst + wo, 0.0f);
            }
          }
          detail::sgemm(false, false, cout, ncols, kdim, 1.0f, wp, kdim, col, ncols, 0.0f,
                        y + b * cout * plane + r0 * wo, plane);
        }
      }
    }
  }
  if (bias.defined()) {
    const std::vector<float> bv = detail::vector_f32(bias);
#pragma omp parallel for schedule(static) if (nb * cout * plane >= detail::kParallelGrain)
    for (int64_t r = 0; r < nb * cout; ++r) {
      float* row = y + r * plane;
      const float bc = bv[static_cast<size_t>(r % cout)];
      for (int64_t i = 0; i < plane; ++i) row[i] += bc;
    }
  }
  return out.finish();
}

Tensor upsample_nearest2x(const Tensor& x) {
  SD3_CHECK(x.defined() && x.dim() >= 2, "upsample_nearest2x: x must be [..., H, W], got ",
            x.str());
  const int64_t h = x.size(-2), wd = x.size(-1);
  Shape shape = x.shape();
  shape[shape.size() - 2] = 2 * h;
  shape.back() = 2 * wd;
  Tensor out = Tensor::empty(shape, x.dtype());
  if (out.numel() == 0) return out;
  const Tensor xc = x.contiguous();
  const int64_t rows = x.numel() / wd;  // input rows
  const size_t es = dtype_size(x.dtype());
  const char* src = static_cast<const char*>(xc.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  switch (es) {
    case 2: upsample_rows<uint16_t>(src, dst, rows, wd); break;
    case 4: upsample_rows<uint32_t>(src, dst, rows, wd); break;
    default: upsample_rows<uint64_t>(src, dst, rows, wd); break;
  }
  return out;
}

Tensor pad2d(const Tensor& x, int64_t left, int64_t right, int64_t top, int64_t bottom,
             float value) {
  SD3_CHECK(x.defined() && x.dim() >= 2, "pad2d: x must be [..., H, W], got ", x.str());
  SD3_CHECK(left >= 0 && right >= 0 && top >= 0 && bottom >= 0, "pad2d: negative padding (", left,
            ", ", right, ", ", top, ", ", bottom, ") of ", x.str());
  const int64_t h = x.size(-2), wd = x.size(-1);
  Shape shape = x.shape();
  shape[shape.size() - 2] = h + top + bottom;
  shape.back() = wd + left + right;
  Tensor out = Tensor::full(shape, value, x.dtype());
  detail::copy_strided(x, out.slice(-2, top, top + h).slice(-1, left, left + wd));
  return out;
}

}  // namespace sd3::cpu
