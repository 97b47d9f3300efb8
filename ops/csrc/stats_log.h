// Per-call statistics on demand: when ICEFORMER_STATS names a file, one JSON line per call is appended.
#pragma once
#include "attention.h"

namespace iceformer {
void log_call_stats(const AttentionParams& p, const CallStats& s);
}  // namespace iceformer
