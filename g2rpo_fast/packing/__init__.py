"""The packed training forward: a micro-batch's completions in one row, no padding, varlen attention.

Read bottom up, each module importing only the ones above it in this list:
- `layout.py`: the packed row (`PackedBatch`; per sample `pack_samples`, or each group's prompt
  once, `pack_groups`) and its varlen metadata (cu_seqlens from the positions, the prefix-shared
  segments and key gather index);
- `packed_attention.py`: the varlen attention registered with transformers, which reads that
  metadata;
- `prefix_shared_attention.py`: how a prefix-shared row attends, and whether a model can;
- `policy_forward.py`: `PackedPolicy`, the module DDP wraps and FSDP shards: the packed row
  through the decoder, the completion tokens' hidden states, the loss (or log-probs) on them.
"""
