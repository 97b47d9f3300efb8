// Small deterministic PRNG (splitmix64): same seed, same stream, on every platform and thread count.
#pragma once
#include <cmath>
#include <cstdint>

namespace iceformer {

struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  uint64_t next() { return mix(state += 0x9e3779b97f4a7c15ULL); }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
  double normal() {  // Box-Muller
    const double u1 = (next() >> 11) * (1.0 / 9007199254740992.0) + 1e-300, u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

// Seed for one query row: a hash of (seed, batch, head, row), independent of which thread runs it.
inline uint64_t row_seed(int64_t seed, int64_t b, int64_t h, int64_t i) {
  uint64_t z = Rng::mix(static_cast<uint64_t>(seed) ^ 0x5851f42d4c957f2dULL);
  z = Rng::mix(z ^ static_cast<uint64_t>(b));
  z = Rng::mix(z ^ static_cast<uint64_t>(h) * 0x9e3779b97f4a7c15ULL);
  return Rng::mix(z ^ static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ULL);
}

}  // namespace iceformer
