// Multiresolution hash encoding (Instant-NGP, Mueller et al. 2022): CPU forward / backward kernels.
//
// Conventions (must match nerf_mapping.fields.hash_encoding.hash_encode_torch exactly):
//   x        [N, 3]    float32, clamped to [0, 1] (the gradient wrt x is zero where clamping was active)
//   table    [L, T, F] float32
//   res      [L]       int64, level resolution R: pos = x * R, vertices 0..R per axis (R+1 of them)
//   dense    [L]       bool, true -> index = ix + iy*(R+1) + iz*(R+1)^2 (requires (R+1)^3 <= T),
//                      false -> index = (ix * 1 ^ iy * 2654435761 ^ iz * 805459861) (uint32 wrap) mod T
//   out      [N, L*F]  level-major features: out[n, l*F + f]
//   corner c in 0..7: bit 0 -> +x, bit 1 -> +y, bit 2 -> +z
//
// Design notes (a CPU with a few cores; the default table, 2^19 x 16 x 2 floats = 64 MB, is far bigger than cache):
// * The fine levels are pure DRAM-latency bound (4 random cache lines per point and level). We
//   decouple index computation from the gather in small batches of points: pass 1 computes the 8
//   corner indices of BATCH points and issues software prefetches, pass 2 interpolates. By the time
//   pass 2 runs, most lines are in flight or arrived, which keeps many misses outstanding per core.
// * Backward is parallelised over *levels* instead of points: each level owns a disjoint slice of
//   the gradient table, so the scatter-add needs no atomics (x86 has no native float atomic add;
//   a CAS loop per corner costs more than the whole interpolation) and each thread's writes stay
//   within one 4 MB level slice. grad_out is transposed to level-major first so every level reads
//   a contiguous stream instead of 8 bytes out of each 128-byte row.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include "hash_grid.h"
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

namespace nm {

namespace {

using namespace grid;

template <int F>
void forward_impl(const float* x, const float* table, const std::vector<LevelInfo>& levels, int64_t N, int64_t T,
                  float* out) {
  const int64_t LF = static_cast<int64_t>(levels.size()) * F;
  at::parallel_for(0, N, 2048, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; s += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, end - s));
      grid::encode_batch<F>(x + s * 3, nb, table, levels, T, out + s * LF, LF);
    }
  });
}

// grad_t: level-major grad_out [L, N, F]; accumulates into grad_table [L, T, F].
template <int F>
void backward_table_impl(const float* grad_t, const float* x, const std::vector<LevelInfo>& levels, int64_t N,
                         int64_t T, float* grad_table) {
  const int64_t L = static_cast<int64_t>(levels.size());
  const int nthreads = std::max(1, std::min<int>(at::get_num_threads(), static_cast<int>(L)));
  // finest (most expensive, DRAM-bound) levels first so dynamic scheduling balances the cheap ones last
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t k = 0; k < L; ++k) {
    const int64_t l = L - 1 - k;
    const LevelInfo& li = levels[l];
    float* gl = grad_table + l * T * F;
    const float* go = grad_t + l * N * F;
    uint32_t idx[kBatch][8];
    float fr[kBatch][3];
    for (int64_t s = 0; s < N; s += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, N - s));
      corner_batch<F, true>(x + s * 3, nb, li, gl, idx, fr);
      for (int j = 0; j < nb; ++j) {
        float w[8];
        corner_weights(fr[j], w);
        const float* g = go + (s + j) * F;
        for (int c = 0; c < 8; ++c) {
          float* dst = gl + size_t(idx[j][c]) * F;
          for (int f = 0; f < F; ++f) dst[f] += w[c] * g[f];
        }
      }
    }
  }
}

// d out / d x: spatial derivative of the trilinear interpolation, chained with grad_out [N, L*F].
// Same batched prefetch structure as the forward (it is the same gather, reduced differently).
template <int F>
void backward_x_impl(const float* grad_out, const float* x, const float* table, const std::vector<LevelInfo>& levels,
                     int64_t N, int64_t T, float* grad_x) {
  const int64_t L = static_cast<int64_t>(levels.size());
  const int64_t LF = L * F;
  at::parallel_for(0, N, 2048, [&](int64_t begin, int64_t end) {
    uint32_t idx[kBatch][8];
    float fr[kBatch][3];
    float gx[kBatch][3];
    for (int64_t s = begin; s < end; s += kBatch) {
      const int nb = static_cast<int>(std::min<int64_t>(kBatch, end - s));
      for (int j = 0; j < nb; ++j) gx[j][0] = gx[j][1] = gx[j][2] = 0.f;
      for (int64_t l = 0; l < L; ++l) {
        const LevelInfo& li = levels[l];
        const float* tl = table + l * T * F;
        corner_batch<F, false>(x + s * 3, nb, li, tl, idx, fr);
        for (int j = 0; j < nb; ++j) {
          const float* g = grad_out + (s + j) * LF + l * F;
          float sc[8];  // <table value, grad> per corner
          for (int c = 0; c < 8; ++c) {
            const float* v = tl + size_t(idx[j][c]) * F;
            float a = 0.f;
            for (int f = 0; f < F; ++f) a += v[f] * g[f];
            sc[c] = a;
          }
          const float fx = fr[j][0], fy = fr[j][1], fz = fr[j][2];
          const float ux = 1.f - fx, uy = 1.f - fy, uz = 1.f - fz;
          const float dx = uy * uz * (sc[1] - sc[0]) + fy * uz * (sc[3] - sc[2]) + uy * fz * (sc[5] - sc[4]) +
                           fy * fz * (sc[7] - sc[6]);
          const float dy = ux * uz * (sc[2] - sc[0]) + fx * uz * (sc[3] - sc[1]) + ux * fz * (sc[6] - sc[4]) +
                           fx * fz * (sc[7] - sc[5]);
          const float dz = ux * uy * (sc[4] - sc[0]) + fx * uy * (sc[5] - sc[1]) + ux * fy * (sc[6] - sc[2]) +
                           fx * fy * (sc[7] - sc[3]);
          gx[j][0] += li.scale * dx;
          gx[j][1] += li.scale * dy;
          gx[j][2] += li.scale * dz;
        }
      }
      for (int j = 0; j < nb; ++j) {
        const float* xp = x + (s + j) * 3;
        for (int d = 0; d < 3; ++d) {
          // clamp(x, 0, 1) passes the gradient on the closed interval, like torch.clamp
          const bool inside = xp[d] >= 0.f && xp[d] <= 1.f;
          grad_x[(s + j) * 3 + d] = inside ? gx[j][d] : 0.f;
        }
      }
    }
  });
}

// Pool of gradient-table buffers. A fresh 64 MB zeros() per step costs far more than a zero_() on warm pages,
// almost all of it page faults (glibc serves such sizes with mmap and unmaps them on free; measured in
// docs/results/render.md). We hand autograd a new TensorImpl aliasing a pooled storage: AccumulateGrad steals it
// (its use_count is 1), so param.grad aliases the pool. A buffer is reused only once nothing else
// references its storage (i.e. the optimizer's zero_grad(set_to_none=True) dropped param.grad), so a
// gradient the caller still holds is never overwritten.
std::mutex g_pool_mutex;
std::vector<at::Tensor> g_pool;
constexpr size_t kPoolMax = 4;

at::Tensor pooled_zeros_like(const at::Tensor& table) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  for (auto& buf : g_pool) {
    if (buf.sizes() == table.sizes() && buf.storage().use_count() == 1) {
      buf.zero_();
      return at::alias(buf);
    }
  }
  at::Tensor buf = at::zeros_like(table, at::MemoryFormat::Contiguous);
  if (g_pool.size() < kPoolMax) {
    g_pool.push_back(buf);
    return at::alias(buf);
  }
  return buf;
}

void check_inputs(const at::Tensor& x, const at::Tensor& table) {
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu(), "hash encoding native kernels are CPU only");
  TORCH_CHECK(x.scalar_type() == at::kFloat && table.scalar_type() == at::kFloat, "hash encoding: float32 only");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == 3, "x must be [N, 3]");
  TORCH_CHECK(table.dim() == 3, "table must be [L, T, F]");
  TORCH_CHECK(table.size(1) <= (int64_t(1) << 32), "table too large");
}


}  // namespace

at::Tensor hash_encode_forward(const at::Tensor& x_in, const at::Tensor& table_in, const at::Tensor& resolutions,
                               const at::Tensor& dense_mask) {
  check_inputs(x_in, table_in);
  auto x = x_in.contiguous();
  auto table = table_in.contiguous();
  const int64_t N = x.size(0), L = table.size(0), T = table.size(1), F = table.size(2);
  TORCH_CHECK(resolutions.numel() == L && dense_mask.numel() == L, "resolutions / dense_mask must have L entries");
  auto levels = make_levels(resolutions, dense_mask, T);
  auto out = at::empty({N, L * F}, x.options());
  if (N == 0) return out;
  NM_DISPATCH_F(F, forward_impl<kF>(x.data_ptr<float>(), table.data_ptr<float>(), levels, N, T,
                                    out.data_ptr<float>()));
  return out;
}

// Returns (grad_table, grad_x). grad_table is accumulated into `grad_table_acc` when given (lets callers keep a
// persistent, already-zeroed buffer instead of allocating + zeroing 64 MB per step), else freshly zero-allocated.
// Either output is an undefined tensor (None in Python) when not requested.
std::tuple<at::Tensor, at::Tensor> hash_encode_backward(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                        const at::Tensor& table_in, const at::Tensor& resolutions,
                                                        const at::Tensor& dense_mask, bool need_table_grad,
                                                        bool need_x_grad,
                                                        const c10::optional<at::Tensor>& grad_table_acc) {
  check_inputs(x_in, table_in);
  auto x = x_in.contiguous();
  auto table = table_in.contiguous();
  const int64_t N = x.size(0), L = table.size(0), T = table.size(1), F = table.size(2);
  TORCH_CHECK(grad_out_in.dim() == 2 && grad_out_in.size(0) == N && grad_out_in.size(1) == L * F,
              "grad_out must be [N, L*F]");
  auto grad_out = grad_out_in.to(at::kFloat).contiguous();
  auto levels = make_levels(resolutions, dense_mask, T);
  at::Tensor grad_table, grad_x;
  if (need_table_grad) {
    if (grad_table_acc.has_value() && grad_table_acc->defined()) {
      grad_table = *grad_table_acc;
      TORCH_CHECK(grad_table.sizes() == table.sizes() && grad_table.is_contiguous() &&
                      grad_table.scalar_type() == at::kFloat,
                  "grad_table_acc must be a contiguous float32 tensor shaped like table");
    } else {
      grad_table = pooled_zeros_like(table);
    }
    if (N > 0) {
      auto grad_t = grad_out.view({N, L, F}).transpose(0, 1).contiguous();  // [L, N, F]
      NM_DISPATCH_F(F, backward_table_impl<kF>(grad_t.data_ptr<float>(), x.data_ptr<float>(), levels, N, T,
                                               grad_table.data_ptr<float>()));
    }
  }
  if (need_x_grad) {
    grad_x = at::empty_like(x);
    if (N > 0) {
      NM_DISPATCH_F(F, backward_x_impl<kF>(grad_out.data_ptr<float>(), x.data_ptr<float>(),
                                           table.data_ptr<float>(), levels, N, T, grad_x.data_ptr<float>()));
    }
  }
  return {grad_table, grad_x};
}

// Drop pooled gradient buffers nobody references any more (frees their memory).
int64_t release_grad_buffers() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  int64_t n = 0;
  std::vector<at::Tensor> keep;
  for (auto& buf : g_pool) {
    if (buf.storage().use_count() == 1) ++n; else keep.push_back(buf);
  }
  g_pool.swap(keep);
  return n;
}

}  // namespace nm
