// Python bindings of the nerf_mapping CPU kernels (one extension module, several source files).
#include <torch/extension.h>

namespace nm {
at::Tensor hash_encode_forward(const at::Tensor& x, const at::Tensor& table, const at::Tensor& resolutions,
                               const at::Tensor& dense_mask);
std::tuple<at::Tensor, at::Tensor> hash_encode_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                        const at::Tensor& table, const at::Tensor& resolutions,
                                                        const at::Tensor& dense_mask, bool need_table_grad,
                                                        bool need_x_grad,
                                                        const c10::optional<at::Tensor>& grad_table_acc);
int64_t release_grad_buffers();
std::tuple<at::Tensor, at::Tensor, at::Tensor> march_rays_forward(const at::Tensor& origins,
                                                                  const at::Tensor& directions,
                                                                  const at::Tensor& t_min, const at::Tensor& t_max,
                                                                  const at::Tensor& occupied, const at::Tensor& aabb,
                                                                  double step_size, double cone_angle,
                                                                  int64_t max_samples);
std::tuple<at::Tensor, at::Tensor, at::Tensor> field_inference(
    const at::Tensor& x, const at::Tensor& dirs, const at::Tensor& box, bool unbounded, const at::Tensor& table,
    const at::Tensor& resolutions, const at::Tensor& dense_mask, const std::vector<at::Tensor>& density_w,
    const std::vector<at::Tensor>& density_b, const std::vector<at::Tensor>& color_w,
    const std::vector<at::Tensor>& color_b, int64_t sh_degree, bool want_color, bool want_geo);
at::Tensor color_inference(const at::Tensor& geo, const at::Tensor& dirs, const std::vector<at::Tensor>& color_w,
                           const std::vector<at::Tensor>& color_b, int64_t sh_degree);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t> render_inference(
    const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& t_min, const at::Tensor& t_max,
    const at::Tensor& occupied, const at::Tensor& aabb, double step_size, double cone_angle,
    int64_t samples_per_round, int64_t fine_samples, int64_t max_samples, double early_stop_eps, double alpha_thre,
    double color_weight_thre, double color_skip_budget, const at::Tensor& box, bool unbounded,
    const at::Tensor& table, const at::Tensor& resolutions, const at::Tensor& dense_mask,
    const std::vector<at::Tensor>& density_w, const std::vector<at::Tensor>& density_b,
    const std::vector<at::Tensor>& color_w, const std::vector<at::Tensor>& color_b, int64_t sh_degree,
    bool want_median);
}  // namespace nm

// Every compute kernel runs without the GIL (arguments are converted before, results after). The node runs several
// Python threads beside training (message callbacks, keyframe intake, the query candidates' renders): holding the GIL
// for a kernel's whole run (a batch of rays rendered is a long one) stalled them all, and with them the training
// thread's own Python between its kernels. The kernels touch no Python objects; the gradient-buffer pool has its own
// mutex.
static const py::call_guard<py::gil_scoped_release> kNoGil{};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nerf_mapping native CPU kernels (OpenMP)";
  m.attr("ABI_VERSION") = 4;
  m.def("hash_encode_forward", &nm::hash_encode_forward, "hash encoding forward -> [N, L*F]",
        py::arg("x"), py::arg("table"), py::arg("resolutions"), py::arg("dense_mask"), kNoGil);
  m.def("hash_encode_backward", &nm::hash_encode_backward, "hash encoding backward -> (grad_table, grad_x)",
        py::arg("grad_out"), py::arg("x"), py::arg("table"), py::arg("resolutions"), py::arg("dense_mask"),
        py::arg("need_table_grad") = true, py::arg("need_x_grad") = false, py::arg("grad_table_acc") = py::none(), kNoGil);
  m.def("release_grad_buffers", &nm::release_grad_buffers, "free pooled gradient-table buffers no longer in use");
  m.def("march_rays", &nm::march_rays_forward, "occupancy-grid ray marching -> (ray_indices, t_starts, t_ends)",
        py::arg("origins"), py::arg("directions"), py::arg("t_min"), py::arg("t_max"), py::arg("occupied"),
        py::arg("aabb"), py::arg("step_size"), py::arg("cone_angle") = 0.0, py::arg("max_samples") = 1024, kNoGil);
  m.def("field_inference", &nm::field_inference,
        "fused NGP field forward without autograd -> (sigma [N], rgb [N,3] or empty, geo [N,G] or empty)",
        py::arg("x"), py::arg("dirs"), py::arg("box"), py::arg("unbounded"), py::arg("table"), py::arg("resolutions"),
        py::arg("dense_mask"), py::arg("density_w"), py::arg("density_b"), py::arg("color_w"), py::arg("color_b"),
        py::arg("sh_degree"), py::arg("want_color"), py::arg("want_geo"), kNoGil);
  m.def("color_inference", &nm::color_inference, "colour MLP of fused inference for given geo features -> rgb [N,3]",
        py::arg("geo"), py::arg("dirs"), py::arg("color_w"), py::arg("color_b"), py::arg("sh_degree"), kNoGil);
  m.def("render_inference", &nm::render_inference,
        "inference renderer (march, fused field, composite, early stop) -> (rgb [R,3] without background, "
        "depth sum [R], opacity [R], median termination distance [R] or empty, samples evaluated)",
        py::arg("origins"), py::arg("dirs"), py::arg("t_min"), py::arg("t_max"), py::arg("occupied"), py::arg("aabb"),
        py::arg("step_size"), py::arg("cone_angle"), py::arg("samples_per_round"), py::arg("fine_samples"),
        py::arg("max_samples"), py::arg("early_stop_eps"), py::arg("alpha_thre"), py::arg("color_weight_thre"),
        py::arg("color_skip_budget"), py::arg("box"), py::arg("unbounded"), py::arg("table"), py::arg("resolutions"),
        py::arg("dense_mask"), py::arg("density_w"), py::arg("density_b"), py::arg("color_w"), py::arg("color_b"),
        py::arg("sh_degree"), py::arg("want_median") = false, kNoGil);
}
