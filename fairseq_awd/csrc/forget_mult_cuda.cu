// Fused ForgetMult for CUDA, compiled at run time by cupy (NVRTC); see
// fairseq_awd/modules/forget_mult_cuda.py. One thread per column n of the contiguous
// (T, N) inputs walks the time axis:
//   h_t = g_t * x_t + (1 - f_t) * h_{t-1},   g = f unless an input gate is given.
// Half and bfloat16 are stored as raw 16-bit words (no cuda_fp16.h / cuda_bf16.h needed)
// and accumulated in fp32; float and double accumulate in their own precision.
//
// FORGET_MULT_HOST_BUILD: tests/test_forget_mult_cuda_source.py also compiles this file as
// host C++ through forget_mult_cuda_host.cpp, which supplies __global__, the thread
// indices and the two fp16 conversions below in portable code; cupy's build never sets it.

struct Half { unsigned short bits; };
struct BFloat16 { unsigned short bits; };

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
#ifndef FORGET_MULT_HOST_BUILD
__device__ __forceinline__ float half_bits_to_float(unsigned short bits) {
  float out;
  asm("cvt.f32.f16 %0, %1;" : "=f"(out) : "h"(bits));
  return out;
}
__device__ __forceinline__ unsigned short float_to_half_bits(float v) {
  unsigned short bits;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(v));
  return bits;
}
#endif

__device__ __forceinline__ float to_acc(Half v) { return half_bits_to_float(v.bits); }
__device__ __forceinline__ float to_acc(BFloat16 v) {
  return __uint_as_float(static_cast<unsigned int>(v.bits) << 16);
}

template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <> __device__ __forceinline__ Half from_acc<Half>(float v) {
  Half out;
  out.bits = float_to_half_bits(v);
  return out;
}
template <> __device__ __forceinline__ BFloat16 from_acc<BFloat16>(float v) {
  // Round to nearest even by hand so that the kernel also builds for pre-sm_80 devices.
  BFloat16 out;
  unsigned int u = __float_as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out.bits = 0x7fc0;  // NaN
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    out.bits = static_cast<unsigned short>(u >> 16);
  }
  return out;
}

template <typename T>
__global__ void forget_mult_forward(const T* __restrict__ f, const T* __restrict__ x,
                                    const T* __restrict__ gate, const T* __restrict__ h0,
                                    T* __restrict__ h, long long steps, long long columns,
                                    int reverse) {
  typedef typename Acc<T>::type acc_t;
  const long long n = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (n >= columns) return;
  acc_t state = to_acc(h0[n]);
  for (long long s = 0; s < steps; ++s) {
    const long long k = (reverse ? steps - 1 - s : s) * columns + n;
    const acc_t ft = to_acc(f[k]);
    const acc_t gt = gate ? to_acc(gate[k]) : ft;
    state = gt * to_acc(x[k]) + (acc_t(1) - ft) * state;
    h[k] = from_acc<T>(state);
  }
}

template <typename T>
__global__ void forget_mult_backward(const T* __restrict__ f, const T* __restrict__ x,
                                     const T* __restrict__ gate, const T* __restrict__ h0,
                                     const T* __restrict__ h, const T* __restrict__ grad_h,
                                     T* __restrict__ grad_f, T* __restrict__ grad_x,
                                     T* __restrict__ grad_gate, T* __restrict__ grad_h0,
                                     long long steps, long long columns, int reverse) {
  typedef typename Acc<T>::type acc_t;
  const long long n = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (n >= columns) return;
  acc_t carry = 0;  // dLoss/dh_t, accumulated from later steps
  for (long long s = steps - 1; s >= 0; --s) {
    const long long t = reverse ? steps - 1 - s : s;
    const long long k = t * columns + n;
    const acc_t h_prev = s == 0 ? to_acc(h0[n]) : to_acc(h[(reverse ? t + 1 : t - 1) * columns + n]);
    const acc_t ft = to_acc(f[k]);
    const acc_t xt = to_acc(x[k]);
    carry += to_acc(grad_h[k]);
    if (gate) {
      grad_x[k] = from_acc<T>(carry * to_acc(gate[k]));
      grad_gate[k] = from_acc<T>(carry * xt);
      grad_f[k] = from_acc<T>(-carry * h_prev);
    } else {
      grad_x[k] = from_acc<T>(carry * ft);
      grad_f[k] = from_acc<T>(carry * (xt - h_prev));
    }
    carry *= acc_t(1) - ft;
  }
  grad_h0[n] = from_acc<T>(carry);
}
