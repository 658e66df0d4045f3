"""group_advantages against float64, on both backends; equal rewards give 0; bad input."""
from __future__ import annotations

import pytest
import torch

import g2rpo_fast as g
from g2rpo_fast.ops.advantages import group_advantages_ref


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [2, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_advantages_match_float64(backend, device, scale, group_size, dtype):
    torch.manual_seed(group_size)
    rewards = torch.randn(5 * group_size).to(dtype)
    adv = g.ops.group_advantages(rewards.to(device), group_size, scale)
    assert adv.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert not adv.requires_grad
    truth = group_advantages_ref(rewards.double(), group_size, scale)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(adv.double().cpu(), truth, atol=tol, rtol=tol)


def test_equal_rewards_give_zero_advantage(backend, device):
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3], device=device)
    adv = g.ops.group_advantages(rewards, 4)
    assert torch.isfinite(adv).all()
    assert (adv[:4] == 0).all()
    assert adv[8:].abs().max() < 1e-6  # 0.3 is not exact in binary: the mean may differ by an ulp
    assert adv[4:8].abs().min() > 0.5


def test_batch_scaling_with_group_size_one(backend, device):
    rewards = torch.tensor([0.0, 1.0, 2.0, 5.0], device=device)
    adv = g.ops.group_advantages(rewards, 1, "batch")
    assert (adv == 0).all()  # each prompt is its own group: nothing to compare with


def test_eps_and_gradient_free(backend, device):
    rewards = torch.tensor([0.0, 1.0, 0.0, 3.0], device=device, requires_grad=True)
    adv = g.ops.group_advantages(rewards, 2, eps=0.0)
    torch.testing.assert_close(adv.cpu(), torch.tensor([-0.7071068, 0.7071068, -0.7071068, 0.7071068]))
    assert not adv.requires_grad


@pytest.mark.parametrize(
    "rewards, group_size, kwargs, name",
    [
        (torch.tensor([0.0, float("nan"), 1.0, 1.0]), 2, {}, "rewards"),
        (torch.tensor([0.0, float("inf"), 1.0, 1.0]), 2, {}, "rewards"),
        (torch.tensor([0.0, 1.0, 1.0]), 2, {}, "group_size"),  # does not divide S
        (torch.tensor([0.0, 1.0, 1.0]), 1, {}, "group_size"),  # < 2 with scale_rewards="group"
        (torch.tensor([0.0, 1.0]), 0, {}, "group_size"),
        (torch.tensor([0.0, 1.0]), 2.0, {}, "group_size"),
        (torch.tensor([0, 1]), 2, {}, "rewards"),  # integer
        (torch.zeros(2, 2), 2, {}, "rewards"),  # not 1-D
        (torch.tensor([0.0, 1.0]), 2, {"scale_rewards": "std"}, "scale_rewards"),
        (torch.tensor([0.0, 1.0]), 2, {"eps": -1.0}, "eps"),
    ],
)
def test_advantages_bad_input(backend, rewards, group_size, kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        g.ops.group_advantages(rewards, group_size, **kwargs)
