// Fused ForgetMult on the CPU: one pass over time per column, columns split across
// threads. h_t = g_t * x_t + (1 - f_t) * h_{t-1}, with g = f unless an input gate is
// given. Tensors are contiguous (T, N); an undefined `i` means g = f.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <optional>
#include <vector>

namespace {

constexpr int64_t kGrain = 1024;

template <typename scalar_t>
void forward_kernel(const scalar_t* f, const scalar_t* x, const scalar_t* i, const scalar_t* h0,
                    scalar_t* h, int64_t T, int64_t N, bool reverse) {
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t state = h0[n];
      for (int64_t s = 0; s < T; ++s) {
        const int64_t k = (reverse ? T - 1 - s : s) * N + n;
        const scalar_t g = i ? i[k] : f[k];
        state = g * x[k] + (scalar_t(1) - f[k]) * state;
        h[k] = state;
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* f, const scalar_t* x, const scalar_t* i, const scalar_t* h0,
                     const scalar_t* h, const scalar_t* grad_h, scalar_t* grad_f,
                     scalar_t* grad_x, scalar_t* grad_i, scalar_t* grad_h0, int64_t T, int64_t N,
                     bool reverse) {
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      scalar_t carry = 0;  // dLoss/dh_t, accumulated from later steps
      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = reverse ? T - 1 - s : s;
        const int64_t k = t * N + n;
        const int64_t prev = reverse ? t + 1 : t - 1;
        const scalar_t h_prev = s == 0 ? h0[n] : h[prev * N + n];
        carry += grad_h[k];
        if (i) {
          grad_x[k] = carry * i[k];
          grad_i[k] = carry * x[k];
          grad_f[k] = -carry * h_prev;
        } else {
          grad_x[k] = carry * f[k];
          grad_f[k] = carry * (x[k] - h_prev);
        }
        carry *= scalar_t(1) - f[k];
      }
      grad_h0[n] = carry;
    }
  });
}

}  // namespace

torch::Tensor forget_mult_forward(torch::Tensor f, torch::Tensor x,
                                  std::optional<torch::Tensor> input_gate, torch::Tensor h0,
                                  bool reverse) {
  const torch::Tensor i = input_gate.value_or(torch::Tensor());
  auto h = torch::empty_like(x);
  const int64_t T = f.size(0), N = f.size(1);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "forget_mult_forward", [&] {
    forward_kernel<scalar_t>(f.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                             i.defined() ? i.data_ptr<scalar_t>() : nullptr,
                             h0.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), T, N, reverse);
  });
  return h;
}

std::vector<torch::Tensor> forget_mult_backward(torch::Tensor f, torch::Tensor x,
                                                std::optional<torch::Tensor> input_gate,
                                                torch::Tensor h0,
                                                torch::Tensor h, torch::Tensor grad_h,
                                                bool reverse) {
  const torch::Tensor i = input_gate.value_or(torch::Tensor());
  auto grad_f = torch::empty_like(f);
  auto grad_x = torch::empty_like(x);
  auto grad_i = i.defined() ? torch::empty_like(i) : torch::Tensor();
  auto grad_h0 = torch::empty_like(h0);
  const int64_t T = f.size(0), N = f.size(1);
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "forget_mult_backward", [&] {
    backward_kernel<scalar_t>(
        f.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
        i.defined() ? i.data_ptr<scalar_t>() : nullptr, h0.data_ptr<scalar_t>(),
        h.data_ptr<scalar_t>(), grad_h.data_ptr<scalar_t>(), grad_f.data_ptr<scalar_t>(),
        grad_x.data_ptr<scalar_t>(), i.defined() ? grad_i.data_ptr<scalar_t>() : nullptr,
        grad_h0.data_ptr<scalar_t>(), T, N, reverse);
  });
  return {grad_f, grad_x, grad_i, grad_h0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forget_mult_forward, "ForgetMult forward (CPU)");
  m.def("backward", &forget_mult_backward, "ForgetMult backward (CPU)");
}
