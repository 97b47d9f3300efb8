// Input checks of the ops' calls, with messages that say what, where, expected vs actual.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "params.h"
#include "status.h"

namespace iceformer {

// "[d0,d1,...]": how every error message prints a shape.
std::string dims_str(const std::vector<int64_t>& d);

// Shapes of Q, K, V -> AttentionShape, or an error naming the input, axis, expected and actual values.
Status resolve_shape(const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                     AttentionShape* out);
// attn_mask dims (rank 1..4, right-aligned broadcast to [B,Hq,S,T]) -> element strides.
Status resolve_mask(const std::vector<int64_t>& dims, const AttentionShape& s, MaskView* out);
// key_padding_mask dims must be [B,T].
Status check_key_padding(const std::vector<int64_t>& dims, const AttentionShape& s);
// Attribute values (ranges; relations that need no shapes).
Status check_settings(const KnnSettings& k);
// The per-head lists: each empty or Hq long (Hq < 0: length not known yet, values only); budgets and samples in
// [0, 2^40].
Status check_head_values(const HeadValues& h, int64_t Hq);

}  // namespace iceformer
