// forget_mult_cuda.cu compiled as host C++, so that the CUDA kernels' logic runs (and is
// tested) on a machine without a GPU: tests/test_forget_mult_cuda_source.py builds this
// file with g++ into a shared library and launches the kernels through ctypes, with the
// arguments fairseq_awd/modules/forget_mult_cuda.py gives cupy.
//
// The shim supplies what NVRTC provides on the device: the CUDA qualifiers, blockIdx /
// blockDim / threadIdx (a launch loops over every block and thread in turn), the bit-cast
// intrinsics, and the fp16 conversions that the device build does with PTX instructions
// (here the compiler's IEEE _Float16, which rounds to nearest even as cvt.rn.f16.f32 does).

#include <cstring>

#define FORGET_MULT_HOST_BUILD
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

#ifndef __FLT16_MAX__
#error "the host build of the CUDA kernel needs a compiler with _Float16 (GCC >= 12, Clang >= 15)"
#endif

namespace {

struct Index { unsigned int x; };
Index blockIdx, blockDim, threadIdx;

inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float half_bits_to_float(unsigned short bits) {
  _Float16 h;
  std::memcpy(&h, &bits, sizeof h);
  return static_cast<float>(h);
}

inline unsigned short float_to_half_bits(float v) {
  const _Float16 h = static_cast<_Float16>(v);
  unsigned short bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

#include "forget_mult_cuda.cu"

// Run `kernel(args...)` as a (blocks,) x (threads,) launch would, one thread at a time.
template <typename Kernel, typename... Args>
void launch(Kernel kernel, unsigned int blocks, unsigned int threads, Args... args) {
  blockDim.x = threads;
  for (blockIdx.x = 0; blockIdx.x < blocks; ++blockIdx.x) {
    for (threadIdx.x = 0; threadIdx.x < threads; ++threadIdx.x) kernel(args...);
  }
}

}  // namespace

// One C entry point per kernel cupy compiles, named after its name expression
// (forget_mult_forward<float> -> forget_mult_forward_float), with the kernel's parameters
// after the grid and block sizes.
#define FORGET_MULT_HOST_ENTRY_POINTS(T)                                                    \
  extern "C" void forget_mult_forward_##T(                                                  \
      unsigned int blocks, unsigned int threads, const T* f, const T* x, const T* gate,     \
      const T* h0, T* h, long long steps, long long columns, int reverse) {                 \
    launch(forget_mult_forward<T>, blocks, threads, f, x, gate, h0, h, steps, columns,     \
           reverse);                                                                        \
  }                                                                                         \
  extern "C" void forget_mult_backward_##T(                                                 \
      unsigned int blocks, unsigned int threads, const T* f, const T* x, const T* gate,     \
      const T* h0, const T* h, const T* grad_h, T* grad_f, T* grad_x, T* grad_gate,         \
      T* grad_h0, long long steps, long long columns, int reverse) {                        \
    launch(forget_mult_backward<T>, blocks, threads, f, x, gate, h0, h, grad_h, grad_f,     \
           grad_x, grad_gate, grad_h0, steps, columns, reverse);                           \
  }

FORGET_MULT_HOST_ENTRY_POINTS(float)
FORGET_MULT_HOST_ENTRY_POINTS(double)
FORGET_MULT_HOST_ENTRY_POINTS(Half)
FORGET_MULT_HOST_ENTRY_POINTS(BFloat16)
