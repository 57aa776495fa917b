// Fused ForgetMult on the CPU: one pass over time, columns split across threads.
//   h_t = g_t * x_t + (1 - f_t) * h_{t-1},   g = f unless an input gate `i` is given.
// Tensors are contiguous (T, N). fp16/bf16 tensors are read and written in their own dtype
// while the state and the arithmetic are fp32 (`acc_t`), as in the CUDA kernel: no fp32
// copies of the inputs and outputs.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <optional>
#include <vector>

namespace {

constexpr int64_t kGrain = 1024;

// Each thread owns a block of columns and walks time in the outer loop, so that the inner
// loop reads contiguous memory and vectorizes; the block's running state lives in `state`.
template <typename scalar_t>
void forward_kernel(const scalar_t* f, const scalar_t* x, const scalar_t* i, const scalar_t* h0,
                    scalar_t* h, int64_t T, int64_t N, bool reverse) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> state(h0 + begin, h0 + end);
    const int64_t width = end - begin;
    for (int64_t s = 0; s < T; ++s) {
      const int64_t offset = (reverse ? T - 1 - s : s) * N + begin;
      const scalar_t* ft = f + offset;
      const scalar_t* xt = x + offset;
      const scalar_t* gt = i ? i + offset : ft;
      scalar_t* ht = h + offset;
      for (int64_t n = 0; n < width; ++n) {
        state[n] = acc_t(gt[n]) * acc_t(xt[n]) + (acc_t(1) - acc_t(ft[n])) * state[n];
        ht[n] = scalar_t(state[n]);
      }
    }
  });
}

template <typename scalar_t>
void backward_kernel(const scalar_t* f, const scalar_t* x, const scalar_t* i, const scalar_t* h0,
                     const scalar_t* h, const scalar_t* grad_h, scalar_t* grad_f,
                     scalar_t* grad_x, scalar_t* grad_i, scalar_t* grad_h0, int64_t T, int64_t N,
                     bool reverse) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, N, kGrain, [&](int64_t begin, int64_t end) {
    const int64_t width = end - begin;
    std::vector<acc_t> carry(width, acc_t(0));  // dLoss/dh_t, from later steps
    for (int64_t s = T - 1; s >= 0; --s) {
      const int64_t t = reverse ? T - 1 - s : s;
      const int64_t offset = t * N + begin;
      // h_{t-1} in processing order: h0 at the first step
      const scalar_t* prev = s == 0 ? h0 + begin : h + (reverse ? t + 1 : t - 1) * N + begin;
      const scalar_t* ft = f + offset;
      const scalar_t* xt = x + offset;
      const scalar_t* dh = grad_h + offset;
      scalar_t* df = grad_f + offset;
      scalar_t* dx = grad_x + offset;
      if (i) {
        const scalar_t* it = i + offset;
        scalar_t* di = grad_i + offset;
        for (int64_t n = 0; n < width; ++n) {
          const acc_t c = carry[n] + acc_t(dh[n]);
          dx[n] = scalar_t(c * acc_t(it[n]));
          di[n] = scalar_t(c * acc_t(xt[n]));
          df[n] = scalar_t(-c * acc_t(prev[n]));
          carry[n] = c * (acc_t(1) - acc_t(ft[n]));
        }
      } else {
        for (int64_t n = 0; n < width; ++n) {
          const acc_t c = carry[n] + acc_t(dh[n]);
          dx[n] = scalar_t(c * acc_t(ft[n]));
          df[n] = scalar_t(c * (acc_t(xt[n]) - acc_t(prev[n])));
          carry[n] = c * (acc_t(1) - acc_t(ft[n]));
        }
      }
    }
    for (int64_t n = 0; n < width; ++n) grad_h0[begin + n] = scalar_t(carry[n]);
  });
}

}  // namespace

torch::Tensor forget_mult_forward(torch::Tensor f, torch::Tensor x,
                                  std::optional<torch::Tensor> input_gate, torch::Tensor h0,
                                  bool reverse) {
  const torch::Tensor i = input_gate.value_or(torch::Tensor());
  auto h = torch::empty_like(x);
  const int64_t T = f.size(0), N = f.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "forget_mult_forward", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "forget_mult_backward", [&] {
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
