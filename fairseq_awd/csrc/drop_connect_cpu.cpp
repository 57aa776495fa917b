// DropConnect on the CPU: out = w * m / (1 - p), m ~ Bernoulli(1 - p) drawn from a counter-based
// generator keyed by `seed`, so that threads draw their parts of the mask independently and
// the backward pass redraws the very same mask from the seed instead of storing it.
// torch's own CPU bernoulli_ is a serial Mersenne twister except on Intel CPUs with MKL.
// The generator is SplitMix64 (Steele, Lea and Flood 2014) evaluated at counter i: two
// multiplications per number, where ATen's Philox4x32-10 engine (scalar here) needs five and
// measured no faster than bernoulli_ on 2 threads.
#include <torch/extension.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kGrain = 16384;
constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ULL;  // SplitMix64's increment

// The i-th output of SplitMix64 started at `seed`, its top 32 bits.
inline uint32_t number_at(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * kGamma;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return static_cast<uint32_t>((z ^ (z >> 31)) >> 32);
}

// Element i keeps its value when the i-th number is below `threshold` (P = threshold / 2^32).
template <typename scalar_t>
void masked_scale(const scalar_t* in, scalar_t* out, int64_t n, uint64_t seed,
                  uint64_t threshold, double scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t factor = static_cast<acc_t>(scale);
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const bool keep = number_at(seed, static_cast<uint64_t>(i)) < threshold;
      out[i] = keep ? scalar_t(acc_t(in[i]) * factor) : scalar_t(0);
    }
  });
}

}  // namespace

// `keep` in (0, 1]: the probability of keeping a weight; the mask depends only on (seed, i).
torch::Tensor drop_connect_apply(torch::Tensor input, double keep, int64_t seed) {
  TORCH_CHECK(keep > 0.0 && keep <= 1.0, "drop_connect: keep probability must be in (0, 1]");
  auto in = input.contiguous();
  auto out = torch::empty_like(in);
  const uint64_t threshold = static_cast<uint64_t>(std::llround(keep * 4294967296.0));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "drop_connect", [&] {
    masked_scale<scalar_t>(in.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), in.numel(),
                           static_cast<uint64_t>(seed), threshold, 1.0 / keep);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply", &drop_connect_apply, "input * Bernoulli(keep) mask / keep, mask from seed (CPU)");
}
