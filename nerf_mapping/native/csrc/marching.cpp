// Ray marching through a multi-level occupancy grid (CPU counterpart of nerfacc's OccGridEstimator.sampling).
//
// Must agree *exactly* with nerf_mapping.rendering.marching.march_rays_torch, so every floating-point
// expression below mirrors the torch reference operation by operation, in double precision, and FMA
// contraction is switched off for this file (torch evaluates o + d * t as a rounded multiply then a
// rounded add; a fused multiply-add would round once and occasionally pick a different cell).
//
// Sample sequence of a ray (clipped to [t0, t1] = [t_min, t_max] intersected with the outermost box):
//   t_0 = t0, dt_k = clamp(t_k * cone_angle, step, 1e10), t_{k+1} = t_k + dt_k, while t_k < t1;
//   sample k = [t_k, min(t_k + dt_k, t1)], emitted iff the finest-level cell containing its midpoint is
//   occupied (at most max_samples emitted per ray).
// Empty-space skipping: when a sample's cell is empty we compute where the ray leaves that cell -- or the whole
// coarse block of 8^3 cells around it when the block is empty -- (or enters the next finer level's box, whichever
// comes first) and advance the sample sequence to it without any
// more grid look-ups. The sequence itself is still advanced step by step (a few flops per step) so that
// sample positions stay bitwise identical to the reference; only samples whose midpoint is safely (by a
// margin of 1e-4 steps) inside the empty cell are skipped, everything else is tested normally.
#pragma GCC optimize("fp-contract=off")

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "marcher.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace nm {

using namespace march;

// Returns (ray_indices int64 [S], t_starts [S], t_ends [S]) sorted by ray then t.
std::tuple<at::Tensor, at::Tensor, at::Tensor> march_rays_forward(const at::Tensor& origins_in,
                                                                  const at::Tensor& directions_in,
                                                                  const at::Tensor& t_min_in,
                                                                  const at::Tensor& t_max_in,
                                                                  const at::Tensor& occupied_in,
                                                                  const at::Tensor& aabb_in, double step_size,
                                                                  double cone_angle, int64_t max_samples) {
  TORCH_CHECK(origins_in.dim() == 2 && origins_in.size(1) == 3, "origins must be [R, 3]");
  TORCH_CHECK(directions_in.sizes() == origins_in.sizes(), "directions must be [R, 3]");
  const int64_t R = origins_in.size(0);
  TORCH_CHECK(t_min_in.numel() == R && t_max_in.numel() == R, "t_min / t_max must be [R]");
  TORCH_CHECK(occupied_in.dim() == 4, "occupied must be [L, Gx, Gy, Gz]");
  TORCH_CHECK(aabb_in.numel() == 6, "aabb must have 6 entries");
  TORCH_CHECK(step_size > 0.0, "step_size must be > 0");
  const auto out_dtype = origins_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto o = origins_in.to(at::kDouble).contiguous();
  auto dr = directions_in.to(at::kDouble).contiguous();
  auto tmin = t_min_in.to(at::kDouble).contiguous();
  auto tmax = t_max_in.to(at::kDouble).contiguous();
  auto occ = occupied_in.to(at::kBool).contiguous();
  auto aabb = aabb_in.to(at::kDouble).contiguous();

  std::vector<uint8_t> coarse;
  const Grid g = make_grid(occ, aabb, coarse);
  RayMarcher rm{g, step_size, cone_angle, std::max<int64_t>(max_samples, 0)};

  const double* op = o.data_ptr<double>();
  const double* dp = dr.data_ptr<double>();
  const double* t0p = tmin.data_ptr<double>();
  const double* t1p = tmax.data_ptr<double>();

  // One marching pass: each block of rays appends its samples to its own buffer, then the buffers are
  // concatenated in ray order (marching twice, count then fill, cost as much as the whole field evaluation
  // of an inference round).
  constexpr int64_t kRaysPerBlock = 256;
  const int64_t n_blocks = (R + kRaysPerBlock - 1) / kRaysPerBlock;
  struct Sample { int64_t r; double ts, te; };
  std::vector<std::vector<Sample>> blocks(n_blocks);
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      auto& buf = blocks[blk];
      const int64_t r_end = std::min(R, (blk + 1) * kRaysPerBlock);
      for (int64_t r = blk * kRaysPerBlock; r < r_end; ++r)
        rm.march(op + 3 * r, dp + 3 * r, t0p[r], t1p[r], [&](double ts, double te) { buf.push_back({r, ts, te}); });
    }
  });
  std::vector<int64_t> offsets(n_blocks + 1, 0);
  for (int64_t k = 0; k < n_blocks; ++k) offsets[k + 1] = offsets[k] + static_cast<int64_t>(blocks[k].size());
  const int64_t S = offsets[n_blocks];

  auto ray_idx = at::empty({S}, o.options().dtype(at::kLong));
  auto t_starts = at::empty({S}, o.options().dtype(at::kDouble));
  auto t_ends = at::empty({S}, o.options().dtype(at::kDouble));
  int64_t* rip = ray_idx.data_ptr<int64_t>();
  double* tsp = t_starts.data_ptr<double>();
  double* tep = t_ends.data_ptr<double>();
  at::parallel_for(0, n_blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t blk = b0; blk < b1; ++blk) {
      int64_t pos = offsets[blk];
      for (const Sample& smp : blocks[blk]) {
        rip[pos] = smp.r;
        tsp[pos] = smp.ts;
        tep[pos] = smp.te;
        ++pos;
      }
    }
  });
  return {ray_idx, t_starts.to(out_dtype), t_ends.to(out_dtype)};
}

}  // namespace nm
