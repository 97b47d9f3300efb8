// The one dispatch point: a table of SIMD tiers, best first; kernels() takes the first one that is compiled in and
// that this CPU runs, or the one ICEFORMER_SIMD names. The scalar reference runs everywhere.
#include <cstdlib>
#include <cstring>
#include <string>

#include "simd.h"

namespace iceformer {
namespace {

struct Tier {
  const char* name;
  const char* alias;  // a second accepted spelling of ICEFORMER_SIMD, or nullptr
  bool built;         // compiled for this architecture
  // Called only where cpu_runs() (the AVX-512 tables' own set-up code is AVX-512 code).
  const Kernels* (*table)();
  bool (*cpu_runs)();
  bool automatic;  // chosen without ICEFORMER_SIMD (avx512-hwy is for comparisons only)
};

#if defined(__x86_64__) || defined(_M_X64)
constexpr bool kX86 = true;
#else
constexpr bool kX86 = false;
#endif
#if defined(__aarch64__)
constexpr bool kArm64 = true;
#else
constexpr bool kArm64 = false;
#endif

#if defined(__x86_64__) || defined(_M_X64)
bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
bool has_vnni() { return has_avx512() && __builtin_cpu_supports("avx512vnni"); }
bool has_bf16() { return has_vnni() && __builtin_cpu_supports("avx512bf16"); }
// Highway's AVX2 target: AVX2, FMA, F16C, BMI1/2 (x86-64-v3 has them all).
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("f16c");
}
bool has_avx_vnni() { return has_avx2() && __builtin_cpu_supports("avxvnni"); }
#else
bool has_avx512() { return false; }
bool has_vnni() { return false; }
bool has_bf16() { return false; }
bool has_avx2() { return false; }
bool has_avx_vnni() { return false; }
#endif
bool has_neon() {
#if defined(__aarch64__)
  return true;  // Advanced SIMD is part of ARMv8-A
#else
  return false;
#endif
}
bool always() { return true; }
const Kernels* scalar_table() { return &scalar_kernels(); }

constexpr Tier kTiers[] = {
    {"avx512-vnni-bf16", "avx512-bf16", kX86, avx512_bf16_kernels, has_bf16, true},
    {"avx512-vnni", nullptr, kX86, avx512_vnni_kernels, has_vnni, true},
    {"avx512", nullptr, kX86, avx512_kernels, has_avx512, true},
    {"avx512-hwy", nullptr, kX86, avx512_hwy_kernels, has_avx512, false},
    {"avx2-vnni", nullptr, kX86, avx2_vnni_kernels, has_avx_vnni, true},
    {"avx2", nullptr, kX86, avx2_kernels, has_avx2, true},
    {"neon", nullptr, kArm64, neon_kernels, has_neon, true},
    {"scalar", nullptr, true, scalar_table, always, true},
};

bool usable(const Tier& t) { return t.built && t.cpu_runs() && t.table() != nullptr; }

bool named(const Tier& t, const char* s) {
  return std::strcmp(t.name, s) == 0 || (t.alias != nullptr && std::strcmp(t.alias, s) == 0);
}

const char* forced() {
  const char* f = std::getenv("ICEFORMER_SIMD");
  return f != nullptr && *f != 0 && std::strcmp(f, "auto") != 0 ? f : nullptr;
}

}  // namespace

std::string simd_tiers() {
  std::string out;
  for (const Tier& t : kTiers)
    if (usable(t)) out += (out.empty() ? "" : ",") + std::string(t.name);
  return out;
}

const Kernels* tier_kernels(const char* name) {
  for (const Tier& t : kTiers)
    if (named(t, name) && usable(t)) return t.table();
  return nullptr;
}

std::string simd_env_error() {
  const char* f = forced();
  if (f == nullptr) return "";
  for (const Tier& t : kTiers) {
    if (!named(t, f)) continue;
    if (usable(t)) return "";
    return std::string("ICEFORMER_SIMD=") + f + ": " +
           (!t.built ? "not built for this architecture" : "this CPU lacks its instructions") +
           " (tiers this library runs here: " + simd_tiers() + ")";
  }
  return std::string("ICEFORMER_SIMD=") + f + ": unknown tier (tiers this library runs here: " + simd_tiers() +
         "; or auto)";
}

const Kernels& kernels() {
  static const Kernels* chosen = [] {
    // A forced tier this CPU cannot run is refused when the library registers (simd_env_error); here it falls back
    // to the automatic choice.
    if (const char* f = forced())
      if (const Kernels* k = tier_kernels(f)) return k;
    for (const Tier& t : kTiers)
      if (t.automatic && usable(t)) return t.table();
    return &scalar_kernels();
  }();
  return *chosen;
}

}  // namespace iceformer
