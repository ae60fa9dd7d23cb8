// Multiresolution hash grid: cell location, corner indices / weights and a batched forward gather.
// Shared by the hash-encoding kernels (hash_encoding.cpp) and the fused field inference (field_inference.cpp);
// the conventions are documented at the top of hash_encoding.cpp.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace nm {
namespace grid {

constexpr uint32_t kPrime1 = 2654435761u;
constexpr uint32_t kPrime2 = 805459861u;
constexpr int kBatch = 32;  // points per prefetch batch (32 * 4 lines = 128 lines in flight at most)

struct LevelInfo {
  float scale;     // R as float (pos = x * R)
  int32_t rmax;    // R - 1: largest valid lower corner
  bool dense;
  uint32_t s1, s2; // dense strides (R+1), (R+1)^2
  uint32_t tmask;  // T-1 when T is a power of two
  bool pow2;
  uint32_t T;
};

inline LevelInfo make_level(int64_t R, bool dense, int64_t T) {
  LevelInfo li;
  li.scale = static_cast<float>(R);
  li.rmax = static_cast<int32_t>(R - 1);
  li.dense = dense;
  li.s1 = static_cast<uint32_t>(R + 1);
  li.s2 = static_cast<uint32_t>((R + 1) * (R + 1));
  li.T = static_cast<uint32_t>(T);
  li.pow2 = (T & (T - 1)) == 0;
  li.tmask = static_cast<uint32_t>(T - 1);
  return li;
}

// Position of one coordinate inside a level: lower vertex and fractional part. NaN -> 0.
inline void locate(float v, const LevelInfo& li, int32_t& i0, float& fr) {
  v = (v >= 0.f) ? v : 0.f;  // also maps NaN to 0
  v = (v <= 1.f) ? v : 1.f;
  const float p = v * li.scale;
  int32_t i = static_cast<int32_t>(std::floor(p));
  i = std::min(std::max(i, 0), li.rmax);
  i0 = i;
  fr = p - static_cast<float>(i);
}

inline void corner_indices(int32_t ix, int32_t iy, int32_t iz, const LevelInfo& li, uint32_t* idx) {
  if (li.dense) {
    const uint32_t base = uint32_t(ix) + uint32_t(iy) * li.s1 + uint32_t(iz) * li.s2;
    for (int c = 0; c < 8; ++c)
      idx[c] = base + (c & 1) + ((c >> 1) & 1) * li.s1 + ((c >> 2) & 1) * li.s2;
  } else {
    const uint32_t hx[2] = {uint32_t(ix), uint32_t(ix) + 1u};
    const uint32_t hy[2] = {uint32_t(iy) * kPrime1, uint32_t(iy + 1) * kPrime1};
    const uint32_t hz[2] = {uint32_t(iz) * kPrime2, uint32_t(iz + 1) * kPrime2};
    for (int c = 0; c < 8; ++c) {
      const uint32_t h = hx[c & 1] ^ hy[(c >> 1) & 1] ^ hz[(c >> 2) & 1];
      idx[c] = li.pow2 ? (h & li.tmask) : (h % li.T);
    }
  }
}

inline void corner_weights(const float* fr, float* w) {
  const float wx[2] = {1.f - fr[0], fr[0]};
  const float wy[2] = {1.f - fr[1], fr[1]};
  const float wz[2] = {1.f - fr[2], fr[2]};
  for (int c = 0; c < 8; ++c) w[c] = wx[c & 1] * wy[(c >> 1) & 1] * wz[(c >> 2) & 1];
}

inline std::vector<LevelInfo> make_levels(const at::Tensor& res, const at::Tensor& dense, int64_t T) {
  auto r = res.to(at::kLong).contiguous();
  auto d = dense.to(at::kBool).contiguous();
  const int64_t L = r.numel();
  std::vector<LevelInfo> out;
  out.reserve(L);
  const int64_t* rp = r.data_ptr<int64_t>();
  const bool* dp = d.data_ptr<bool>();
  for (int64_t l = 0; l < L; ++l) {
    TORCH_CHECK(rp[l] >= 1, "hash encoding: resolution must be >= 1");
    if (dp[l]) TORCH_CHECK((rp[l] + 1) * (rp[l] + 1) * (rp[l] + 1) <= T, "dense level needs (R+1)^3 <= T");
    out.push_back(make_level(rp[l], dp[l], T));
  }
  return out;
}

// Pass 1 of a batched gather / scatter over one level: the cell position and the 8 corner rows of nb <= kBatch
// points x [nb, 3], with a prefetch of each hashed row (for writing when kWrite), so that pass 2 finds most rows in
// cache or in flight.
template <int F, bool kWrite>
inline void corner_batch(const float* x, int nb, const LevelInfo& li, const float* level_table, uint32_t (*idx)[8],
                         float (*fr)[3]) {
  for (int j = 0; j < nb; ++j) {
    int32_t i0[3];
    for (int d = 0; d < 3; ++d) locate(x[j * 3 + d], li, i0[d], fr[j][d]);
    corner_indices(i0[0], i0[1], i0[2], li, idx[j]);
    if (!li.dense)
      for (int c = 0; c < 8; ++c) __builtin_prefetch(level_table + size_t(idx[j][c]) * F, kWrite ? 1 : 0, 1);
  }
}

// Encode nb <= kBatch points x [nb, 3] into out (row stride `ld`, level-major features l*F + f). Pass 1 computes
// the corner indices of all points of a level and prefetches their table rows; pass 2 interpolates, by which time
// most cache lines have arrived (the fine levels are DRAM-latency bound).
template <int F>
inline void encode_batch(const float* x, int nb, const float* table, const std::vector<LevelInfo>& levels, int64_t T,
                         float* out, int64_t ld) {
  uint32_t idx[kBatch][8];
  float fr[kBatch][3];
  const int64_t L = static_cast<int64_t>(levels.size());
  for (int64_t l = 0; l < L; ++l) {
    const LevelInfo& li = levels[l];
    const float* tl = table + l * T * F;
    corner_batch<F, false>(x, nb, li, tl, idx, fr);
    for (int j = 0; j < nb; ++j) {
      float w[8];
      corner_weights(fr[j], w);
      float acc[F];
      for (int f = 0; f < F; ++f) acc[f] = 0.f;
      for (int c = 0; c < 8; ++c) {
        const float* v = tl + size_t(idx[j][c]) * F;
        for (int f = 0; f < F; ++f) acc[f] += w[c] * v[f];
      }
      float* o = out + j * ld + l * F;
      for (int f = 0; f < F; ++f) o[f] = acc[f];
    }
  }
}

#define NM_DISPATCH_F(F_, ...)                                            \
  switch (F_) {                                                           \
    case 1: { constexpr int kF = 1; __VA_ARGS__; break; }                 \
    case 2: { constexpr int kF = 2; __VA_ARGS__; break; }                 \
    case 4: { constexpr int kF = 4; __VA_ARGS__; break; }                 \
    case 8: { constexpr int kF = 8; __VA_ARGS__; break; }                 \
    default: TORCH_CHECK(false, "hash encoding: n_features_per_level must be 1, 2, 4 or 8"); \
  }

}  // namespace grid
}  // namespace nm
