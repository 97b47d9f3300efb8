// Streaming heads found per prompt (attributes auto_window, auto_window_error): before the k-NN query blocks run,
// each query head attends exactly on kProbeRows of its k-NN rows, evenly spaced, both over every visible key and over
// the num_sink first keys plus the auto_window keys ending at the row. A head whose probe rows' mean relative output
// error ||o_window - o|| / ||o|| stays within auto_window_error streams for the call, as head_windows would make it
// (knn_settings.h, KnnSettings::for_heads): its rows attend the sinks and the window exactly, with no retrieval scan
// and no tail estimate. Local heads (a third of Qwen2.5-Coder-0.5B's in the layers that have them) then cost their
// window instead of the scan plus ~2700 exactly scored keys, and err less than the k-NN estimate does.
#pragma once
#include <cstdint>
#include <vector>

#include "parallel.h"
#include "params.h"
#include "status.h"

namespace iceformer {

constexpr int64_t kProbeRows = 16;

// Per query head, auto_window where the head streams for this call and 0 where it does not, into windows (Hq
// values); windows is left empty when the call is not probed: auto_window 0, head_windows given, or visibility
// beyond causality and a key length (attn_mask, other key padding, a hard window, softcap). real_prefix: [B][T + 1],
// real keys of batch row b before key j.
Status probe_windows(const AttentionParams& p, const int64_t* real_prefix, const Parallel& par,
                     std::vector<int64_t>* windows);

}  // namespace iceformer
