"""seed_stats: Student's t against closed forms and published table values, the paired tests
and Holm's adjustment against hand-worked examples."""
import math

import pytest

from g2rpo_fast.seed_stats import holm, mean_ci, paired_comparison, sign_flip_p, t_quantile, t_two_sided_p

# Two-sided 95 % critical values t_{0.975, df}, as printed in every t table (3 decimals).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 10: 2.228, 15: 2.131,
        30: 2.042}


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 10.0, -4.0])
def test_t_tail_in_closed_form_for_one_and_two_degrees(t):
    # df = 1 is the Cauchy distribution; df = 2 has P(|T| < t) = t / sqrt(2 + t^2)
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-12)


@pytest.mark.parametrize("df,crit", sorted(T975.items()))
def test_t_quantile_and_tail_match_the_table(df, crit):
    assert t_quantile(0.975, df) == pytest.approx(crit, abs=6e-4)
    assert t_two_sided_p(crit, df) == pytest.approx(0.05, abs=2e-4)


def test_t_for_many_degrees_tends_to_the_normal():
    assert t_quantile(0.975, 2000) == pytest.approx(1.95996, abs=2e-3)
    assert t_quantile(0.95, 7) == pytest.approx(1.895, abs=6e-4)  # one-sided 95 %, df 7 (table)


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, None])
    sd = math.sqrt(((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 3)
    assert mean == 2.5 and half == pytest.approx(3.182 * sd / 2, rel=2e-4)
    assert mean_ci([0.3])[0] == 0.3 and math.isnan(mean_ci([0.3])[1])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_sign_flip_exact_by_hand():
    # d = (1, 2, 3): the 8 sign patterns have |mean| 2, 0, 2/3, 4/3 twice each: 2 of 8 reach 2
    assert sign_flip_p([1.0, 2.0, 3.0]) == 0.25
    assert sign_flip_p([1.0] * 8) == 2 / 256  # the smallest p with 8 seeds
    assert sign_flip_p([0.0, 0.0]) == 1.0
    with pytest.raises(ValueError, match="differences"):
        sign_flip_p([])


def test_paired_comparison_by_hand():
    a, b = [0.5, 0.6, 0.55, 0.7], [0.4, 0.6, 0.5, 0.6]
    out = paired_comparison(a, b)
    d = [0.1, 0.0, 0.05, 0.1]
    mean = sum(d) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 3)
    t = mean / (sd / 2)
    assert out["diff"] == pytest.approx(0.0625) and out["n"] == 4
    assert out["ci"] == pytest.approx(3.182 * sd / 2, rel=2e-4)
    assert 0.05 < out["p_t"] < 0.10 and out["p_t"] == pytest.approx(t_two_sided_p(t, 3))
    assert t_two_sided_p(t, 3) == pytest.approx(0.0796, abs=5e-4)  # t = 2.611, df 3
    # sign flip over 16 patterns: |mean| >= 0.0625 only for all-plus / all-minus and the two that
    # flip only the zero: 4 of 16
    assert out["p_sign_flip"] == 4 / 16
    same = paired_comparison([0.2, 0.3], [0.2, 0.3])
    assert same["diff"] == 0 and same["p_t"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        paired_comparison([0.1, 0.2], [0.1])


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_paired_comparison_refuses_missing_values():
    """A run without the metric (None, read as NaN) must not become a p-value: NaN p-values
    were read as "p < 0.05" by the demo's verdict."""
    for bad in ([0.1, None, 0.3], [0.1, float("nan"), 0.3]):
        with pytest.raises(ValueError, match="`a`"):
            paired_comparison(bad, [0.1, 0.2, 0.3])


def test_demo_compares_only_metrics_every_run_has():
    """`demo --eval-num-samples 0`: no sampled accuracy; greedy is still compared, sampled is
    left out rather than declared significant."""
    from g2rpo_fast.demo import summarise

    other = ("completions_generated", "mean_frac_reward_zero_std", "steps_skipped", "train_accuracy_first",
             "train_accuracy_last", "final_guidance_length", "final_advantage_std")

    def run(seed, greedy):
        return {"seed": seed, "eval_accuracy": greedy, "eval_sampled_accuracy": None, **{k: 1.0 for k in other}}

    results = {"none": [run(s, 0.5 + 0.01 * s) for s in range(4)],
               "adaptive": [run(s, 0.52 + 0.011 * s) for s in range(4)]}
    row = summarise(results, {})["adaptive"]
    assert row["vs_grpo_eval_accuracy"]["diff"] == pytest.approx(0.02 + 0.0015)
    assert "vs_grpo_eval_sampled_accuracy" not in row
