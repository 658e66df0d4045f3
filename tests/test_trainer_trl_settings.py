"""TRL's GRPOConfig settings do what TRL's do in the trainer: run length in epochs, evaluation and
save strategies, logging cadence, warm-up fractions, metric-driven schedulers, the optimizer,
dropout, the fp32 lm_head, chat template arguments and the generation batch size."""
import math

import pytest
import torch
from helpers import make_config, read_metrics, tiny_dataset, tiny_model_and_tokenizer

from g2rpo_fast.trainer.trainer import G2RPOTrainer


def trainer_for(cfg, n=16, eval_rows=None):
    model, tok = tiny_model_and_tokenizer(seed=0)
    return G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(n),
                        eval_dataset=None if eval_rows is None else tiny_dataset(eval_rows, split="eval"))


def test_max_steps_minus_one_runs_num_train_epochs(tmp_path):
    """One epoch draws every prompt once; a generation takes per_device / G prompts and serves
    num_iterations steps: 6 prompts, 2 per generation, 2 iterations -> 6 steps per epoch."""
    cfg = make_config(tmp_path, max_steps=-1, num_train_epochs=1.5, num_generations=2, per_device_train_batch_size=4,
                      num_iterations=2)
    trainer = trainer_for(cfg, n=6)
    steps_per_epoch = math.ceil(6 / (4 // 2)) * 2
    assert trainer.steps_per_epoch == steps_per_epoch and trainer.max_steps == math.ceil(1.5 * steps_per_epoch)
    cfg = make_config(tmp_path, name="one", max_steps=-1, num_train_epochs=1, num_generations=2,
                      per_device_train_batch_size=4)
    trainer = trainer_for(cfg, n=6)
    history = trainer.train()
    assert [m["step"] for m in history] == [1, 2, 3] and trainer.data_position == 6
    assert [m["epoch"] for m in history] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_eval_and_save_strategies_and_a_plateau_scheduler(tmp_path):
    """eval_strategy steps (eval_steps 2) with eval_on_start; reduce_lr_on_plateau (patience 0)
    halves the rate at the first evaluation that does not beat the best; save_strategy epoch."""
    cfg = make_config(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, eval_on_start=True,
                      lr_scheduler_type="reduce_lr_on_plateau", lr_scheduler_kwargs={"patience": 0, "factor": 0.5},
                      save_strategy="epoch", num_eval_prompts=2, guidance_reward="accuracy")
    trainer = trainer_for(cfg, n=8, eval_rows=2)  # 2 prompts per generation: 4 steps per epoch
    seen = []
    real = trainer.evaluate
    trainer.evaluate = lambda **kw: seen.append(trainer.step) or {"eval_accuracy": 0.0, "eval_count": 2}
    history = trainer.train()
    trainer.evaluate = real
    assert seen == [0, 2]  # on start, at step 2; step 4 is the last (the final evaluation's)
    assert "eval_accuracy" in history[1] and "eval_accuracy" not in history[0]
    lrs = [m["learning_rate"] for m in history]
    assert lrs == pytest.approx([1e-2, 1e-2, 5e-3, 5e-3])  # 0.0 then 0.0: not an improvement -> halved
    import os

    assert sorted(n for n in os.listdir(cfg.output_dir) if n.startswith("checkpoint-")) == ["checkpoint-4"]


def test_save_strategy_no_keeps_only_the_final_checkpoint(tmp_path):
    import os

    cfg = make_config(tmp_path, max_steps=3, save_strategy="no", save_steps=1)
    trainer_for(cfg).train()
    assert sorted(n for n in os.listdir(cfg.output_dir) if n.startswith("checkpoint-")) == ["checkpoint-3"]


def test_logging_cadence_prints_window_means(tmp_path, capsys):
    """Printed (and reported) every logging_steps, at step 1 with logging_first_step and at the
    last step: the mean of the steps since the last log, as TRL logs."""
    cfg = make_config(tmp_path, max_steps=5, logging_steps=2, logging_first_step=True, progress_bar=False)
    trainer_for(cfg).train()
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["1/5", "2/5", "4/5", "5/5"]
    rows = read_metrics(cfg)
    assert f"reward {(rows[2]['reward'] + rows[3]['reward']) / 2:.3f}" in lines[2]


def test_warmup_fraction_and_the_fused_optimizer(tmp_path):
    """warmup_steps 0.5 of 4 steps = 2 warm-up steps of a linear schedule; adamw_torch_fused is
    torch's fused AdamW, the same update as the per-tensor one."""
    cfg = make_config(tmp_path, max_steps=4, warmup_steps=0.5, lr_scheduler_type="linear", optim="adamw_torch_fused")
    trainer = trainer_for(cfg)
    assert trainer.optimizer.defaults["fused"] is True
    history = trainer.train()
    # the rate each step trains with: the schedule after k - 1 scheduler steps
    expected = [1e-2 * min(k / 2, max(0.0, (4 - k) / (4 - 2))) for k in range(4)]
    assert [m["learning_rate"] for m in history] == pytest.approx(expected)
    plain = trainer_for(make_config(tmp_path, name="plain", max_steps=4, warmup_steps=0.5,
                                    lr_scheduler_type="linear", optim="adamw_torch"))
    assert not plain.optimizer.defaults["fused"]
    plain.train()
    for a, b in zip(trainer.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_disable_dropout_zeroes_every_dropout(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from g2rpo_fast.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()

    def gpt2():
        return GPT2LMHeadModel(GPT2Config(vocab_size=104, n_positions=128, n_embd=32, n_layer=1, n_head=2,
                                          resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3,
                                          eos_token_id=tok.eos_token_id))

    for flag in (False, True):
        cfg = make_config(tmp_path, name=str(flag), disable_dropout=flag, prefix_shared_forward="false")
        trainer = G2RPOTrainer(cfg, model=gpt2(), tokenizer=tok, train_dataset=tiny_dataset(8))
        ps = [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert ps and all(p == (0.0 if flag else 0.3) for p in ps)


def test_cast_lm_head_to_fp32_in_the_loss_and_the_engine(tmp_path):
    """With bf16 compute, the lm_head's matmul takes fp32 operands in the loss and in roll-outs."""
    seen = []
    for flag in (False, True):
        cfg = make_config(tmp_path, name=str(flag), torch_dtype="bfloat16", cast_lm_head_to_fp32=flag)
        trainer = trainer_for(cfg)
        h, w, _ = trainer.runtime.loss_operands(torch.randn(3, 32), trainer.model.lm_head.weight, None)
        assert h.dtype == w.dtype == (torch.float32 if flag else torch.bfloat16)
        handle = trainer.model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
        trainer.engine.generate([[5, 6, 7]], max_new_tokens=2)
        handle.remove()
        assert set(seen) == {torch.float32 if flag else torch.bfloat16}
        seen.clear()


def test_chat_template_kwargs_reach_the_template(tmp_path):
    model, tok = tiny_model_and_tokenizer()
    tok.chat_template = "{% if shout %}HI {% endif %}{{ messages[0]['content'] }}"
    for kwargs, start in ((None, "Q:"), ({"shout": True}, "HI Q:")):
        cfg = make_config(tmp_path, chat_template_kwargs=kwargs)
        trainer = G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(8))
        ids = trainer.rollouts.encode_prompt(trainer.train_dataset[0]["prompt"])
        assert tok.decode(ids).startswith(start)


def test_generation_batch_size_must_be_the_step_s_completions(tmp_path):
    with pytest.raises(ValueError, match=r"`generation_batch_size` \(16\) must be per_device_train_batch_size x "
                                         r"world size x gradient_accumulation_steps = 8"):
        trainer_for(make_config(tmp_path, generation_batch_size=16))
    assert trainer_for(make_config(tmp_path, generation_batch_size=8)).max_steps == 2
