"""AdaptiveGuidance follows DESIGN.md section 7 exactly; baselines share its interface."""
import pytest

from g2rpo_fast.guidance import (
    AdaptiveGuidance,
    FixedGuidance,
    LinearGuidance,
    NoGuidance,
    SparseAdaptiveGuidance,
    make_guidance_schedule,
)


def spec_lengths(l0, rewards, lo, hi, window, every):
    """The rule written out independently: one step at a time, from the text of the design."""
    length, out = l0, []
    for k, r in enumerate(rewards, start=1):
        prev = rewards[max(0, k - 1 - window):k - 1]
        if k % every == 0 and prev:
            p = sum(prev) / len(prev)
            if r > 0 and p > 0:
                length = min(max(int(length * p / r), lo), hi)
        out.append(length)
    return out


def test_reward_falls_more_guidance_rises_less():
    g = AdaptiveGuidance(initial_length=10, max_length=40, min_length=1, window=2)
    assert g.update(0.5) == 10  # k=1: no previous reward
    assert g.update(0.25) == 20  # p=0.5, r=0.25 -> 10*2
    assert g.update(0.75) == int(20 * 0.375 / 0.75)  # p = mean(0.5, 0.25)


@pytest.mark.parametrize("window,every", [(1, 1), (2, 1), (2, 3), (4, 2)])
def test_matches_written_rule(window, every):
    rewards = [0.1, 0.3, 0.0, 0.2, 0.6, 0.5, 0.05, 0.9, 0.4, 0.0, 0.0, 0.7]
    g = AdaptiveGuidance(16, 64, min_length=2, window=window, update_every=every)
    got = [g.update(r) for r in rewards]
    assert got == spec_lengths(16, rewards, 2, 64, window, every)


def test_zero_reward_keeps_length_and_clamps():
    g = AdaptiveGuidance(8, 10, min_length=3)
    g.update(0.0)
    assert g.update(0.0) == 8  # r_k = 0: unchanged
    assert g.update(0.01) == 8  # p = 0: unchanged
    g2 = AdaptiveGuidance(8, 10, min_length=3)
    g2.update(1.0)
    assert g2.update(0.1) == 10  # 8 * 10 clamped to max
    g2.update(1.0)
    assert g2.update(100.0) == 3  # clamped to min


def test_state_dict_round_trip_continues_identically():
    rewards = [0.2, 0.4, 0.1, 0.3, 0.5, 0.2]
    a = AdaptiveGuidance(12, 50, window=2, update_every=2)
    for r in rewards[:3]:
        a.update(r)
    b = AdaptiveGuidance(1, 50, window=2, update_every=2)
    b.load_state_dict(a.state_dict())
    assert [a.update(r) for r in rewards[3:]] == [b.update(r) for r in rewards[3:]]


def test_baselines():
    assert [FixedGuidance(7).update(r) for r in (0.1, 0.9)] == [7, 7]
    assert NoGuidance().update(0.5) == 0
    lin = LinearGuidance(20, 0, total_steps=4)
    assert [lin.update(0.5) for _ in range(5)] == [15, 10, 5, 0, 0]
    assert make_guidance_schedule("adaptive", initial_length=4, max_length=8).length == 4


@pytest.mark.parametrize("kwargs,name", [
    (dict(initial_length=5, max_length=4), "initial_length"),
    (dict(initial_length=5, max_length=10, min_length=11), "min_length"),
    (dict(initial_length=5, max_length=10, window=0), "window"),
    (dict(initial_length=5, max_length=10, update_every=0), "update_every"),
])
def test_bad_arguments_name_the_field(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaptiveGuidance(**kwargs)


def test_bad_reward_and_kind():
    g = AdaptiveGuidance(4, 8)
    with pytest.raises(ValueError, match="step_reward"):
        g.update(float("nan"))
    with pytest.raises(ValueError, match="guidance_schedule"):
        make_guidance_schedule("sometimes", initial_length=1, max_length=2)


@pytest.mark.parametrize("make,name", [
    (lambda: AdaptiveGuidance(4, 8, min_length=-1), "min_length"),
    (lambda: AdaptiveGuidance(4, -1), "max_length"),
    (lambda: AdaptiveGuidance(-1, 8, min_length=0), "initial_length"),
    (lambda: AdaptiveGuidance(2.5, 8), "initial_length"),  # not an int
    (lambda: AdaptiveGuidance(True, 8), "initial_length"),  # a bool is no length
    (lambda: AdaptiveGuidance(4, 8, window=1.5), "window"),
    (lambda: AdaptiveGuidance(4, 8, update_every=0), "update_every"),
    (lambda: FixedGuidance(-1), "initial_length"),
    (lambda: LinearGuidance(-1, 0, 3), "initial_length"),
    (lambda: LinearGuidance(4, -1, 3), "final_length"),
    (lambda: LinearGuidance(4, 0, 0), "total_steps"),
])
def test_every_bad_argument_is_named_exactly(make, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        make()


def test_boundary_values_are_accepted():
    assert AdaptiveGuidance(0, 0, min_length=0).update(0.5) == 0  # all bounds may be 0
    g = AdaptiveGuidance(5, 5, min_length=5)  # min == initial == max
    g.update(1.0)
    assert g.update(0.1) == 5
    assert FixedGuidance(0).length == 0
    lin = LinearGuidance(6, 0, total_steps=1)
    assert lin.length == 6 and lin.update(0.3) == 0
    assert LinearGuidance(0, 4, total_steps=2).update(0.3) == 2  # a rising schedule from 0


def test_defaults_are_designs():
    """DESIGN.md: AdaptiveGuidance(initial_length, max_length, min_length=1, window=2, update_every=1);
    `make_guidance_schedule` has the same defaults."""
    rewards = [0.4, 0.2, 0.1, 0.8, 0.3]
    want = spec_lengths(6, rewards, 1, 40, window=2, every=1)
    g, h = AdaptiveGuidance(6, 40), make_guidance_schedule("adaptive", initial_length=6, max_length=40)
    assert [g.update(r) for r in rewards] == want == [h.update(r) for r in rewards]
    low = AdaptiveGuidance(2, 40)
    low.update(0.1)
    assert low.update(100.0) == 1  # clamped to the default min_length=1
    low2 = make_guidance_schedule("adaptive", initial_length=2, max_length=40)
    low2.update(0.1)
    assert low2.update(100.0) == 1
    lin = make_guidance_schedule("linear", initial_length=8, max_length=8)  # final 0 after 1 step
    assert lin.length == 8 and lin.update(0.5) == 0


def test_linear_through_the_factory():
    lin = make_guidance_schedule("linear", initial_length=8, max_length=8, final_length=2, total_steps=3)
    assert [lin.update(0.5) for _ in range(4)] == [6, 4, 2, 2]


# ---------------------------------------------------------------- adaptive_sparse: the variant
def sparse_spec_lengths(l0, rewards, lo, hi, window, every, c):
    """The variant written out from its description (README, "The adaptive rule under sparse
    rewards"), in exact fractions: a zero-reward step is a fall by the largest factor c, a rise
    from a zero window mean is a cut by 1/c, any other factor p / r_k is clamped to [1/c, c],
    and the new length is the nearest integer (halves up)."""
    from fractions import Fraction

    length, out, c = l0, [], Fraction(c)
    for k, r in enumerate(rewards, start=1):
        prev = rewards[max(0, k - 1 - window):k - 1]
        if k % every == 0 and prev:
            p = Fraction(sum(Fraction(x) for x in prev)) / len(prev)
            r = Fraction(r)
            factor = c if r == 0 else (1 / c if p == 0 else min(max(p / r, 1 / c), c))
            x = length * factor
            nearest = int(x) + (1 if x - int(x) >= Fraction(1, 2) else 0)
            length = min(max(nearest, lo), hi)
        out.append(length)
    return out


@pytest.mark.parametrize("window,every,c", [(1, 1, 2.0), (2, 1, 2.0), (2, 3, 1.5), (4, 2, 3.0)])
def test_sparse_variant_matches_its_written_rule(window, every, c):
    rewards = [0.0, 0.0, 0.125, 0.0, 0.0, 0.0, 0.25, 0.5, 0.0, 0.375, 0.125, 0.0, 0.75, 0.625, 0.0, 0.0]
    g = SparseAdaptiveGuidance(12, 36, min_length=2, window=window, update_every=every, max_factor=c)
    assert [g.update(r) for r in rewards] == sparse_spec_lengths(12, rewards, 2, 36, window, every, c)


def test_sparse_variant_where_it_differs_from_the_paper():
    rewards = [0.25, 0.0, 0.0, 0.0625, 0.25]
    paper = AdaptiveGuidance(10, 36, min_length=1)
    sparse = SparseAdaptiveGuidance(10, 36, min_length=1, max_factor=2.0)
    # the paper: zero rewards leave ℓ, a lucky step after zeros cuts by p / r (here to 0 -> min);
    # the variant: each zero-reward step doubles ℓ (to the max), the lucky step halves it at most
    assert [paper.update(r) for r in rewards] == [10, 10, 10, 10, 1]
    assert [sparse.update(r) for r in rewards] == [10, 20, 36, 18, 9]
    up = SparseAdaptiveGuidance(10, 36, max_factor=2.0)
    up.update(0.3)
    assert up.update(0.4) == 8  # 10 * 0.75 = 7.5 rounds to 8 (the paper's int() gives 7)
    assert up.update(0.4) == 7  # p = 0.35: 8 * 0.875 = 7.0


def test_sparse_variant_state_and_arguments():
    rewards = [0.0, 0.2, 0.0, 0.4, 0.1, 0.0]
    a = SparseAdaptiveGuidance(6, 30, max_factor=1.5)
    for r in rewards[:3]:
        a.update(r)
    b = SparseAdaptiveGuidance(1, 30, max_factor=1.5)
    b.load_state_dict(a.state_dict())
    assert [a.update(r) for r in rewards[3:]] == [b.update(r) for r in rewards[3:]]
    for bad in (1.0, 0.5, float("inf"), True, "2"):
        with pytest.raises(ValueError, match="`max_factor`"):
            SparseAdaptiveGuidance(4, 8, max_factor=bad)
    with pytest.raises(ValueError, match="`initial_length`"):
        SparseAdaptiveGuidance(9, 8)
    made = make_guidance_schedule("adaptive_sparse", initial_length=4, max_length=8, max_factor=3.0)
    assert isinstance(made, SparseAdaptiveGuidance) and made.max_factor == 3.0
    made.update(0.5)
    assert made.update(0.0) == 8  # 4 * 3 clamped to max_length
