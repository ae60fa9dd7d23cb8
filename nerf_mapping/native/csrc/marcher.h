// Occupancy-grid ray marcher shared by the marching kernel (marching.cpp) and the native inference renderer
// (render.cpp). The sample sequence and the empty-space skipping are documented at the top of marching.cpp.
//
// Both translation units compile this code with FMA contraction off (``#pragma GCC optimize("fp-contract=off")``
// before the include): it must agree exactly with the torch reference, nerf_mapping.rendering.marching.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace nm {
namespace march {
namespace {  // internal linkage: each kernel file compiles its own copy with its own flags

constexpr int64_t kCoarse = 8;  // cells per axis of a coarse block

struct Grid {
  const uint8_t* occ;  // [L, Gx, Gy, Gz]
  int64_t L;
  int64_t G[3];
  double lo[3], size[3];  // level-0 box
  const uint8_t* coarse;  // [L, Bx, By, Bz]: any occupied cell in the block of kCoarse^3 cells
  int64_t B[3];
};

// Coarse occupancy: marching through empty space costs one cell-exit computation per empty cell; a ray that
// meets an empty coarse block skips the whole block at once (8x fewer computations through empty space).
std::vector<uint8_t> coarse_occupancy(const Grid& g) {
  std::vector<uint8_t> out(size_t(g.L * g.B[0] * g.B[1] * g.B[2]), 0);
  for (int64_t l = 0; l < g.L; ++l)
    for (int64_t x = 0; x < g.G[0]; ++x)
      for (int64_t y = 0; y < g.G[1]; ++y) {
        const uint8_t* row = g.occ + ((l * g.G[0] + x) * g.G[1] + y) * g.G[2];
        uint8_t* crow = out.data() + ((l * g.B[0] + x / kCoarse) * g.B[1] + y / kCoarse) * g.B[2];
        for (int64_t z = 0; z < g.G[2]; ++z) crow[z / kCoarse] |= row[z];
      }
  return out;
}

// Slab intersection with the box lo + size * ((u - 0.5) * s + 0.5), u in [0,1] (s = 2^k scales about the centre).
// Direction components with |d| < 1e-12 are replaced by 1e-12 (same as the torch reference).
inline void box_hit(const double* o, const double* inv, const double* blo, const double* bhi, double& tn,
                    double& tf) {
  tn = -INFINITY;
  tf = INFINITY;
  for (int d = 0; d < 3; ++d) {
    const double ta = (blo[d] - o[d]) * inv[d];
    const double tb = (bhi[d] - o[d]) * inv[d];
    tn = std::max(tn, std::min(ta, tb));
    tf = std::min(tf, std::max(ta, tb));
  }
}

// 2^k for the grid levels, exact (std::ldexp is a libm call, and this runs once per marching step).
inline double pow2(int64_t k) {
  static const double table[] = {1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
                                 4096.0, 8192.0, 16384.0, 32768.0};
  return (k >= 0 && k < 16) ? table[k] : std::ldexp(1.0, static_cast<int>(k));
}

inline void level_box(const Grid& g, int64_t k, double* blo, double* bhi) {
  const double s = pow2(k);
  for (int d = 0; d < 3; ++d) {
    blo[d] = g.lo[d] + g.size[d] * ((0.0 - 0.5) * s + 0.5);
    bhi[d] = g.lo[d] + g.size[d] * ((1.0 - 0.5) * s + 0.5);
  }
}

struct RayMarcher {
  const Grid& g;
  double step, cone;
  int64_t max_samples;

  // Marches one ray; calls emit(t_start, t_end) for each emitted sample, returns their count.
  template <typename Emit>
  int64_t march(const double* o, const double* dir, double tmin, double tmax, Emit&& emit) const {
    double inv[3], dsafe[3];
    for (int d = 0; d < 3; ++d) {
      dsafe[d] = std::abs(dir[d]) < 1e-12 ? 1e-12 : dir[d];
      inv[d] = 1.0 / dsafe[d];
    }
    double olo[3], ohi[3], tn, tf;
    level_box(g, g.L - 1, olo, ohi);
    box_hit(o, inv, olo, ohi, tn, tf);
    const double t0 = std::max(tmin, tn);
    const double t1 = std::min(tmax, tf);
    if (!(t0 < t1)) return 0;
    int64_t count = 0;
    double t = t0;
    double skip_until = -INFINITY;  // midpoints below this lie in a known-empty cell
    const double margin = 1e-4 * step;
    // t * cone <= step over the whole range (always for bounded scenes, cone = 0): every dt is exactly `step`, so
    // skipping can run a tight loop whose only loop-carried dependency is t += step (same t sequence bit for bit).
    const bool const_step = t1 * cone <= step && step <= 1e10;
    while (t < t1 && count < max_samples) {
      const double dt = std::min(std::max(t * cone, step), 1e10);
      const double te = std::min(t + dt, t1);
      const double mid = (t + te) * 0.5;
      if (mid < skip_until) {
        t = t + dt;
        if (const_step)
          while (t < t1 && (t + std::min(t + step, t1)) * 0.5 < skip_until) t = t + step;
        continue;
      }
      // finest level containing the midpoint, in normalised level-0 coordinates u
      double u[3];
      double m = 0.0;
      for (int d = 0; d < 3; ++d) {
        const double p = o[d] + dir[d] * mid;
        u[d] = (p - g.lo[d]) / g.size[d];
        m = std::max(m, std::abs(u[d] - 0.5));
      }
      int64_t lvl = -1;
      for (int64_t k = 0; k < g.L; ++k) {
        if (m <= 0.5 * pow2(k)) {
          lvl = k;
          break;
        }
      }
      if (lvl >= 0) {
        const double inv_s = 1.0 / pow2(lvl);  // exact: a power of two
        int64_t c[3];
        for (int d = 0; d < 3; ++d) {
          const double uk = (u[d] - 0.5) * inv_s + 0.5;
          int64_t ci = static_cast<int64_t>(std::floor(uk * static_cast<double>(g.G[d])));
          c[d] = std::min(std::max<int64_t>(ci, 0), g.G[d] - 1);
        }
        const int64_t flat = ((lvl * g.G[0] + c[0]) * g.G[1] + c[1]) * g.G[2] + c[2];
        if (g.occ[flat]) {
          emit(t, te);
          ++count;
        } else {
          // exit of the empty cell, or entry into the next finer box if that comes first
          const double s = pow2(lvl);
          // the empty region to skip: the whole coarse block when it is empty, else this cell
          int64_t c_lo[3], c_hi[3];
          const int64_t bflat = ((lvl * g.B[0] + c[0] / kCoarse) * g.B[1] + c[1] / kCoarse) * g.B[2] + c[2] / kCoarse;
          const bool block_empty = !g.coarse[bflat];
          for (int d = 0; d < 3; ++d) {
            c_lo[d] = block_empty ? (c[d] / kCoarse) * kCoarse : c[d];
            c_hi[d] = block_empty ? std::min(c_lo[d] + kCoarse, g.G[d]) : c[d] + 1;
          }
          double clo[3], chi[3];
          for (int d = 0; d < 3; ++d) {
            const double a = static_cast<double>(c_lo[d]) / static_cast<double>(g.G[d]);
            const double b = static_cast<double>(c_hi[d]) / static_cast<double>(g.G[d]);
            clo[d] = g.lo[d] + g.size[d] * ((a - 0.5) * s + 0.5);
            chi[d] = g.lo[d] + g.size[d] * ((b - 0.5) * s + 0.5);
          }
          double cn, cf;
          box_hit(o, inv, clo, chi, cn, cf);
          double target = cf;
          if (lvl > 0) {
            double ilo[3], ihi[3], in_, if_;
            level_box(g, lvl - 1, ilo, ihi);
            box_hit(o, inv, ilo, ihi, in_, if_);
            if (in_ > mid && in_ <= if_) target = std::min(target, in_);
          }
          skip_until = target - margin;
        }
      }
      t = t + dt;
    }
    return count;
  }
};


// The grid of an occupancy tensor [L, Gx, Gy, Gz] (bool, contiguous) and its level-0 box [6] (double,
// contiguous); ``coarse`` receives the block occupancy the returned Grid points into (keep it alive).
inline Grid make_grid(const at::Tensor& occ, const at::Tensor& aabb, std::vector<uint8_t>& coarse) {
  Grid g;
  g.occ = reinterpret_cast<const uint8_t*>(occ.data_ptr<bool>());
  g.L = occ.size(0);
  for (int d = 0; d < 3; ++d) {
    g.G[d] = occ.size(d + 1);
    g.lo[d] = aabb.data_ptr<double>()[d];
    g.size[d] = aabb.data_ptr<double>()[d + 3] - g.lo[d];
    TORCH_CHECK(g.size[d] > 0.0, "aabb must have max > min");
  }
  TORCH_CHECK(g.L >= 1 && g.G[0] >= 1 && g.G[1] >= 1 && g.G[2] >= 1, "empty occupancy grid");
  for (int d = 0; d < 3; ++d) g.B[d] = (g.G[d] + kCoarse - 1) / kCoarse;
  coarse = coarse_occupancy(g);
  g.coarse = coarse.data();
  return g;
}

}  // namespace
}  // namespace march
}  // namespace nm
