"""`g2rpo_fast.integrations.trl` against TRL 1.16's own GRPOTrainer, on the CPU with TRL's
transformers generation: parity with guidance off (TRL's loss and ours), guided completions and
their mask against a float64 gradient written here, the adaptive rule on planted rewards, the
schedule through checkpoints, vLLM server mode's request layout through a stand-in for TRL's
`VLLMGeneration`, and bad input. Two processes under `accelerate launch`:
`test_integrations_trl_accelerate.py`."""
from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
from helpers import child_env, digit_fraction_reward
from trl_helpers import guided_config, load_policy, save_tiny_policy, solution_dataset, trl_config

pytest.importorskip("trl", reason="trl is the optional extra these tests cover (pip install 'g2rpo_fast[trl]')")
from trl import GRPOTrainer

from g2rpo_fast.integrations.trl import GuidedGRPOConfig, GuidedGRPOTrainer


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("trl_policy"))


def make_guided(policy, out, reward_funcs=(digit_fraction_reward,), dataset=None, trainer_kw=None, **kw):
    model, tok = load_policy(policy)
    return GuidedGRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=guided_config(out, **kw),
                             train_dataset=dataset if dataset is not None else solution_dataset(),
                             processing_class=tok, **(trainer_kw or {}))


def run(trainer):
    trainer.train()
    rows = [h for h in trainer.state.log_history if "loss" in h]
    return rows, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


# ------------------------------------------------------------------ optional dependency
def test_the_module_imports_without_trl():
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('trl', 'accelerate'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "import g2rpo_fast.integrations.trl as integration\n"
        "from g2rpo_fast.integrations.trl import guided_samples\n"
        "try:\n"
        "    integration.GuidedGRPOTrainer\n"
        "except ImportError as exc:\n"
        "    print('refused:', exc)\n"
        "assert 'trl' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused:" in proc.stdout and "pip install 'g2rpo_fast[trl]'" in proc.stdout


# ------------------------------------------------------------------ the config
def test_the_guidance_fields_are_g2rpoconfigs():
    """Same names and defaults as G2RPOConfig's (guidance_reward: see GuidedGRPOConfig's docstring)."""
    import dataclasses

    from g2rpo_fast.trainer.config import G2RPOConfig

    ours = {f.name: f.default for f in dataclasses.fields(G2RPOConfig) if f.name.startswith("guidance_")}
    theirs = {f.name: f.default for f in dataclasses.fields(GuidedGRPOConfig) if f.name.startswith("guidance_")}
    assert set(theirs) == set(ours)
    assert {k: v for k, v in theirs.items() if k != "guidance_reward"} == \
        {k: v for k, v in ours.items() if k != "guidance_reward"}
    assert theirs["guidance_reward"] is None
    assert GuidedGRPOConfig(output_dir="x", num_generations=8, use_cpu=True).n_guided == 2  # round(0.25 * 8)
    assert GuidedGRPOConfig(output_dir="x", num_generations=8, use_cpu=True, guidance_schedule="none").n_guided == 0


def test_a_trl_script_parses_the_guidance_fields_from_its_command_line():
    from trl import TrlParser

    (args,) = TrlParser(GuidedGRPOConfig).parse_args_and_config(
        ["--output_dir", "x", "--use_cpu", "true", "--guidance_ratio", "0.5", "--guidance_schedule", "fixed",
         "--guidance_reward", "accuracy", "--use_g2rpo_loss", "true"])
    assert (args.guidance_ratio, args.guidance_schedule, args.guidance_reward, args.use_g2rpo_loss) == \
        (0.5, "fixed", "accuracy", True)
    assert args.n_guided == 4  # round(0.5 * TRL's default num_generations = 8)


@pytest.mark.parametrize("field,value", [
    ("guidance_ratio", 1.5), ("guidance_ratio", float("nan")), ("guidance_schedule", "cosine"),
    ("guidance_loss", "drop"), ("guidance_window", 0), ("guidance_update_every", 0), ("guidance_min_length", -1),
    ("guidance_initial_length", 40), ("guidance_field", " "), ("guidance_reward", ""), ("use_g2rpo_loss", "yes"),
    ("guidance_max_factor", 1.0), ("guidance_max_factor", float("inf")),
])
def test_bad_guidance_fields_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"`{field}`"):
        GuidedGRPOConfig(output_dir="x", use_cpu=True, **{field: value})


@pytest.mark.parametrize("field,value", [
    ("loss_type", "cispo"), ("loss_type", "sapo"), ("top_entropy_quantile", 0.5), ("entropy_coef", 0.01),
    ("off_policy_mask_threshold", 0.5), ("use_bias_correction_kl", True),
])
def test_use_g2rpo_loss_refuses_what_it_cannot_compute(field, value):
    extra = {"beta": 0.04} if field == "use_bias_correction_kl" else {}
    with pytest.raises(ValueError, match=f"`{field}`"):
        GuidedGRPOConfig(output_dir="x", use_cpu=True, use_g2rpo_loss=True, **extra, **{field: value})
    GuidedGRPOConfig(output_dir="x", use_cpu=True, use_g2rpo_loss=False, **extra, **{field: value})  # TRL's loss


# ------------------------------------------------------------------ parity with guidance off
PARITY = {
    "dapo": dict(loss_type="dapo"),
    "grpo_accumulation": dict(loss_type="grpo", gradient_accumulation_steps=2, per_device_train_batch_size=4),
    "bnpo_clip": dict(loss_type="bnpo", epsilon=0.1, epsilon_high=0.3, delta=1.5, num_iterations=2),
    "dr_grpo_kl": dict(loss_type="dr_grpo", beta=0.04, use_bias_correction_kl=False, num_iterations=2),
    "gspo": dict(loss_type="grpo", importance_sampling_level="sequence", num_iterations=2),
}


@pytest.mark.parametrize("case", sorted(PARITY))
@pytest.mark.parametrize("use_g2rpo_loss", [False, True])
def test_with_guidance_off_the_losses_are_trls(policy, tmp_path, case, use_g2rpo_loss):
    """alpha = 0, same seed: TRL's loss path gives TRL's numbers exactly; the fused loss within fp32
    rounding (losses, gradient norms, and the weights after the steps: plain SGD, so that equal
    weights mean equal gradients; AdamW would blow up the rounding of near-zero gradients)."""
    kw = dict(PARITY[case], max_steps=3 if "num_iterations" in PARITY[case] else 2, optim="sgd", learning_rate=0.1)
    model, tok = load_policy(policy)
    theirs, theirs_w = run(GRPOTrainer(model=policy if kw.get("beta") else model,
                                       reward_funcs=[digit_fraction_reward], args=trl_config(tmp_path / "t", **kw),
                                       train_dataset=solution_dataset(), processing_class=tok))
    model, tok = load_policy(policy)
    guided = GuidedGRPOTrainer(model=policy if kw.get("beta") else model, reward_funcs=[digit_fraction_reward],
                               args=guided_config(tmp_path / "g", guidance_ratio=0.0, use_g2rpo_loss=use_g2rpo_loss,
                                                  **kw),
                               train_dataset=solution_dataset(), processing_class=tok)
    ours, ours_w = run(guided)
    assert len(ours) == len(theirs) == kw["max_steps"]
    for a, b in zip(ours, theirs):
        assert ("reward" in a) == ("reward" in b)  # logged on the steps that generate (num_iterations)
        for key in ("loss", "grad_norm", "reward", "kl", "clip_ratio/region_mean"):
            if key not in b:
                continue
            if use_g2rpo_loss and case == "gspo" and key.startswith("clip"):
                assert key not in a  # per-sequence means in TRL; the fused loss has token means only
                continue
            if use_g2rpo_loss:
                assert a[key] == pytest.approx(b[key], rel=2e-5, abs=1e-7), key
            else:
                assert a[key] == b[key], key
        if "reward" in b:
            assert a["guidance_length"] == 18  # logged, unused: round(0 * G) = 0 guided completions
    assert b["grad_norm"] > 0.1  # the steps move the weights, so equal weights mean equal gradients
    for name, w in theirs_w.items():
        if use_g2rpo_loss:
            torch.testing.assert_close(ours_w[name], w, rtol=1e-5, atol=2e-6)
        else:
            assert torch.equal(ours_w[name], w), name


# ------------------------------------------------------------------ guided roll-outs and their mask
class Recorder:
    """A reward function that records what the rewards see (and scores digits)."""

    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, **kw):
        self.calls.append(dict(prompts=list(prompts), completions=list(completions), solution=list(kw["solution"])))
        return digit_fraction_reward(prompts, completions)


def one_guided_batch(trainer):
    """One generated batch through TRL's `_generate_and_score_completions`, rows in sampler order."""
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by TRL's training loop, which this skips
    rows = next(iter(trainer.get_train_dataloader()))
    return rows, trainer._generate_and_score_completions(rows)


SHORT = "12"  # a solution shorter than ℓ: the whole of it, never padded


@pytest.mark.parametrize("use_g2rpo_loss", [False, True])
@pytest.mark.parametrize("guidance_loss", ["mask", "include"])
def test_guided_completions_start_with_the_solution_and_the_loss_honours_the_mask(policy, tmp_path, use_g2rpo_loss,
                                                                                   guidance_loss):
    recorder = Recorder()
    data = solution_dataset(8, solutions={i: SHORT for i in range(0, 8, 2)})
    trainer = make_guided(policy, tmp_path, reward_funcs=[recorder], dataset=data, guidance_ratio=0.5,
                          guidance_initial_length=5, guidance_max_length=8, use_g2rpo_loss=use_g2rpo_loss,
                          guidance_loss=guidance_loss, per_device_train_batch_size=16)
    tok = trainer.processing_class
    rows, out = one_guided_batch(trainer)
    gmask, cids = out["guidance_mask"], out["completion_ids"]
    n_guided_tokens = 0
    for i, row in enumerate(rows):
        expected = tok(row["solution"], add_special_tokens=False)["input_ids"][:5] if i % 4 < 2 else []
        n = len(expected)
        n_guided_tokens += n
        assert gmask[i].tolist() == [1] * n + [0] * (gmask.size(1) - n), i
        assert cids[i, :n].tolist() == expected, i
        text = recorder.calls[0]["completions"][i]
        assert text.startswith(row["solution"][:5] if n else ""), (i, text)
        assert len(text) > n or out["completion_mask"][i].sum() == n  # the model went on from the guidance
    assert n_guided_tokens == 4 * 5 + 4 * len(SHORT)  # 8 guided samples: 4 with a long solution, 4 short
    assert recorder.calls[0]["solution"] == [r["solution"] for r in rows]  # dataset columns reach the rewards

    # The trained tokens: completion tokens, minus the guidance with guidance_loss="mask".
    w = out["completion_mask"].double() * ((1 - gmask.double()) if guidance_loss == "mask" else 1)
    assert out["num_items_in_batch"].item() == w.sum().item()

    # The gradient against float64, written here: dapo, one step on fresh samples (ratio 1, no KL):
    # loss = -Σ_t w_t A_b exp(logp_t - sg(logp_t)) / Σ w.
    model = trainer.model
    ref = copy.deepcopy(model).double()
    ids = torch.cat([out["prompt_ids"], cids], 1)
    attn = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    logits = type(ref).forward(ref, input_ids=ids, attention_mask=attn).logits[:, -cids.size(1) - 1:-1]
    logp = torch.log_softmax(logits, -1).gather(-1, cids.unsqueeze(-1)).squeeze(-1)
    want = -(w * out["advantages"].double().unsqueeze(1) * torch.exp(logp - logp.detach())).sum() / w.sum()
    want.backward()
    model.zero_grad()
    got = trainer._compute_loss(model, out)
    got.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_groups_are_guided_by_their_place_across_the_batch(policy, tmp_path):
    """The first round(alpha * G) samples of every group, counted over the global index."""
    from g2rpo_fast.integrations.trl.guided_samples import sample_guidance

    trainer = make_guided(policy, tmp_path, guidance_ratio=0.75)
    rows = [dict(solution="0123456789")] * 6
    tok = trainer.processing_class
    # Process 1 of 2 holds global samples 6..11: places 2, 3 | 0, 1, 2, 3 of G = 4; 3 guided per group.
    got = sample_guidance(rows, tok, "solution", first_index=6, group_size=4, n_guided=3, length=4)
    assert [len(g) for g in got] == [4, 0, 4, 4, 4, 0]
    assert got[0] == tok("0123", add_special_tokens=False)["input_ids"]


def test_under_trls_default_bf16_autocast_the_fused_loss_follows_trls(policy, tmp_path):
    """TRL's default bf16=True runs the CPU forward under bf16 autocast: the fused loss takes the
    head's inputs in bf16 (as the lm_head would run) and accumulates in fp32; its gradient is TRL's
    to bf16 precision."""
    trainer = make_guided(policy, tmp_path, guidance_ratio=0.5, use_g2rpo_loss=True, bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16"
    _, out = one_guided_batch(trainer)
    grads = []
    for fused in (trainer._g2rpo_loss, None):
        trainer._g2rpo_loss = fused
        trainer.model.zero_grad()
        with trainer.compute_loss_context_manager():
            trainer._compute_loss(trainer.model, out).backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
    assert torch.isfinite(grads[0]).all()
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 2e-2


# ------------------------------------------------------------------ the adaptive rule
def adaptive_lengths(rewards, initial, lo, hi, window, update_every):
    """ℓ used at each batch by DESIGN.md's rule (written here, not the package's)."""
    length, history, used = initial, [], []
    for k, r in enumerate(rewards, start=1):
        used.append(length)
        previous = history[-window:]
        if k % update_every == 0 and previous and r > 0 and sum(previous) / len(previous) > 0:
            length = min(max(int(length * (sum(previous) / len(previous)) / r), lo), hi)
        history.append(r)
    return used, length


PLANTED = [0.5, 0.25, 1.0, 0.5, 0.0]


def planted_reward(prompts, completions, trainer_state, **kw):
    return [PLANTED[trainer_state.global_step]] * len(prompts)


GUIDANCE = dict(guidance_ratio=0.5, guidance_initial_length=4, guidance_min_length=1, guidance_max_length=8,
                guidance_reward="planted_reward", reward_weights=[0.0, 1.0])


def test_the_length_follows_the_rule_on_planted_rewards(policy, tmp_path):
    recorder = Recorder()
    trainer = make_guided(policy, tmp_path, reward_funcs=[planted_reward, recorder], max_steps=5, **GUIDANCE)
    rows, _ = run(trainer)
    used, final = adaptive_lengths(PLANTED, 4, 1, 8, window=2, update_every=1)
    assert used == [4, 4, 8, 3, 3]  # the planted rewards move ℓ both ways
    assert [r["guidance_length"] for r in rows] == used
    assert trainer.guidance.length == final
    for step, call in enumerate(recorder.calls):  # the completions were guided with that ℓ
        for i, (text, solution) in enumerate(zip(call["completions"], call["solution"])):
            if i % 4 < 2:
                assert text.startswith(solution[:used[step]]), (step, i)
    for r in rows:  # guided and unguided rewards (TRL's `reward`: the weighted sum, here the recorder's)
        assert {"reward_guided", "reward_unguided", "loss", "entropy", "clip_ratio/low_mean"} <= set(r)
        assert min(r["reward_guided"], r["reward_unguided"]) <= r["reward"] <= max(r["reward_guided"],
                                                                                   r["reward_unguided"])


@pytest.mark.parametrize("window,update_every,used", [(1, 1, [4, 4, 8, 2, 4]), (1, 2, [4, 4, 8, 8, 8])])
def test_the_window_and_update_every(policy, tmp_path, window, update_every, used):
    trainer = make_guided(policy, tmp_path, reward_funcs=[planted_reward, digit_fraction_reward], max_steps=5,
                          **{**GUIDANCE, "guidance_update_every": update_every, "guidance_window": window})
    rows, _ = run(trainer)
    assert [r["guidance_length"] for r in rows] == adaptive_lengths(PLANTED, 4, 1, 8, window, update_every)[0] == used


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_linear_schedule_spans_the_generated_batches(policy, tmp_path, accumulation):
    """ℓ from 8 to 0 over the run's generated batches: 4 optimizer steps, one batch per step
    (TRL generates once per accumulation window by default, whatever the accumulation)."""
    trainer = make_guided(policy, tmp_path, max_steps=4, guidance_ratio=0.5, guidance_schedule="linear",
                          guidance_initial_length=8, guidance_final_length=0,
                          gradient_accumulation_steps=accumulation, per_device_train_batch_size=8 // accumulation)
    rows, _ = run(trainer)
    assert [r["guidance_length"] for r in rows] == [8, 6, 4, 2]  # round(8 - 8 * k / 4) before batch k + 1
    assert trainer.guidance.length == 0


def test_the_schedule_is_saved_and_restored_through_trls_checkpoints(policy, tmp_path):
    kw = dict(reward_funcs=[planted_reward, digit_fraction_reward], max_steps=4, save_strategy="steps", save_steps=1,
              **GUIDANCE)
    whole = make_guided(policy, tmp_path / "whole", **kw)
    run(whole)
    saved = json.loads((tmp_path / "whole" / "checkpoint-2" / "g2rpo_guidance.json").read_text())
    assert saved["state"]["length"] == 8 and saved["state"]["history"] == PLANTED[:2]
    resumed = make_guided(policy, tmp_path / "whole", **kw)
    assert resumed.guidance.length == 4
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))
    assert resumed.guidance.state_dict() == whole.guidance.state_dict()
    lengths = [r["guidance_length"] for r in resumed.state.log_history if "guidance_length" in r]
    assert lengths[-2:] == [8, 3]  # steps 3 and 4 ran with the restored ℓ

    (tmp_path / "whole" / "checkpoint-2" / "g2rpo_guidance.json").unlink()
    again = make_guided(policy, tmp_path / "whole", **kw)
    with pytest.raises(ValueError, match=r"g2rpo_guidance\.json"):
        again.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-2"))


# ------------------------------------------------------------------ vLLM server mode, through a stand-in
class ServerStandIn:
    """TRL's `VLLMGeneration.generate` in server mode, one process: it takes every
    `num_generations`-th prompt and returns `num_generations` completions of each (TRL 1.16's
    contract, `trl/generation/vllm_generation.py`), with a sampling log-prob per token."""

    def __init__(self, completion_ids):
        self.completion_ids, self.requests = completion_ids, []

    def sync_weights(self):
        pass

    def generate(self, prompts, images, num_generations, profiler=None):
        unique = prompts[::num_generations]
        self.requests.append([list(p) for p in unique])
        completions = [list(self.completion_ids) for _ in unique for _ in range(num_generations)]
        logprobs = [[[-0.5]] * len(c) for c in completions]
        return [p for p in unique for _ in range(num_generations)], completions, logprobs, None


def test_vllm_server_mode_requests_each_guided_sample(policy, tmp_path):
    trainer = make_guided(policy, tmp_path, guidance_ratio=0.5, use_g2rpo_loss=True,
                          vllm_importance_sampling_mode="token_truncate")
    tok = trainer.processing_class
    generated = tok("7+1", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    server = trainer.vllm_generation = ServerStandIn(generated)
    trainer.use_vllm, trainer._last_loaded_step = True, -1  # what use_vllm=True sets up, minus vLLM
    rows, out = one_guided_batch(trainer)
    prompts = [tok(r["prompt"])["input_ids"] for r in rows]
    guides = [tok(r["solution"], add_special_tokens=False)["input_ids"][:18] if i % 4 < 2 else []
              for i, r in enumerate(rows)]
    assert server.requests == [[p + g for p, g in zip(prompts, guides)]]  # one request per sample
    for i, g in enumerate(guides):
        assert out["completion_ids"][i, :len(g) + len(generated)].tolist() == g + generated
    # NaN sampling log-probs at the guidance: TRL's correction leaves those tokens alone (ratio 1).
    ratio, guidance = out["importance_sampling_ratio"], out["guidance_mask"].bool()
    assert torch.isfinite(ratio).all() and (ratio[guidance] == 1).all()
    assert (ratio[~guidance & out["completion_mask"].bool()] != 1).any()  # elsewhere it corrects
    # The fused loss applies the correction as TRL's loss does (TRL's own path as the peer).
    grads = []
    for fused in (trainer._g2rpo_loss, None):
        trainer._g2rpo_loss = fused
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, out)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in trainer.model.parameters()]))
    assert math.isfinite(grads[0][0]) and grads[0][0] == pytest.approx(grads[1][0], abs=1e-6)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ bad input
def test_bad_input_is_refused_by_name(policy, tmp_path):
    model, tok = load_policy(policy)
    with pytest.raises(ValueError, match="`args` must be a GuidedGRPOConfig"):
        GuidedGRPOTrainer(model=model, reward_funcs=[digit_fraction_reward], args=trl_config(tmp_path),
                          train_dataset=solution_dataset(), processing_class=tok)
    with pytest.raises(ValueError, match="`guidance_field`"):
        make_guided(policy, tmp_path, dataset=solution_dataset().remove_columns("solution"))
    make_guided(policy, tmp_path, dataset=solution_dataset().remove_columns("solution"), guidance_schedule="none")
    with pytest.raises(ValueError, match="`guidance_reward`"):
        make_guided(policy, tmp_path, guidance_reward="accuracy")
    with pytest.raises(ValueError, match="`rollout_func`"):
        make_guided(policy, tmp_path, trainer_kw=dict(rollout_func=lambda prompts, trainer: {}))
    numbers = solution_dataset().map(lambda r: {"solution": 12})
    with pytest.raises(ValueError, match="`guidance_field` 'solution' must hold text"):
        one_guided_batch(make_guided(policy, tmp_path, dataset=numbers))


def test_scaled_logits_are_refused_by_the_fused_loss(policy, tmp_path):
    model, tok = load_policy(policy)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        GuidedGRPOTrainer(model=model, reward_funcs=[digit_fraction_reward],
                          args=guided_config(tmp_path, use_g2rpo_loss=True), train_dataset=solution_dataset(),
                          processing_class=tok)


def test_the_integration_keeps_trls_generation_when_unguided(policy, tmp_path):
    """guidance_schedule='none': TRL's `_generate_single_turn` gets TRL's num_generations (its vLLM
    server mode deduplicates the group's prompts with it)."""
    trainer = make_guided(policy, tmp_path, guidance_schedule="none")
    tok = trainer.processing_class
    server = trainer.vllm_generation = ServerStandIn(tok("1", add_special_tokens=False)["input_ids"])
    trainer.use_vllm, trainer._last_loaded_step = True, -1
    rows, _ = one_guided_batch(trainer)
    assert server.requests == [[tok(r["prompt"])["input_ids"] for r in rows[::4]]]
