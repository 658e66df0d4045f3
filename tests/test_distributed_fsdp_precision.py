"""FSDP2 with a bf16 `MixedPrecisionPolicy` leaves the loss's inputs in fp32.

The root of the sharded policy (`PackedPolicy`) receives the loss's inputs as forward
arguments: old and reference log-probs, advantages, masks. FSDP2's default
`cast_forward_inputs=True` casts every float tensor argument of the root to `param_dtype`, so
with bf16 compute a log-prob of -12.3 became -12.3125 (ratio 1.0126 where it is 1). One gloo
process (FSDP2 runs on a world of one) shows it on the CPU.
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.distributed as dist
from helpers import tiny_model_and_tokenizer

from g2rpo_fast.distributed.parallel import shard_fsdp
from g2rpo_fast.packing.layout import pack_samples
from g2rpo_fast.packing.policy_forward import PackedPolicy, make_loss_fn
from g2rpo_fast.rollout.backends import SdpaBackend
from g2rpo_fast.rollout.composition import Sample
from g2rpo_fast.runtime import Runtime
from g2rpo_fast.trainer.config import G2RPOConfig


@contextlib.contextmanager
def one_rank_group(store_path, backend="gloo"):
    """A process group of this process alone (FSDP2 runs on a world of one)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group(backend, store=dist.FileStore(str(store_path), 1), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _batch_and_inputs(device):
    gen = torch.Generator().manual_seed(0)
    samples = [Sample(prompt_index=i // 2, prompt_ids=[3 + i // 2, 5, 7], guidance_ids=[9] if i % 2 == 0 else [],
                      generated_ids=torch.randint(4, 30, (5 + i,), generator=gen).tolist()) for i in range(4)]
    packed = pack_samples(samples, device)
    n = packed.num_tokens
    # values that bf16 cannot hold: a cast moves the ratio and the KL away from what fp32 gives
    old = -12.3 + 0.01 * torch.arange(n, dtype=torch.float32, device=device)
    inputs = dict(token_ids=packed.token_ids, advantages=torch.tensor([0.7, -0.3, 1.1, -1.5], device=device),
                  completion_mask=packed.completion_mask.float(), guidance_mask=packed.guidance_mask.float(),
                  cu_seqlens=packed.cu_seqlens, old_logps=old, ref_logps=old - 0.0123)
    return packed, inputs


def check_fsdp_root_keeps_the_loss_inputs_fp32(tmp_path, device, backend):
    """A bf16 FSDP2 policy on one rank of `backend`: the loss sees the fp32 inputs it was given,
    and its loss equals the loss of the same hidden states and weights fed those inputs."""
    model, _ = tiny_model_and_tokenizer(seed=0)
    model.to(device)
    config = G2RPOConfig(output_dir=str(tmp_path / "unused"), beta=0.04, num_iterations=2, eval_split=None)
    loss_fn = make_loss_fn(config)
    seen = []

    def recording_loss(hidden, weight, bias, **kw):
        seen.append((hidden.detach(), weight.detach(), None if bias is None else bias.detach(), dict(kw)))
        return loss_fn(hidden, weight, bias, **kw)

    runtime = Runtime(device, torch.bfloat16, SdpaBackend(), False)
    policy = PackedPolicy(model, runtime, recording_loss)
    with one_rank_group(tmp_path / "store", backend):
        shard_fsdp(policy, model, torch.bfloat16)
        packed, inputs = _batch_and_inputs(device)
        loss, _ = policy(packed, dict(inputs))

    got = seen[-1][3]
    for name in ("advantages", "completion_mask", "guidance_mask", "old_logps", "ref_logps"):
        assert got[name].dtype == torch.float32, name
        torch.testing.assert_close(got[name], inputs[name], rtol=0, atol=0, msg=name)
    hidden, weight, bias, _ = seen[-1]
    want, _ = loss_fn(hidden, weight, bias, **inputs)
    torch.testing.assert_close(loss.detach(), want.detach(), rtol=0, atol=0)


def test_fsdp_root_keeps_the_loss_inputs_fp32(tmp_path):
    check_fsdp_root_keeps_the_loss_inputs_fp32(tmp_path, torch.device("cpu"), "gloo")
