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
}  // namespace nm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "nerf_mapping native CPU kernels (OpenMP)";
  m.attr("ABI_VERSION") = 1;
  m.def("hash_encode_forward", &nm::hash_encode_forward, "hash encoding forward -> [N, L*F]",
        py::arg("x"), py::arg("table"), py::arg("resolutions"), py::arg("dense_mask"));
  m.def("hash_encode_backward", &nm::hash_encode_backward, "hash encoding backward -> (grad_table, grad_x)",
        py::arg("grad_out"), py::arg("x"), py::arg("table"), py::arg("resolutions"), py::arg("dense_mask"),
        py::arg("need_table_grad") = true, py::arg("need_x_grad") = false, py::arg("grad_table_acc") = py::none());
  m.def("release_grad_buffers", &nm::release_grad_buffers, "free pooled gradient-table buffers no longer in use");
  m.def("march_rays", &nm::march_rays_forward, "occupancy-grid ray marching -> (ray_indices, t_starts, t_ends)",
        py::arg("origins"), py::arg("directions"), py::arg("t_min"), py::arg("t_max"), py::arg("occupied"),
        py::arg("aabb"), py::arg("step_size"), py::arg("cone_angle") = 0.0, py::arg("max_samples") = 1024);
}
