"""LoRA through TRL's `peft_config`: only the adapters train, the roll-outs and the fused loss see
them (an lm_head adapter included, checked against peft's own forward), the reference of fresh
adapters is the base model, checkpoints hold the adapter and resume exactly, export merges it."""
import os

import pytest
import torch
from helpers import make_config, strip_timing, tiny_dataset

peft = pytest.importorskip("peft", reason="LoRA needs the peft package (extra `peft`, in `test`)")

from g2rpo_fast.trainer.trainer import G2RPOTrainer  # noqa: E402

TARGETS = ["q_proj", "v_proj", "down_proj", "lm_head"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Qwen3 saved with its tokenizer: a path, as a user's model is."""
    from helpers import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer(seed=0)
    path = str(tmp_path_factory.mktemp("peft") / "model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def lora(r=4):
    return peft.LoraConfig(r=r, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS)


def nonzero_adapters(trainer, seed=1):
    """Fresh LoRA B matrices are 0 (the adapter changes nothing yet): give them values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trainer.peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def trainer_for(model_dir, cfg, **kw):
    return G2RPOTrainer(model_dir, cfg.reward_funcs, args=cfg, train_dataset=tiny_dataset(16), peft_config=lora(),
                        **kw)


def test_only_the_adapters_train(model_dir, tmp_path):
    trainer = trainer_for(model_dir, make_config(tmp_path, max_steps=2))
    base = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in trainer.peft_model.named_parameters() if "lora_" in n}
    optimized = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimized == {id(p) for n, p in trainer.peft_model.named_parameters() if "lora_" in n}
    trainer.train()
    after = dict(trainer.peft_model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in base.items())  # frozen, to the bit
    assert any(not torch.equal(after[n], v) for n, v in adapters.items() if "lora_B" in n)


def test_rollouts_and_the_fused_loss_see_the_adapters(model_dir, tmp_path):
    """Log-probs of the engine's sampled tokens and of the packed training forward (the fused
    lm_head loss path) equal peft's own forward of prompt + completion, lm_head adapter included."""
    from g2rpo_fast.packing.layout import pack_samples
    from g2rpo_fast.packing.policy_forward import policy_logps
    from g2rpo_fast.rollout.composition import Sample

    trainer = trainer_for(model_dir, make_config(tmp_path, temperature=1.0))
    nonzero_adapters(trainer)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    outs = trainer.engine.generate(prompts, max_new_tokens=5, temperature=1.0, seed=0, return_logprobs=True)
    samples = [Sample(i, p, [], generated_ids=o.token_ids) for i, (p, o) in enumerate(zip(prompts, outs))]
    packed = pack_samples(samples, "cpu")
    ours = policy_logps(trainer.policy, packed, trainer.runtime, temperature=1.0)
    expected, engine = [], []
    trainer.peft_model.eval()
    with torch.no_grad():
        for p, o in zip(prompts, outs):
            ids = torch.tensor([p + o.token_ids])
            logits = trainer.peft_model(input_ids=ids).logits[0, len(p) - 1:-1].float()
            expected.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(o.token_ids)[:, None])[:, 0])
            engine.append(torch.tensor(o.logprobs))
    expected = torch.cat(expected)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat(engine), expected, rtol=1e-4, atol=1e-4)
    with trainer.peft_model.disable_adapter(), torch.no_grad():  # the adapters really matter here
        base = trainer.peft_model(input_ids=torch.tensor([prompts[0] + outs[0].token_ids])).logits
    assert not torch.allclose(base[0, 3:-1].log_softmax(-1), trainer.peft_model(
        input_ids=torch.tensor([prompts[0] + outs[0].token_ids])).logits[0, 3:-1].log_softmax(-1), atol=1e-3)


def test_the_reference_of_fresh_adapters_is_the_base_model(model_dir, tmp_path):
    from g2rpo_fast.packing.layout import pack_samples
    from g2rpo_fast.packing.policy_forward import policy_logps
    from g2rpo_fast.rollout.composition import Sample

    trainer = trainer_for(model_dir, make_config(tmp_path, beta=0.1))
    assert trainer.ref_model is None  # no copy of the model: the same weights, adapters off
    nonzero_adapters(trainer)
    samples = [Sample(0, [5, 6, 7], [], generated_ids=[8, 9, 10])]
    packed = pack_samples(samples, "cpu")
    ref = policy_logps(trainer.ref_policy, packed, trainer.runtime)
    with trainer.peft_model.disable_adapter():
        plain = policy_logps(trainer.policy, packed, trainer.runtime)
    torch.testing.assert_close(ref, plain)
    assert not torch.allclose(policy_logps(trainer.policy, packed, trainer.runtime), ref, atol=1e-3)
    trainer.train()  # the KL term runs with it


def test_checkpoints_hold_the_adapter_resume_exactly_and_export_merges(model_dir, tmp_path):
    from g2rpo_fast.checkpointing.export import export_checkpoint

    straight = trainer_for(model_dir, make_config(tmp_path, name="full", max_steps=4)).train()
    cfg = make_config(tmp_path, name="part", max_steps=4, save_steps=2)
    first = trainer_for(model_dir, cfg)
    first.max_steps = 2
    first.train()
    ckpt = os.path.join(cfg.output_dir, "checkpoint-2")
    assert os.path.isfile(os.path.join(ckpt, "adapter_model.safetensors"))
    assert not os.path.isfile(os.path.join(ckpt, "model.safetensors"))  # the base weights are the user's
    resumed = trainer_for(model_dir, cfg).train(resume_from_checkpoint=True)
    assert strip_timing(resumed) == strip_timing(straight)

    out = str(tmp_path / "exported")
    export_checkpoint(os.path.join(cfg.output_dir, "checkpoint-4"), out)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out)
    live = trainer_for(model_dir, cfg)
    live.load(os.path.join(cfg.output_dir, "checkpoint-4"))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    live.peft_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, live.peft_model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)


def test_bad_peft_input_is_named(model_dir, tmp_path):
    with pytest.raises(ValueError, match=r"`peft_config` must be a peft\.PeftConfig"):
        G2RPOTrainer(model_dir, args=make_config(tmp_path), train_dataset=tiny_dataset(8),
                     peft_config={"r": 8})
    from transformers import AutoModelForCausalLM

    wrapped = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), lora())
    with pytest.raises(ValueError, match="`peft_config`: the model already has adapters"):
        G2RPOTrainer(wrapped, args=make_config(tmp_path), train_dataset=tiny_dataset(8),
                     peft_config=lora())
    trainer = G2RPOTrainer(wrapped, args=make_config(tmp_path), train_dataset=tiny_dataset(8))
    assert trainer.peft_model is wrapped  # a PeftModel given as the model: its adapters train
