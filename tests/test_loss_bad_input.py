"""G2RPOLoss: bad input raises ValueError naming the argument, on both backends, before any kernel."""
from __future__ import annotations

import pytest
import torch

import g2rpo_fast as g

B, T, V = 4, 5, 30


def good_inputs():
    gen = torch.Generator().manual_seed(0)
    return dict(
        logits=torch.randn(B, T, V, generator=gen),
        token_ids=torch.randint(0, V, (B, T), generator=gen),
        rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]),
        group_size=2,
        completion_mask=torch.ones(B, T),
        guidance_mask=torch.zeros(B, T),
        old_logps=-torch.rand(B, T, generator=gen),
        ref_logps=-torch.rand(B, T, generator=gen),
    )


def packed(inputs, cu):
    out = dict(inputs, cu_seqlens=torch.tensor(cu, dtype=torch.int32))
    for k in ("logits", "token_ids", "completion_mask", "guidance_mask", "old_logps", "ref_logps"):
        out[k] = inputs[k].reshape(B * T, *inputs[k].shape[2:])
    return out


def nan_at(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[1] = value
    return t


CASES = {
    "nan_rewards": (lambda a: a.update(rewards=nan_at(a["rewards"])), "rewards"),
    "inf_rewards": (lambda a: a.update(rewards=nan_at(a["rewards"], float("inf"))), "rewards"),
    "nan_advantages": (lambda a: a.update(rewards=None, group_size=None,
                                          advantages=nan_at(torch.zeros(B))), "advantages"),
    "inf_advantages": (lambda a: a.update(rewards=None, advantages=nan_at(torch.zeros(B), -float("inf"))),
                       "advantages"),
    "advantages_wrong_shape": (lambda a: a.update(rewards=None, advantages=torch.zeros(B + 1)), "advantages"),
    "rewards_and_advantages": (lambda a: a.update(advantages=torch.zeros(B)), "advantages"),
    "group_size_not_dividing": (lambda a: a.update(group_size=3), "group_size"),
    "group_size_one_group_scaling": (lambda a: a.update(group_size=1), "group_size"),
    "group_size_missing": (lambda a: a.update(group_size=None), "group_size"),
    "rewards_wrong_shape": (lambda a: a.update(rewards=torch.zeros(B - 1)), "rewards"),
    "completion_mask_shape": (lambda a: a.update(completion_mask=torch.ones(B, T + 1)), "completion_mask"),
    "guidance_mask_shape": (lambda a: a.update(guidance_mask=torch.ones(B)), "guidance_mask"),
    "old_logps_shape": (lambda a: a.update(old_logps=torch.zeros(B, T - 1)), "old_logps"),
    "ref_logps_shape": (lambda a: a.update(ref_logps=torch.zeros(T, B)), "ref_logps"),
    "old_logps_nan": (lambda a: a.update(old_logps=nan_at(a["old_logps"])), "old_logps"),
    "ref_logps_integer": (lambda a: a.update(ref_logps=torch.zeros(B, T, dtype=torch.long)), "ref_logps"),
    "token_id_too_big": (lambda a: a.update(token_ids=nan_at(a["token_ids"], V)), "token_ids"),
    "token_id_negative": (lambda a: a.update(token_ids=nan_at(a["token_ids"], -1)), "token_ids"),
    "token_ids_shape": (lambda a: a.update(token_ids=a["token_ids"][:, :-1]), "token_ids"),
    "token_ids_float": (lambda a: a.update(token_ids=a["token_ids"].float()), "token_ids"),
    "logits_integer": (lambda a: a.update(logits=a["logits"].long()), "logits"),
    "logits_1d": (lambda a: a.update(logits=torch.zeros(V)), "logits"),
    "mask_on_other_device": (lambda a: a.update(completion_mask=torch.ones(B, T, device="meta")), "completion_mask"),
    "ref_on_other_device": (lambda a: a.update(ref_logps=torch.zeros(B, T, device="meta")), "ref_logps"),
    "token_ids_on_other_device": (lambda a: a.update(token_ids=a["token_ids"].to("meta")), "token_ids"),
    "rewards_on_other_device": (lambda a: a.update(rewards=a["rewards"].to("meta")), "rewards"),
    "num_items_not_positive": (lambda a: a.update(num_items_in_batch=0), "num_items_in_batch"),
    "guidance_mask_on_other_device": (lambda a: a.update(guidance_mask=torch.zeros(B, T, device="meta")),
                                      "guidance_mask"),
    "old_on_other_device": (lambda a: a.update(old_logps=torch.zeros(B, T, device="meta")), "old_logps"),
    "advantages_on_other_device": (lambda a: a.update(rewards=None, advantages=torch.zeros(B, device="meta")),
                                   "advantages"),
    "advantages_integer": (lambda a: a.update(rewards=None, advantages=torch.zeros(B, dtype=torch.long)),
                           "advantages"),
    "rewards_integer": (lambda a: a.update(rewards=torch.tensor([1, 0, 1, 1])), "rewards"),
    # [B/2, 2] has B elements but is not a [B, 1] column: it must not be flattened into B advantages
    "advantages_not_a_column": (lambda a: a.update(rewards=None, advantages=torch.zeros(B // 2, 2)), "advantages"),
}

PACKED_CASES = {
    "cu_seqlens_decreasing": ([0, 6, 4, 15, 20], "cu_seqlens"),
    "cu_seqlens_not_ending_at_n": ([0, 5, 10, 15, 19], "cu_seqlens"),
    "cu_seqlens_not_starting_at_0": ([1, 5, 10, 15, 20], "cu_seqlens"),
    "cu_seqlens_too_short": ([20], "cu_seqlens"),
    "cu_seqlens_wrong_count": ([0, 10, 20], "rewards"),  # 2 sequences but 4 rewards
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_the_argument(backend, case):
    mutate, name = CASES[case]
    inputs = good_inputs()
    mutate(inputs)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    with pytest.raises(ValueError, match=f"`{name}`"):
        g.G2RPOLoss(beta=0.04)(**inputs)


@pytest.mark.parametrize("case", list(PACKED_CASES))
def test_bad_cu_seqlens(backend, case):
    cu, name = PACKED_CASES[case]
    with pytest.raises(ValueError, match=f"`{name}`"):
        g.G2RPOLoss()(**packed(good_inputs(), cu))


def test_cu_seqlens_float_and_padded_mix(backend):
    inputs = packed(good_inputs(), [0, 5, 10, 15, 20])
    inputs["cu_seqlens"] = inputs["cu_seqlens"].float()
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        g.G2RPOLoss()(**inputs)
    padded = dict(good_inputs(), cu_seqlens=torch.tensor([0, 20], dtype=torch.int32))  # [B, T] with cu_seqlens
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        g.G2RPOLoss()(**padded)


def test_cu_seqlens_on_other_device(backend):
    inputs = packed(good_inputs(), [0, 5, 10, 15, 20])
    inputs["cu_seqlens"] = inputs["cu_seqlens"].to("meta")
    with pytest.raises(ValueError, match="`cu_seqlens`"):
        g.G2RPOLoss()(**inputs)


def test_good_packed_input_is_accepted(backend):
    loss, _ = g.G2RPOLoss(beta=0.04)(**packed(good_inputs(), [0, 5, 10, 15, 20]))
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "options, name",
    [
        (dict(loss_type="sum"), "loss_type"),
        (dict(importance_sampling_level="tok"), "importance_sampling_level"),
        (dict(guidance_loss="drop"), "guidance_loss"),
        (dict(scale_rewards="max"), "scale_rewards"),
        (dict(beta=-1.0), "beta"),
        (dict(epsilon_low=-0.1), "epsilon_low"),
        (dict(epsilon_high=float("nan")), "epsilon_high"),
        (dict(delta=0.5), "delta"),
        (dict(delta=1.0), "delta"),  # a cap at 1 would freeze every ratio: must exceed 1
        (dict(temperature=0.0), "temperature"),
        (dict(max_completion_length=0), "max_completion_length"),
    ],
)
def test_bad_options(options, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        g.G2RPOLoss(**options)


def test_beta_without_ref_logps(backend):
    inputs = good_inputs()
    inputs.pop("ref_logps")
    with pytest.raises(ValueError, match="`ref_logps`"):
        g.G2RPOLoss(beta=0.1)(**inputs)


def test_neither_rewards_nor_advantages(backend):
    inputs = good_inputs()
    inputs.pop("rewards")
    with pytest.raises(ValueError, match="`advantages`"):
        g.G2RPOLoss()(**inputs)
