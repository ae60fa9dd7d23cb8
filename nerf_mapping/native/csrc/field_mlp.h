// Dense layers (AVX2/FMA register tiles), SH view encoding, scene contraction and the colour MLP of the Instant-NGP
// field, for kernels without autograd: the fused field inference (field_inference.cpp) and the native inference
// renderer (render.cpp). Why by hand: see the top of field_inference.cpp.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace nm {
namespace mlp {
namespace {  // internal linkage: each kernel file compiles its own copy

constexpr int kBlock = 64;  // samples per block: intermediates of a block fit in L1/L2

struct Layer {
  const float* w;  // [in, out]
  const float* b;  // [out]
  int in, out;
};

// y[n, o] = act(b[o] + sum_i x[n, i] w[i, o]) for n < nb. O is a compile-time constant so the accumulators of one
// sample stay in vector registers (O = 64 -> 8 AVX2 registers) and the i loop streams the weights from L1.
template <int O>
inline void dense_fixed(const float* x, int nb, int ldx, const Layer& L, float* y, int ldy, bool relu) {
  for (int n = 0; n < nb; ++n) {
    float acc[O];
    for (int o = 0; o < O; ++o) acc[o] = L.b[o];
    const float* xn = x + n * ldx;
    for (int i = 0; i < L.in; ++i) {
      const float xi = xn[i];
      const float* wi = L.w + i * O;
      for (int o = 0; o < O; ++o) acc[o] += xi * wi[o];
    }
    float* yn = y + n * ldy;
    if (relu)
      for (int o = 0; o < O; ++o) yn[o] = acc[o] > 0.f ? acc[o] : 0.f;
    else
      for (int o = 0; o < O; ++o) yn[o] = acc[o];
  }
}

inline void dense_any(const float* x, int nb, int ldx, const Layer& L, float* y, int ldy, bool relu) {
  for (int n = 0; n < nb; ++n) {
    float* yn = y + n * ldy;
    for (int o = 0; o < L.out; ++o) yn[o] = L.b[o];
    const float* xn = x + n * ldx;
    for (int i = 0; i < L.in; ++i) {
      const float xi = xn[i];
      const float* wi = L.w + i * L.out;
      for (int o = 0; o < L.out; ++o) yn[o] += xi * wi[o];
    }
    if (relu)
      for (int o = 0; o < L.out; ++o) yn[o] = yn[o] > 0.f ? yn[o] : 0.f;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Register-tiled micro kernel: S samples x TW * 8 outputs. Each weight vector loaded from L1 feeds S FMAs and the
// accumulators never leave registers (S * TW <= 12 of the 16 ymm registers); the plain per-sample loop above is
// bound by one weight load per FMA and runs far below the FMA peak (docs/results/render.md).
template <int S, int TW>
inline void dense_tile(const float* x, int ldx, int I, const float* w, int ldw, const float* b, float* y, int ldy,
                       bool relu) {
  __m256 acc[S][TW];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int t = 0; t < TW; ++t) acc[s][t] = _mm256_loadu_ps(b + 8 * t);
  for (int i = 0; i < I; ++i) {
    __m256 wv[TW];
#pragma GCC unroll 16
    for (int t = 0; t < TW; ++t) wv[t] = _mm256_loadu_ps(w + i * ldw + 8 * t);
#pragma GCC unroll 16
    for (int s = 0; s < S; ++s) {
      const __m256 xb = _mm256_set1_ps(x[s * ldx + i]);
#pragma GCC unroll 16
      for (int t = 0; t < TW; ++t) acc[s][t] = _mm256_fmadd_ps(xb, wv[t], acc[s][t]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 16
    for (int t = 0; t < TW; ++t)
      _mm256_storeu_ps(y + s * ldy + 8 * t, relu ? _mm256_max_ps(acc[s][t], zero) : acc[s][t]);
}

// Layers whose width is a multiple of 8: tiles of 32 outputs x 3 samples, then of 8 outputs x 6 samples.
template <int S, int TW>
inline void dense_tiles(const float* x, int nb, int ldx, const Layer& L, int o0, float* y, int ldy, bool relu) {
  int n = 0;
  for (; n + S <= nb; n += S)
    dense_tile<S, TW>(x + n * ldx, ldx, L.in, L.w + o0, L.out, L.b + o0, y + n * ldy + o0, ldy, relu);
  for (; n < nb; ++n)
    dense_tile<1, TW>(x + n * ldx, ldx, L.in, L.w + o0, L.out, L.b + o0, y + n * ldy + o0, ldy, relu);
}

inline bool dense_avx(const float* x, int nb, int ldx, const Layer& L, float* y, int ldy, bool relu) {
  if (L.out % 8 != 0) return false;
  int o = 0;
  for (; o + 32 <= L.out; o += 32) dense_tiles<3, 4>(x, nb, ldx, L, o, y, ldy, relu);
  for (; o < L.out; o += 8) dense_tiles<6, 1>(x, nb, ldx, L, o, y, ldy, relu);
  return true;
}
#else
inline bool dense_avx(const float*, int, int, const Layer&, float*, int, bool) { return false; }
#endif

inline void dense(const float* x, int nb, int ldx, const Layer& L, float* y, int ldy, bool relu) {
  if (dense_avx(x, nb, ldx, L, y, ldy, relu)) return;
  switch (L.out) {
    case 3: dense_fixed<3>(x, nb, ldx, L, y, ldy, relu); break;
    case 16: dense_fixed<16>(x, nb, ldx, L, y, ldy, relu); break;
    case 32: dense_fixed<32>(x, nb, ldx, L, y, ldy, relu); break;
    case 64: dense_fixed<64>(x, nb, ldx, L, y, ldy, relu); break;
    case 128: dense_fixed<128>(x, nb, ldx, L, y, ldy, relu); break;
    default: dense_any(x, nb, ldx, L, y, ldy, relu);
  }
}

// Real SH basis, degree**2 values (same constants and order as fields/sh_encoding.py).
inline void sh_basis(const float* d, int degree, float* out) {
  const float x = d[0], y = d[1], z = d[2];
  out[0] = 0.28209479177387814f;
  if (degree > 1) {
    out[1] = -0.4886025119029199f * y;
    out[2] = 0.4886025119029199f * z;
    out[3] = -0.4886025119029199f * x;
  }
  if (degree > 2) {
    const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
    out[4] = 1.0925484305920792f * xy;
    out[5] = -1.0925484305920792f * yz;
    out[6] = 0.31539156525252005f * (2.f * zz - xx - yy);
    out[7] = -1.0925484305920792f * xz;
    out[8] = 0.5462742152960396f * (xx - yy);
    if (degree > 3) {
      out[9] = -0.5900435899266435f * y * (3.f * xx - yy);
      out[10] = 2.890611442640554f * xy * z;
      out[11] = -0.4570457994644658f * y * (4.f * zz - xx - yy);
      out[12] = 0.3731763325901154f * z * (2.f * zz - 3.f * xx - 3.f * yy);
      out[13] = -0.4570457994644658f * x * (4.f * zz - xx - yy);
      out[14] = 1.445305721320277f * z * (xx - yy);
      out[15] = -0.5900435899266435f * x * (xx - 3.f * yy);
    }
  }
}

// World point -> encoding coordinates in [0,1]^3 (clamped) and whether it lies in the modelled volume.
inline bool unit_coords(const float* p, const float* box, bool unbounded, float* u) {
  float y[3];
  for (int d = 0; d < 3; ++d) y[d] = (p[d] - box[d]) / (box[3 + d] - box[d]) * 2.f - 1.f;
  if (unbounded) {
    float mag = std::max(std::max(std::fabs(y[0]), std::fabs(y[1])), std::fabs(y[2]));
    mag = std::max(mag, 1e-9f);
    if (mag > 1.f) {
      const float s = (2.f - 1.f / mag) / mag;
      for (int d = 0; d < 3; ++d) y[d] *= s;
    }
    for (int d = 0; d < 3; ++d) u[d] = y[d] * 0.25f + 0.5f;
  } else {
    for (int d = 0; d < 3; ++d) u[d] = y[d] * 0.5f + 0.5f;
  }
  bool inside = true;
  for (int d = 0; d < 3; ++d) {
    inside = inside && (u[d] >= 0.f) && (u[d] <= 1.f);
    u[d] = std::min(std::max(u[d], 0.f), 1.f);  // NaN -> 0 through the grid's own clamp as well
  }
  return inside;
}

// Colour MLP of one block: rows of `a` hold the geo features [0, G); SH(dirs) is appended, the MLP runs
// ping-ponging between a and b, sigmoid(rgb) goes to out [nb, 3].
inline void color_block(float* a, float* b, int nb, int width, int G, const float* dirs, int sh_degree,
                        const std::vector<Layer>& cl, float* out) {
  for (int j = 0; j < nb; ++j) sh_basis(dirs + j * 3, sh_degree, a + size_t(j) * width + G);
  float* cur = a;
  float* nxt = b;
  for (size_t k = 0; k < cl.size(); ++k) {
    dense(cur, nb, width, cl[k], nxt, width, k + 1 < cl.size());
    std::swap(cur, nxt);
  }
  for (int j = 0; j < nb; ++j) {
    const float* c = cur + size_t(j) * width;
    for (int d = 0; d < 3; ++d) out[j * 3 + d] = 1.f / (1.f + std::exp(-c[d]));
  }
}

std::vector<Layer> make_layers(const std::vector<at::Tensor>& w, const std::vector<at::Tensor>& b, const char* what) {
  TORCH_CHECK(!w.empty() && w.size() == b.size(), what, ": need as many weights as biases, at least one");
  std::vector<Layer> out;
  for (size_t k = 0; k < w.size(); ++k) {
    TORCH_CHECK(w[k].dim() == 2 && w[k].is_contiguous() && w[k].scalar_type() == at::kFloat && w[k].device().is_cpu(),
                what, ": weights must be contiguous float32 CPU [in, out]");
    TORCH_CHECK(b[k].numel() == w[k].size(1) && b[k].is_contiguous() && b[k].scalar_type() == at::kFloat,
                what, ": bias size must match the layer's output");
    if (k > 0) TORCH_CHECK(w[k].size(0) == out.back().out, what, ": layer sizes do not chain");
    out.push_back({w[k].data_ptr<float>(), b[k].data_ptr<float>(), int(w[k].size(0)), int(w[k].size(1))});
  }
  return out;
}


}  // namespace
}  // namespace mlp
}  // namespace nm
