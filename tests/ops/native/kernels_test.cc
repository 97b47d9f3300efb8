// Every kernel of every SIMD tier this CPU runs against the scalar reference (simd.h contracts), without ONNX Runtime:
// built by CMake (ICEFORMER_KERNEL_TESTS=ON) natively and for ARM64, where it runs under qemu-aarch64
// (tests/ops/test_portability.py). Exact where the contract is exact (integer scans, selection, counts, packing,
// bfloat16 pair words, the bfloat16 P V whose products are exact), else within stated float32 tolerances.
// Prints one line per tier and "kernels: N tiers, M checks, 0 failures"; exits 1 on any failure.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "simd.h"

namespace {

using iceformer::Kernels;
using iceformer::kPanel;
using iceformer::kQueryLevels;

int g_checks = 0, g_failures = 0;

void check(bool ok, const std::string& tier, const char* what, int64_t n) {
  ++g_checks;
  if (!ok && g_failures++ < 20) std::printf("FAIL %s %s (n=%lld)\n", tier.c_str(), what, static_cast<long long>(n));
}

// |a - b| <= tol * (scale + |b|) for every element; NaN must match NaN.
bool close(const std::vector<float>& a, const std::vector<float>& b, double tol, double scale = 1.0) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i])) return false;
      continue;
    }
    if (std::fabs(double(a[i]) - b[i]) > tol * (scale + std::fabs(double(b[i])))) return false;
  }
  return true;
}

std::vector<float> normal(std::mt19937& g, int64_t n) {
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

void tiles(const Kernels& k, const Kernels& s, std::mt19937& g) {
  for (int64_t rows : {1, 3, 5, 8, 13}) {
    for (int64_t D : {1, 7, 48, 64, 80}) {
      const int64_t np = 3, ldq = D + 3, lds = np * kPanel + 5;
      auto q = normal(g, rows * ldq), kp = normal(g, np * D * kPanel);
      std::vector<float> a(static_cast<size_t>(rows * lds), 0.f), b = a;
      k.qk_tile(q.data(), ldq, rows, kp.data(), D, np, a.data(), lds);
      s.qk_tile(q.data(), ldq, rows, kp.data(), D, np, b.data(), lds);
      check(close(a, b, 1e-5, std::sqrt(double(D))), k.name, "qk_tile", rows * D);
      for (int64_t n : {1, 3, 4, 5, 17}) {  // keys in place: whole and partial 4-key blocks
        const int64_t ldk = D + 2, ldo = n + 3;
        auto keys = normal(g, n * ldk);
        std::vector<float> ka(static_cast<size_t>(rows * ldo), 7.f), kb = ka;
        k.qk_keys(q.data(), ldq, rows, keys.data(), ldk, n, D, ka.data(), ldo);
        s.qk_keys(q.data(), ldq, rows, keys.data(), ldk, n, D, kb.data(), ldo);
        check(close(ka, kb, 1e-5, std::sqrt(double(D))), k.name, "qk_keys (the 7s past n untouched)", rows * n);
      }
    }
    for (int64_t dv : {1, 15, 16, 17, 64, 80}) {
      const int64_t cols = 2 * (rows + 7), ldp = cols + 1, ldv = dv + 2, ldo = dv + 3;
      auto p = normal(g, rows * ldp), v = normal(g, cols * ldv), o0 = normal(g, rows * ldo);
      auto a = o0, b = o0;
      k.pv_tile(p.data(), ldp, rows, cols, v.data(), ldv, dv, a.data(), ldo);
      s.pv_tile(p.data(), ldp, rows, cols, v.data(), ldv, dv, b.data(), ldo);
      check(close(a, b, 1e-5, std::sqrt(double(cols))), k.name, "pv_tile", rows * dv);
      std::vector<uint32_t> vw(static_cast<size_t>(cols / 2 * dv));
      for (int64_t c = 0; c < cols; c += 2)
        s.to_pairs(v.data() + c * ldv, v.data() + (c + 1) * ldv, dv, vw.data() + c / 2 * dv);
      a = o0, b = o0;
      k.pv_tile_bf16(p.data(), ldp, rows, cols, vw.data(), dv, a.data(), ldo);
      s.pv_tile_bf16(p.data(), ldp, rows, cols, vw.data(), dv, b.data(), ldo);
      check(a == b, k.name, "pv_tile_bf16 (exact products, same order)", rows * dv);
    }
  }
}

void scans(const Kernels& k, const Kernels& s, std::mt19937& g) {
  std::uniform_int_distribution<uint32_t> word;
  for (int64_t rows : {1, 4, 7, 9}) {
    for (int64_t R4 : {1, 2, 8}) {
      const int64_t np = 5, ldq = R4 + 1, cap = np * kPanel;
      std::vector<uint32_t> q(static_cast<size_t>(rows * ldq));
      std::vector<uint8_t> kb(static_cast<size_t>(np * R4 * 64));
      // Query bytes in [-kQueryLevels, kQueryLevels] (simd.h), the extremes included; key bytes anywhere in [0, 255].
      std::uniform_int_distribution<int> qbyte(-static_cast<int>(kQueryLevels), static_cast<int>(kQueryLevels));
      for (auto& x : q) {
        x = 0;
        for (int j = 0; j < 4; ++j) x |= static_cast<uint32_t>(static_cast<uint8_t>(qbyte(g))) << (8 * j);
      }
      for (auto& x : kb) x = static_cast<uint8_t>(word(g));
      kb[0] = 255, kb[1] = 255;  // the largest pair sum: 2 * 255 * 64 against a query word of +-64 bytes
      q[0] = 0x40404040u, q[ldq] = rows > 1 ? 0xC0C0C0C0u : q[0];
      std::vector<int64_t> vis(static_cast<size_t>(rows));
      std::vector<float> thr(static_cast<size_t>(rows));
      std::vector<int32_t> thri(static_cast<size_t>(rows));
      for (int64_t r = 0; r < rows; ++r) {
        vis[r] = (r * 29) % (np * kPanel + 3);
        thri[r] = static_cast<int32_t>(word(g) % 4000) - 2000;
        thr[r] = r % 3 == 0 ? -std::numeric_limits<float>::infinity() : static_cast<float>(thri[r]);  // every score
      }
      std::vector<int32_t> ia(static_cast<size_t>(rows * cap), -1), ib = ia;
      std::vector<float> va(static_cast<size_t>(rows * cap), 0.f), vb = va;
      std::vector<int64_t> ca(static_cast<size_t>(rows), 0), cb = ca;
      k.qk_above_i8(q.data(), ldq, rows, kb.data(), R4, np, vis.data(), thr.data(), ia.data(), va.data(), cap,
                    ca.data());
      s.qk_above_i8(q.data(), ldq, rows, kb.data(), R4, np, vis.data(), thr.data(), ib.data(), vb.data(), cap,
                    cb.data());
      bool same = ca == cb;  // the hits in column order; entries past a row's count are scratch
      for (int64_t r = 0; r < rows && same; ++r)
        same = std::equal(ia.begin() + r * cap, ia.begin() + r * cap + ca[r], ib.begin() + r * cap) &&
               std::equal(va.begin() + r * cap, va.begin() + r * cap + ca[r], vb.begin() + r * cap);
      check(same, k.name, "qk_above_i8", rows * R4);
      std::vector<uint16_t> ba(static_cast<size_t>(np), 0), bb = ba;
      k.qk_union_i8(q.data(), ldq, rows, kb.data(), R4, np, vis.data(), thri.data(), ba.data());
      s.qk_union_i8(q.data(), ldq, rows, kb.data(), R4, np, vis.data(), thri.data(), bb.data());
      check(ba == bb, k.name, "qk_union_i8", rows * R4);
    }
  }
}

void vectors(const Kernels& k, const Kernels& s, std::mt19937& g) {
  const float inf = INFINITY;
  for (int64_t n : {0, 1, 3, 4, 7, 8, 15, 16, 17, 33, 100, 1000}) {
    auto x = normal(g, n), y = normal(g, n);
    check(k.max(x.data(), n) == s.max(x.data(), n), k.name, "max", n);
    if (n > 2) {
      auto z = x;
      z[n / 2] = NAN;
      check(std::isnan(k.max(z.data(), n)), k.name, "max carries NaN", n);
      z[n / 2] = -inf;  // exp(-inf - m) is exactly 0
      auto a = z, b = z;
      const float sa = k.exp_sum(a.data(), n, 1.5f), sb = s.exp_sum(b.data(), n, 1.5f);
      check(close(a, b, 1e-6) && a[n / 2] == 0.f && std::fabs(sa - sb) <= 1e-5f * sb, k.name, "exp_sum", n);
    }
    check(std::fabs(k.dot(x.data(), y.data(), n) - s.dot(x.data(), y.data(), n)) <= 1e-5f * (1 + n), k.name, "dot", n);
    auto a = x, b = x;
    k.scal(0.37f, a.data(), n);
    s.scal(0.37f, b.data(), n);
    check(a == b, k.name, "scal", n);
    check(k.count_ge(x.data(), n, 0.25f) == s.count_ge(x.data(), n, 0.25f), k.name, "count_ge", n);
    std::vector<uint32_t> pa(static_cast<size_t>(n)), pb = pa, ra = pa, rb = pa;
    k.to_pairs(x.data(), n % 2 ? nullptr : y.data(), n, pa.data());
    s.to_pairs(x.data(), n % 2 ? nullptr : y.data(), n, pb.data());
    check(pa == pb, k.name, "to_pairs", n);
    k.repair(pa.data(), 1, n % 3 ? pa.data() : nullptr, 0, n, ra.data());
    s.repair(pb.data(), 1, n % 3 ? pb.data() : nullptr, 0, n, rb.data());
    check(ra == rb, k.name, "repair", n);
    const uint64_t h = s.row_hash(x.data(), n);
    check(k.row_hash(x.data(), n) == h, k.name, "row_hash", n);
    for (int64_t d : {int64_t{0}, n / 2, n - 1}) {  // one changed bit of one coordinate always changes the hash
      if (n == 0) break;
      auto z = x;
      uint32_t w;
      std::memcpy(&w, &z[d], 4);
      w ^= 1u << (d % 32);
      std::memcpy(&z[d], &w, 4);
      check(k.row_hash(z.data(), n) != h, k.name, "row_hash sees a changed bit", n);
    }
  }
  std::uniform_int_distribution<int> small(-50, 50);
  for (int64_t n : {1, 5, 16, 17, 64, 200, 768, 1000}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(small(g));
    for (int64_t kk : {int64_t{1}, int64_t{2}, int64_t{17}, n / 2 + 1, n}) {
      if (kk > n) continue;
      auto a = v, b = v;
      check(k.kth_largest_int(a.data(), n, kk) == s.kth_largest_int(b.data(), n, kk), k.name, "kth_largest_int", n);
    }
  }
  for (int64_t D : {1, 5, 16, 64, 130}) {
    const int64_t rows = 40, ld = D + 2, n = 13;
    auto tab = normal(g, rows * ld), q = normal(g, D), w = normal(g, n);
    w[3] = 0.f;
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) ids[t] = static_cast<int32_t>((t * 7) % rows);
    std::vector<float> a(static_cast<size_t>(n)), b = a;
    k.gather_dot(q.data(), tab.data(), ld, ids.data(), n, D, 0.5f, a.data());
    s.gather_dot(q.data(), tab.data(), ld, ids.data(), n, D, 0.5f, b.data());
    check(close(a, b, 1e-5, std::sqrt(double(D))), k.name, "gather_dot", D);
    auto ea = normal(g, D), eb = ea;
    k.gather_axpy(w.data(), tab.data(), ld, ids.data(), n, D, ea.data());
    s.gather_axpy(w.data(), tab.data(), ld, ids.data(), n, D, eb.data());
    check(close(ea, eb, 1e-5, 4.0), k.name, "gather_axpy", D);
    for (int64_t m : {1, 7, 16}) {
      std::vector<const float*> rp(16);
      for (int64_t c = 0; c < m; ++c) rp[c] = tab.data() + c * ld;
      std::vector<float> pa(static_cast<size_t>(D * kPanel), -1.f), pb = pa;
      k.pack_panel(rp.data(), m, D, pa.data());
      s.pack_panel(rp.data(), m, D, pb.data());
      check(pa == pb, k.name, "pack_panel", D * m);
    }
  }
}

}  // namespace

int main() {
  const Kernels& ref = iceformer::scalar_kernels();
  std::string tiers = iceformer::simd_tiers();
  int ntiers = 0;
  for (size_t at = 0; at <= tiers.size();) {
    const size_t end = std::min(tiers.find(',', at), tiers.size());
    const std::string name = tiers.substr(at, end - at);
    at = end + 1;
    const Kernels* k = iceformer::tier_kernels(name.c_str());
    if (k == nullptr || name != k->name) {
      std::printf("FAIL tier %s has no table\n", name.c_str());
      return 1;
    }
    const int before = g_failures;
    std::mt19937 g(7);
    tiles(*k, ref, g);
    scans(*k, ref, g);
    vectors(*k, ref, g);
    std::printf("%s: %s\n", name.c_str(), g_failures == before ? "ok" : "FAILED");
    ++ntiers;
  }
  std::printf("kernels: %d tiers, %d checks, %d failures\n", ntiers, g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
