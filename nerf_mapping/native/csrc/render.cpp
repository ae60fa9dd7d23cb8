// Native inference renderer: the whole of nerf_mapping.rendering.renderer.render_rays_inference for a batch of rays
// in one call (occupancy-grid marching in rounds, fused field, compositing, colour skipping, early stop, step
// doubling), one ray at a time per thread.
//
// Why by hand: the torch-driven renderer runs dozens of tensor operations per marching round over packed samples of
// all live rays (gathers of origins / directions / accumulators by ray index, index_add, bincount, scatter_reduce,
// cumsum), and a ray through a haze needs many rounds. On a CPU those operations and the Python between them cost
// more than the marching itself (measured on a corridor map: docs/results/render.md). Here a ray's state stays in
// registers from its first sample to its last and nothing is gathered or scattered.
//
// Semantics (tested equal to the torch renderer within float tolerance; see that function's docstring for why):
//   round: march up to k samples in occupied cells from t_cur with the step  step * 2^coarse;  evaluate density
//   (and geometry features); with alpha_thre > 0 zero the density of samples whose alpha is not above it;
//   composite them (w = T alpha); run the colour MLP for samples of weight > color_weight_thre, or while the weight
//   skipped on the ray would exceed color_skip_budget; then  coarse += (fine_used >= fine_samples),
//   fine_used += #(alpha > 1e-4),  T *= exp(-sum sigma dt),  t_cur = the round's last t_end.  The ray goes on while
//   the round was full (k samples), T > early_stop_eps and fewer than max_samples were evaluated.
//
// Marching must match marching.cpp bit for bit (same sample positions), so this file, like that one, is compiled
// without FMA contraction; the dense layers use explicit FMA intrinsics and are unaffected.
#pragma GCC optimize("fp-contract=off")

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "field_mlp.h"
#include "hash_grid.h"
#include "marcher.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace nm {

using namespace mlp;
using namespace march;

namespace {

struct RenderParams {
  double step, cone;
  int k, fine, max_samples;
  float early_eps, alpha_thre, color_thre, color_budget;
};

struct FieldParams {
  const float* box;
  bool unbounded;
  const float* table;
  std::vector<grid::LevelInfo> levels;
  int64_t T, F, LF;
  std::vector<Layer> dl, cl;
  int G, sh_degree, width;
};

// Per-thread scratch for one round of one ray (k samples).
struct Scratch {
  std::vector<double> ts, te;
  std::vector<float> a, b, mid, u, bufa, bufb, sig, w, rgb, dirs;
  std::vector<uint8_t> inside;
  std::vector<int> vis;
  std::vector<float> ray_mid, ray_cum;  // the ray's samples in front of its early stop: midpoint, cumulative weight
  Scratch(int k, int width)
      : ts(k), te(k), a(k), b(k), mid(k), u(size_t(k) * 3), bufa(size_t(k) * width), bufb(size_t(k) * width),
        sig(k), w(k), rgb(size_t(k) * 3), dirs(size_t(k) * 3), inside(k), vis(k) {}
};

// Density (and geometry features left in rows of `cur`) of the n samples at s.u; returns the buffer holding the
// density MLP's output rows [n, 1 + G] (row stride width).
inline float* density_round(const FieldParams& f, Scratch& s, int n) {
  for (int j = 0; j < n; j += grid::kBatch) {
    const int m = std::min(grid::kBatch, n - j);
    NM_DISPATCH_F(f.F, grid::encode_batch<kF>(&s.u[size_t(j) * 3], m, f.table, f.levels, f.T,
                                              &s.bufa[size_t(j) * f.width], f.width));
  }
  float* cur = s.bufa.data();
  float* nxt = s.bufb.data();
  for (size_t l = 0; l < f.dl.size(); ++l) {
    dense(cur, n, f.width, f.dl[l], nxt, f.width, l + 1 < f.dl.size());
    std::swap(cur, nxt);
  }
  return cur;
}

void render_ray(const Grid& g, const RenderParams& p, const FieldParams& f, const float* o, const float* d,
                float t_min, float t_max, Scratch& s, float* out_rgb, float& out_depth, float& out_opacity,
                float* out_median, int64_t& evaluated) {
  const double od[3] = {o[0], o[1], o[2]};
  const double dd[3] = {d[0], d[1], d[2]};
  float t_cur = t_min, trans = 1.f, opacity = 0.f, depth = 0.f, skipped = 0.f;
  float rgb[3] = {0.f, 0.f, 0.f};
  int n_eval = 0, fine_used = 0, coarse = 0;
  float cum = 0.f;
  if (out_median) {
    s.ray_mid.clear();
    s.ray_cum.clear();
  }
  for (;;) {
    RayMarcher rm{g, p.step * std::ldexp(1.0, coarse), p.cone, p.k};
    int n = 0;
    rm.march(od, dd, double(t_cur), double(t_max), [&](double ts, double te) {
      s.ts[n] = ts;
      s.te[n] = te;
      ++n;
    });
    if (n == 0) break;
    evaluated += n;
    for (int j = 0; j < n; ++j) {
      s.a[j] = float(s.ts[j]);
      s.b[j] = float(s.te[j]);
      s.mid[j] = (s.a[j] + s.b[j]) * 0.5f;
      float pos[3];
      for (int c = 0; c < 3; ++c) pos[c] = o[c] + d[c] * s.mid[j];
      s.inside[j] = unit_coords(pos, f.box, f.unbounded, &s.u[size_t(j) * 3]);
    }
    const float* h = density_round(f, s, n);
    // composite the round in t order: transmittance before each sample from the optical depth so far
    float tau = 0.f, light = 0.f, skipped_round = 0.f;
    int visible = 0, nvis = 0;
    for (int j = 0; j < n; ++j) {
      const float delta = s.b[j] - s.a[j];
      float sg = s.inside[j] ? std::exp(h[size_t(j) * f.width] - 1.f) : 0.f;
      if (p.alpha_thre > 0.f && !(1.f - std::exp(-sg * delta) > p.alpha_thre)) sg = 0.f;
      const float sd = sg * delta;
      const float alpha = 1.f - std::exp(-sd);
      const float t_before = trans * std::exp(-tau);
      const float wj = t_before * alpha;
      tau += sd;
      if (out_median && t_before > p.early_eps) {  // the torch loop's packed samples: those before the early stop
        cum += wj;
        s.ray_mid.push_back(s.mid[j]);
        s.ray_cum.push_back(cum);
      }
      s.w[j] = wj;
      opacity += wj;
      depth += wj * s.mid[j];
      visible += alpha > 1e-4f;
      // colour only where it shows (the skipped weight bounds each pixel's error)
      bool skip = false;
      if (wj <= p.color_thre) {
        light += wj;
        skip = skipped + light <= p.color_budget;
      }
      if (skip)
        skipped_round += wj;
      else
        s.vis[nvis++] = j;
    }
    skipped += skipped_round;
    if (nvis > 0) {
      // colour input rows [geo, SH(dir)]: geo sits at h[1..G] of the density output
      float* in = (h == s.bufa.data()) ? s.bufb.data() : s.bufa.data();
      for (int q = 0; q < nvis; ++q) {
        const float* hr = h + size_t(s.vis[q]) * f.width;
        std::copy(hr + 1, hr + 1 + f.G, in + size_t(q) * f.width);
        std::copy(d, d + 3, &s.dirs[size_t(q) * 3]);
      }
      float* other = (in == s.bufa.data()) ? s.bufb.data() : s.bufa.data();
      color_block(in, other, nvis, f.width, f.G, s.dirs.data(), f.sh_degree, f.cl, s.rgb.data());
      for (int q = 0; q < nvis; ++q)
        for (int c = 0; c < 3; ++c) rgb[c] += s.w[s.vis[q]] * s.rgb[size_t(q) * 3 + c];
    }
    coarse += fine_used >= p.fine;
    fine_used += visible;
    trans *= std::exp(-tau);
    t_cur = s.b[n - 1];
    n_eval += n;
    if (!(n == p.k && trans > p.early_eps && n_eval < p.max_samples)) break;
  }
  for (int c = 0; c < 3; ++c) out_rgb[c] = rgb[c];
  out_opacity = opacity;
  out_depth = depth;
  if (out_median) {
    // median termination distance: the first kept sample whose cumulative weight reaches half of the kept weight
    // (compositing.median_sample); 0 for a ray without samples
    const auto it = std::lower_bound(s.ray_cum.begin(), s.ray_cum.end(), 0.5f * cum);
    *out_median = it == s.ray_cum.end() ? 0.f : s.ray_mid[size_t(it - s.ray_cum.begin())];
  }
}

}  // namespace

// Returns (rgb [R,3] composited over nothing (the caller adds (1 - opacity) * background), depth [R] (weighted
// sum, not yet divided by the opacity), opacity [R], median termination distance [R] (empty unless want_median),
// samples evaluated).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t> render_inference(
    const at::Tensor& origins_in, const at::Tensor& dirs_in, const at::Tensor& t_min_in, const at::Tensor& t_max_in,
    const at::Tensor& occupied_in, const at::Tensor& aabb_in, double step_size, double cone_angle,
    int64_t samples_per_round, int64_t fine_samples, int64_t max_samples, double early_stop_eps, double alpha_thre,
    double color_weight_thre, double color_skip_budget, const at::Tensor& box_in, bool unbounded,
    const at::Tensor& table_in, const at::Tensor& resolutions, const at::Tensor& dense_mask,
    const std::vector<at::Tensor>& density_w, const std::vector<at::Tensor>& density_b,
    const std::vector<at::Tensor>& color_w, const std::vector<at::Tensor>& color_b, int64_t sh_degree,
    bool want_median) {
  TORCH_CHECK(origins_in.dim() == 2 && origins_in.size(1) == 3 && dirs_in.sizes() == origins_in.sizes(),
              "render_inference: origins and directions must be [R, 3]");
  const int64_t R = origins_in.size(0);
  TORCH_CHECK(t_min_in.numel() == R && t_max_in.numel() == R, "render_inference: t_min / t_max must be [R]");
  TORCH_CHECK(occupied_in.dim() == 4 && aabb_in.numel() == 6, "render_inference: occupied [L,G,G,G], aabb [6]");
  TORCH_CHECK(step_size > 0.0 && samples_per_round >= 1 && max_samples >= 0, "render_inference: bad marching");
  TORCH_CHECK(table_in.dim() == 3 && table_in.scalar_type() == at::kFloat, "render_inference: table must be [L,T,F]");
  TORCH_CHECK(box_in.numel() == 6 && sh_degree >= 1 && sh_degree <= 4, "render_inference: box [6], sh 1..4");
  auto o = origins_in.to(at::kFloat).contiguous();
  auto dr = dirs_in.to(at::kFloat).contiguous();
  auto tmin = t_min_in.to(at::kFloat).contiguous();
  auto tmax = t_max_in.to(at::kFloat).contiguous();
  auto occ = occupied_in.to(at::kBool).contiguous();
  auto aabb = aabb_in.to(at::kDouble).contiguous();
  auto table = table_in.contiguous();
  auto box = box_in.to(at::kFloat).contiguous();

  std::vector<uint8_t> coarse;
  const Grid g = make_grid(occ, aabb, coarse);
  RenderParams p{step_size, cone_angle, int(samples_per_round), int(std::min<int64_t>(fine_samples, 1 << 30)),
                 int(std::min<int64_t>(max_samples, 1 << 30)), float(early_stop_eps), float(alpha_thre),
                 float(color_weight_thre), float(color_skip_budget)};
  FieldParams f;
  f.box = box.data_ptr<float>();
  f.unbounded = unbounded;
  f.table = table.data_ptr<float>();
  f.T = table.size(1);
  f.F = table.size(2);
  f.LF = table.size(0) * f.F;
  f.levels = grid::make_levels(resolutions, dense_mask, f.T);
  f.dl = make_layers(density_w, density_b, "density MLP");
  f.cl = make_layers(color_w, color_b, "colour MLP");
  TORCH_CHECK(f.dl.front().in == f.LF, "render_inference: density MLP input must be the encoding width");
  f.G = f.dl.back().out - 1;
  f.sh_degree = int(sh_degree);
  TORCH_CHECK(f.G >= 0 && f.cl.front().in == f.G + int(sh_degree * sh_degree) && f.cl.back().out == 3,
              "render_inference: colour MLP must map geo + SH to rgb");
  f.width = int(f.LF);
  for (auto& l : f.dl) f.width = std::max(f.width, l.out);
  for (auto& l : f.cl) f.width = std::max({f.width, l.in, l.out});

  auto rgb = at::zeros({R, 3}, o.options());
  auto depth = at::zeros({R}, o.options());
  auto opacity = at::zeros({R}, o.options());
  auto median = want_median ? at::zeros({R}, o.options()) : at::empty({0}, o.options());
  float* mp = want_median ? median.data_ptr<float>() : nullptr;
  const float* op = o.data_ptr<float>();
  const float* dp = dr.data_ptr<float>();
  const float* t0 = tmin.data_ptr<float>();
  const float* t1 = tmax.data_ptr<float>();
  float* rp = rgb.data_ptr<float>();
  float* zp = depth.data_ptr<float>();
  float* ap = opacity.data_ptr<float>();

  // Rays differ widely in cost (a ray into empty space ends after a few samples, one through haze runs to its cap),
  // so threads take small blocks of rays from a shared counter instead of a static split of the range.
  constexpr int64_t kRays = 16;
  const int64_t n_blocks = (R + kRays - 1) / kRays;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> total{0};
  const int64_t n_threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_blocks));
  at::parallel_for(0, n_threads, 1, [&](int64_t, int64_t) {
    Scratch s(p.k, f.width);
    int64_t evaluated = 0;
    for (;;) {
      const int64_t blk = next.fetch_add(1);
      if (blk >= n_blocks) break;
      for (int64_t r = blk * kRays; r < std::min(R, (blk + 1) * kRays); ++r)
        render_ray(g, p, f, op + 3 * r, dp + 3 * r, t0[r], t1[r], s, rp + 3 * r, zp[r], ap[r],
                   mp ? mp + r : nullptr, evaluated);
    }
    total += evaluated;
  });
  return {rgb, depth, opacity, median, total.load()};
}

}  // namespace nm
