"""Prefix-shared training forward (each group's prompt once in the packed row).

The row layout and its attention metadata against values written out by hand; the loss, its
gradients and the old/reference log-probs against a float64 computation that runs every
sequence (prompt + completion) on its own through HF's eager attention, with the loss formula
written out here; the trainer with sharing on and off; where the option is refused."""
from __future__ import annotations

import copy
import math
import types
import warnings

import pytest
import torch
from attention_standins import VARLEN_SIGNATURES, make_flash_attn
from helpers import tiny_model_and_tokenizer

from g2rpo_fast.ops import fused_linear_logps
from g2rpo_fast.packing import packed_attention
from g2rpo_fast.packing.layout import pack_groups, pack_samples, prefix_shared_attention_kwargs
from g2rpo_fast.packing.policy_forward import PolicyHidden, lm_head_params, make_loss_fn, packed_hidden
from g2rpo_fast.packing.prefix_shared_attention import resolve_prefix_sharing
from g2rpo_fast.rollout.backends import BACKENDS
from g2rpo_fast.rollout.backends import flash_attn as flash_mod
from g2rpo_fast.rollout.backends import torch_varlen as varlen_mod
from g2rpo_fast.rollout.composition import Sample
from g2rpo_fast.trainer.config import G2RPOConfig

GROUP = 4


def _samples(seed=0):
    """Two groups of 4 with prompts of 9 and 4 tokens; guided samples first (3 and 2 guidance
    tokens), a one-token and a guidance-only completion, one truncated sample."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(4, 40, (n,), generator=g).tolist()
    p0, p1, sol = rand(9), rand(4), rand(6)
    return [Sample(0, p0, sol[:3], rand(5)), Sample(0, p0, [], rand(7), truncated=True), Sample(0, p0, [], rand(1)),
            Sample(0, p0, [], rand(4)),
            Sample(1, p1, sol[:2], rand(3)), Sample(1, p1, sol[:2], []), Sample(1, p1, [], rand(6)),
            Sample(1, p1, [], rand(2))]


# ------------------------------------------------------------------------------ layout

def test_group_layout_matches_per_sample_packing():
    samples = _samples()
    shared, plain = pack_groups(samples, "cpu", mask_truncated=True), pack_samples(samples, "cpu", mask_truncated=True)
    for name in ("token_ids", "guidance_mask", "completion_mask", "cu_seqlens"):
        assert torch.equal(getattr(shared, name), getattr(plain, name)), name
    lens = [len(s.completion_ids) for s in samples]
    assert shared.input_ids.shape[1] == 9 + 4 + sum(n - 1 for n in lens)  # each prompt once
    row, pos = shared.input_ids[0].tolist(), shared.position_ids[0].tolist()
    first = 9 + sum(n - 1 for n in lens[:4])  # where group 1's prompt starts
    assert row[:9] == samples[0].prompt_ids and row[first:first + 4] == samples[4].prompt_ids
    # completion 0 of group 0: positions 9.. after the prompt; completion 1 restarts at 9
    assert pos[:9] == list(range(9)) and pos[9:9 + 7] == list(range(9, 16)) and pos[16:16 + 6] == list(range(9, 15))
    # each completion token is predicted by the prompt's last state, then by its own tokens
    gather = shared.gather_index.tolist()
    assert gather[:8] == [8, 9, 10, 11, 12, 13, 14, 15]
    assert gather[lens[0]:lens[0] + 2] == [8, 16]
    assert [row[i] for i in gather[1:8]] == samples[0].completion_ids[:7]
    assert shared.shared_prefix == ((0, 9, (7, 6, 0, 3)), (first, 4, (4, 1, 5, 1)))


def test_row_split_between_groups():
    samples = _samples()
    batch = pack_groups(samples, "cpu", max_row_tokens=20)  # group 0 alone is 9 + 16 = 25 tokens
    assert batch.row_splits == (25,)


def test_prefix_shared_attention_kwargs_by_hand():
    """Queries: the prompt, then each completion; keys: the prompt in front of each completion."""
    layout = ((0, 3, (2, 0, 1)), (6, 2, (1,)))
    kw = prefix_shared_attention_kwargs(layout, 0, 9, "cpu")
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 8, 9]
    assert kw["cu_seq_lens_k"].tolist() == [0, 3, 8, 12, 14, 17]
    assert kw["max_length_q"] == 3 and kw["max_length_k"] == 5
    assert kw["prefix_shared_key_index"].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 5, 6, 7, 6, 7, 8]
    second = prefix_shared_attention_kwargs(layout, 6, 9, "cpu")  # a row cut before group 1: offsets from the cut
    assert second["cu_seq_lens_k"].tolist() == [0, 2, 5]
    assert second["prefix_shared_key_index"].tolist() == [0, 1, 0, 1, 2]


# ------------------------------------------------------------------ float64 per sequence

def _model(seed, backend=None):
    model, _ = tiny_model_and_tokenizer(seed=seed)
    if backend is not None:
        assert packed_attention.install(model, backend)
    return model


def _perturbed(model, seed=7, scale=0.05):
    """The policy after an update (num_iterations = 2: the old log-probs are the model's before it)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def _float64(seed, perturb=False):
    model = _model(seed)
    model.config._attn_implementation = "eager"
    model = model.double()
    return _perturbed(model) if perturb else model


def _sequence_logps(model, samples, temperature):
    """Per-token log-probs of each completion, one sequence at a time: [N]."""
    out = []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(input_ids=ids, use_cache=False).logits[0, len(s.prompt_ids) - 1:-1]
        logp = torch.log_softmax(logits / temperature, dim=-1)
        out.append(logp.gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0])
    return torch.cat(out)


def _reference_loss(logps, old, ref, advantages, samples, cfg, max_len):
    """DESIGN.md sections 4-6 written out per token (delta None, token-level ratios)."""
    lens = [len(s.completion_ids) for s in samples]
    adv = torch.repeat_interleave(advantages, torch.tensor(lens))
    w = torch.cat([torch.tensor([0.0 if s.truncated else 1.0] * len(s.completion_ids)) for s in samples])
    w = (w * (1 - torch.tensor(sum((s.guidance_mask for s in samples), [])))).double()
    ratio = torch.exp(logps - old)
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * adv)
    loss = loss + cfg.beta * (torch.exp(ref - logps) - (ref - logps) - 1)
    wl = w * loss
    if cfg.loss_type == "grpo":
        per_seq = [x.sum() / max(float(y.sum()), 1.0) for x, y in zip(wl.split(lens), w.split(lens))]
        return sum(per_seq) / len(samples)
    if cfg.loss_type in ("bnpo", "dapo"):  # dapo with num_items_in_batch = this micro-batch's Σw
        return wl.sum() / w.sum()
    return wl.sum() / (len(samples) * max_len)  # dr_grpo


def _config(loss_type, **kw):
    return G2RPOConfig(loss_type=loss_type, beta=0.04, num_iterations=2, epsilon=0.05, num_generations=GROUP,
                       per_device_train_batch_size=2 * GROUP, max_completion_length=8, guidance_initial_length=4,
                       guidance_max_length=8, mask_truncated_completions=True, temperature=0.9, **kw)


def _trainer_side_loss(samples, cfg, backend, pack, dtype=torch.float32):
    """What the trainer computes: old/ref log-probs and the loss through the packed forward
    (`pack` = pack_groups or pack_samples), backward; returns (loss, metrics, grads, old, ref)."""
    autocast = None if dtype == torch.float32 else dtype
    policy, old_model, ref_model = _perturbed(_model(0, backend)), _model(0, backend), _model(1, backend)
    batch = pack(samples, "cpu", mask_truncated=True)

    def logps_of(model):
        hidden = packed_hidden(PolicyHidden(model), batch, autocast)
        weight, _ = lm_head_params(model)  # the tiny Qwen3 has no lm_head bias
        return fused_linear_logps(hidden.to(dtype), weight.to(dtype), batch.token_ids, temperature=cfg.temperature)

    with torch.no_grad():
        old, ref = logps_of(old_model), logps_of(ref_model)
    advantages = torch.linspace(-1.5, 1.2, len(samples))
    hidden = packed_hidden(PolicyHidden(policy), batch, autocast)
    weight, bias = lm_head_params(policy)
    kwargs = dict(token_ids=batch.token_ids, advantages=advantages, completion_mask=batch.completion_mask,
                  guidance_mask=batch.guidance_mask, cu_seqlens=batch.cu_seqlens, old_logps=old, ref_logps=ref)
    if cfg.loss_type == "dapo":
        kwargs["num_items_in_batch"] = float((batch.completion_mask * (1 - batch.guidance_mask.float())).sum())
    loss, metrics = make_loss_fn(cfg)(hidden.to(dtype), weight.to(dtype), bias, **kwargs)
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters()}
    return loss, metrics, grads, old, ref, advantages


def _float64_side(samples, cfg, advantages):
    policy, old_model, ref_model = _float64(0, perturb=True), _float64(0), _float64(1)
    with torch.no_grad():
        old = _sequence_logps(old_model, samples, cfg.temperature)
        ref = _sequence_logps(ref_model, samples, cfg.temperature)
    logps = _sequence_logps(policy, samples, cfg.temperature)
    max_len = cfg.max_completion_length + cfg.guidance_max_length  # the trainer's dr_grpo normaliser
    loss = _reference_loss(logps, old, ref, advantages.double(), samples, cfg, max_len)
    loss.backward()
    return loss, {n: p.grad for n, p in policy.named_parameters()}, old, ref


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("pack", [pack_groups, pack_samples], ids=["shared", "per-sample"])
def test_loss_and_gradients_equal_float64_per_sequence(loss_type, pack):
    """Guidance, beta > 0, old log-probs of the pre-update policy (num_iterations = 2), two
    prompt lengths in the micro-batch: the prefix-shared forward and today's per-sample packed
    forward both give the float64 per-sequence loss, old/ref log-probs and every gradient."""
    cfg, samples = _config(loss_type), _samples()
    loss, metrics, grads, old, ref, adv = _trainer_side_loss(samples, cfg, BACKENDS["cpu"](), pack)
    loss64, grads64, old64, ref64 = _float64_side(samples, cfg, adv)
    torch.testing.assert_close(old.double(), old64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref.double(), ref64, rtol=1e-5, atol=1e-5)
    assert float(metrics["clip_ratio"]) > 0  # the update moved some ratios past 1 ± epsilon
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=1e-6)
    assert grads.keys() == grads64.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g.double(), grads64[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("backend", ["sdpa", "flash_attn", "torch_varlen-2.10", "torch_varlen-2.11",
                                     "torch_varlen-2.12"])
def test_bf16_backends_match_float64(backend, monkeypatch):
    """bf16 autocast through each backend's `varlen` (the CUDA ones with the CPU stand-ins of
    tests/attention_standins.py: their call with fewer queries than keys, bottom-right causal):
    loss and gradients within bf16 tolerance of float64."""
    name, _, version = backend.partition("-")
    monkeypatch.setattr(flash_mod, "load_flash_attn", make_flash_attn)
    if version:
        monkeypatch.setattr(varlen_mod, "load_varlen_attn", lambda: VARLEN_SIGNATURES[version])
    cfg, samples = _config("dapo"), _samples()
    loss, _, grads, *_, adv = _trainer_side_loss(samples, cfg, BACKENDS[name](), pack_groups, torch.bfloat16)
    loss64, grads64, *_ = _float64_side(samples, cfg, adv)
    torch.testing.assert_close(loss.double(), loss64, rtol=3e-2, atol=3e-3)
    flat = torch.cat([grads[n].double().flatten() for n in grads64])
    flat64 = torch.cat([g.flatten() for g in grads64.values()])
    assert float((flat - flat64).norm() / flat64.norm()) < 3e-2


def test_prompt_gradient_sums_every_completion_of_its_group():
    """The gradient at the shared prompt's embeddings is the sum of the gradients at the G
    prompt copies of the per-sequence float64 computation (a loss over every completion token)."""
    samples = _samples()
    model = _model(0, BACKENDS["cpu"]())
    batch = pack_groups(samples, "cpu")
    seen = {}

    def keep(module, args, out):
        out.retain_grad()
        seen["embeds"] = out

    model.get_input_embeddings().register_forward_hook(keep)
    hidden = packed_hidden(PolicyHidden(model), batch)
    weights = torch.linspace(0.5, 2.0, batch.num_tokens)
    weight, bias = lm_head_params(model)
    (fused_linear_logps(hidden, weight, batch.token_ids, bias=bias) * weights).sum().backward()
    shared = seen["embeds"].grad[0]

    model64 = _float64(0)
    per_seq, start = [], 0

    def keep_each(module, args, out):
        out.retain_grad()
        per_seq.append(out)

    handle = model64.get_input_embeddings().register_forward_hook(keep_each)
    for s in samples:
        n = len(s.completion_ids)
        _ = (_sequence_logps(model64, [s], 1.0) * weights[start:start + n].double()).sum().backward()
        start += n
    handle.remove()
    for members, (offset, prompt_len, _) in zip((range(0, 4), range(4, 8)), batch.shared_prefix):
        expected = torch.stack([per_seq[i].grad[0, :prompt_len] for i in members]).sum(0)
        assert expected.abs().max() > 0
        torch.testing.assert_close(shared[offset:offset + prompt_len].double(), expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------- the trainer

def test_trainer_shared_equals_per_sample(tmp_path):
    """Two optimizer steps from one generated batch (num_iterations = 2, beta > 0, guidance):
    the same metrics and weights with prefix_shared_forward true and false; `auto` turns it on
    for the tiny Qwen3, and the micro-batch's row then holds each prompt once."""
    from helpers import make_config, make_trainer, strip_timing

    runs = {}
    for setting in ("auto", "false"):
        cfg = make_config(tmp_path, name=setting, max_steps=2, num_iterations=2, beta=0.04, loss_type="grpo",
                          prefix_shared_forward=setting)
        trainer = make_trainer(cfg)
        assert trainer.prefix_shared == (setting == "auto")
        packs = []
        pack_fn = trainer.generate_rollouts

        def spy(*a, _fn=pack_fn, _out=packs, **k):
            batches = _fn(*a, **k)
            _out.extend(mb.packed for mb in batches)
            return batches

        trainer.generate_rollouts = spy
        history = trainer.train()
        runs[setting] = (strip_timing(history), trainer.model.state_dict(), packs)
    (shared, w_shared, b_shared), (plain, w_plain, b_plain) = runs["auto"], runs["false"]
    assert b_shared[0].shared_prefix is not None and b_plain[0].shared_prefix is None
    assert b_shared[0].input_ids.shape[1] < b_plain[0].input_ids.shape[1]
    assert len(shared) == len(plain) == 2
    for a, b in zip(shared, plain):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], float) and math.isfinite(a[k]):
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
            else:
                assert a[k] == b[k], k
    # AdamW divides each gradient by its own running scale, so a near-zero gradient entry's
    # rounding can flip its step: compare the whole update, not element by element
    initial = tiny_model_and_tokenizer(seed=0)[0].state_dict()
    update = torch.cat([(w_plain[k] - initial[k]).flatten() for k in w_plain])
    gap = torch.cat([(w_shared[k] - w_plain[k]).flatten() for k in w_plain])
    assert update.norm() > 0 and gap.norm() < 1e-3 * update.norm()


# --------------------------------------------------------------------------- fallbacks

def _fake(model_type, **config):
    return types.SimpleNamespace(config=types.SimpleNamespace(model_type=model_type, **config))


def test_auto_falls_back_with_one_notice():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_prefix_sharing("auto", _fake("gpt2"), varlen_installed=True) is False
        assert resolve_prefix_sharing("auto", _fake("qwen2", use_sliding_window=True, sliding_window=64),
                                      varlen_installed=False) is False
        assert resolve_prefix_sharing("auto", _fake("qwen3"), varlen_installed=True) is True
        assert resolve_prefix_sharing("false", _fake("qwen3"), varlen_installed=True) is False
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "'gpt2' is not one of llama, qwen2, qwen3" in messages[0]
    assert "sliding-window" in messages[1]


def test_true_where_unsupported_is_refused():
    with pytest.raises(ValueError, match=r"`prefix_shared_forward`=true: .*sliding-window"):
        resolve_prefix_sharing("true", _fake("qwen3", layer_types=["full_attention", "sliding_attention"]), False)
    with pytest.raises(ValueError, match="`prefix_shared_forward`=true: model type 'mistral'"):
        resolve_prefix_sharing("true", _fake("mistral"), True)


def test_config_values():
    assert G2RPOConfig().prefix_shared_forward == "auto"
    assert G2RPOConfig(prefix_shared_forward=True).prefix_shared_forward == "true"  # YAML's booleans
    assert G2RPOConfig(prefix_shared_forward=False).prefix_shared_forward == "false"
    with pytest.raises(ValueError, match="`prefix_shared_forward` must be one of"):
        G2RPOConfig(prefix_shared_forward="yes")


def test_old_logps_of_a_deep_copy_use_the_shared_layout():
    """The reference model is a deep copy of the installed policy (trainer): it keeps the varlen
    attention and its backend, so the shared layout works for it too."""
    model = _model(0, BACKENDS["cpu"]())
    copy_ = copy.deepcopy(model).eval()
    batch, plain = pack_groups(_samples(), "cpu"), pack_samples(_samples(), "cpu")
    with torch.no_grad():
        a = fused_linear_logps(packed_hidden(PolicyHidden(copy_), batch), lm_head_params(copy_)[0], batch.token_ids)
        b = fused_linear_logps(packed_hidden(PolicyHidden(model), plain), lm_head_params(model)[0], plain.token_ids)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
