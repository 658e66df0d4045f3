"""Guided group composition: which samples are guided, never padded, mask alignment."""
from types import SimpleNamespace

import pytest

from g2rpo_fast.rollout.composition import (
    assemble_samples,
    build_generation_inputs,
    guidance_prefix,
)
from g2rpo_fast.trainer.config import G2RPOConfig


def n_guided(ratio, group_size, schedule="adaptive"):
    return G2RPOConfig(guidance_ratio=ratio, num_generations=group_size, per_device_train_batch_size=group_size,
                       guidance_schedule=schedule).n_guided


def _outs(samples, gen, reason="stop"):
    return [SimpleNamespace(token_ids=list(gen), finish_reason=reason) for _ in samples]


def test_first_n_guided_of_each_group():
    prompts = [[1, 2], [3, 4, 5]]
    sols = [[10, 11, 12, 13], [20, 21, 22, 23]]
    samples = build_generation_inputs(prompts, sols, group_size=4, n_guided=2, guidance_length=3)
    assert len(samples) == 8
    assert [s.guided for s in samples] == [True, True, False, False] * 2
    assert [s.prompt_index for s in samples] == [0] * 4 + [1] * 4
    assert samples[0].generation_input == [1, 2, 10, 11, 12]
    assert samples[4].generation_input == [3, 4, 5, 20, 21, 22]
    assert samples[2].generation_input == [1, 2]


def test_solution_shorter_than_length_is_not_padded():
    samples = build_generation_inputs([[1]], [[7, 8]], group_size=2, n_guided=1, guidance_length=10)
    assert samples[0].guidance_ids == [7, 8]
    assert samples[0].generation_input == [1, 7, 8]
    assert guidance_prefix([7, 8], 10) == [7, 8]


@pytest.mark.parametrize("n_guided,length", [(0, 5), (2, 0)])
def test_no_guidance_when_ratio_or_length_zero(n_guided, length):
    samples = build_generation_inputs([[1, 2]], [[9, 9, 9]], group_size=2, n_guided=n_guided, guidance_length=length)
    assert not any(s.guided for s in samples)
    assert all(s.generation_input == [1, 2] for s in samples)


def test_all_guided_with_ratio_one():
    assert n_guided(1.0, 4) == 4
    samples = build_generation_inputs([[1]], [[5, 6]], group_size=4, n_guided=4, guidance_length=1)
    assert all(s.guidance_ids == [5] for s in samples)


def test_n_guided_rounds_and_checks():
    """The config's `n_guided` (the only definition): round(ratio · G), halves to even; none
    without a guidance schedule."""
    assert n_guided(0.0, 8) == 0
    assert n_guided(0.25, 8) == 2
    assert n_guided(0.5, 3) == 2
    assert n_guided(0.25, 2) == 0  # round(0.5) == 0
    assert n_guided(0.5, 8, schedule="none") == 0
    with pytest.raises(ValueError, match="guidance_ratio"):
        n_guided(1.5, 8)


def test_mask_alignment_and_text():
    samples = build_generation_inputs([[1]], [[5, 6, 7]], group_size=2, n_guided=1, guidance_length=2)
    decode = lambda ids: ",".join(map(str, ids))
    assemble_samples(samples, _outs(samples, [30, 31, 99]), decode, stop_token_ids=[99])
    g, u = samples
    assert g.completion_ids == [5, 6, 30, 31, 99]
    assert g.guidance_mask == [1, 1, 0, 0, 0]
    assert len(g.guidance_mask) == len(g.completion_ids)
    assert g.text == "5,6,30,31"  # guidance + generated, stop token dropped
    assert u.completion_ids == [30, 31, 99] and u.guidance_mask == [0, 0, 0]
    assert not g.truncated


def test_truncated_flag_and_output_count():
    samples = build_generation_inputs([[1]], None, group_size=2, n_guided=0, guidance_length=0)
    assemble_samples(samples, _outs(samples, [3, 4], reason="length"), str)
    assert all(s.truncated for s in samples)
    with pytest.raises(ValueError):
        assemble_samples(samples, _outs(samples[:1], [3]), str)


def test_guided_needs_solutions():
    with pytest.raises(ValueError, match="solution"):
        build_generation_inputs([[1]], None, group_size=2, n_guided=1, guidance_length=3)
