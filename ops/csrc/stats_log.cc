#include "stats_log.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>

#include "simd.h"

namespace iceformer {

void log_call_stats(const AttentionParams& p, const CallStats& s) {
  const char* path = std::getenv("ICEFORMER_STATS");
  if (path == nullptr || *path == '\0') return;
  const AttentionShape& sh = p.shape;
  std::ostringstream o;
  o << "{\"path\":\"" << path_name(s.path) << "\",\"reason\":\"" << s.reason << "\",\"B\":" << sh.B
    << ",\"Hq\":" << sh.Hq << ",\"Hkv\":" << sh.Hkv << ",\"S\":" << sh.S << ",\"T\":" << sh.T << ",\"D\":" << sh.D
    << ",\"Dv\":" << sh.Dv << ",\"is_causal\":" << (p.is_causal ? 1 : 0) << ",\"top_k\":" << p.knn.top_k
    << ",\"head_lists\":" << (p.knn.per_head() ? 1 : 0) << ",\"knn_rows\":" << s.knn_rows
    << ",\"fallback_rows\":" << s.fallback_rows << ",\"mean_candidates\":" << s.mean_candidates
    << ",\"p99_candidates\":" << s.p99_candidates << ",\"build_ms\":" << s.build_ms << ",\"search_ms\":" << s.search_ms
    << ",\"softmax_ms\":" << s.softmax_ms << ",\"total_ms\":" << s.total_ms << ",\"index_bytes\":" << s.index_bytes
    << ",\"index_rebuilds\":" << s.index_rebuilds << ",\"stream_heads\":" << s.stream_heads << ",\"simd\":\""
    << kernels().name << "\"}\n";
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  if (FILE* f = std::fopen(path, "a")) {
    const std::string line = o.str();
    std::fwrite(line.data(), 1, line.size(), f);
    std::fclose(f);
  }
}

}  // namespace iceformer
