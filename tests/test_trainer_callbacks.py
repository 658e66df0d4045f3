"""transformers' TrainerCallbacks get TRL's events with a TrainerState and a TrainerControl, and the
control they set is honoured; train(resume_from_checkpoint=...) continues a run exactly."""
import os

import pytest
from helpers import make_config, strip_timing, tiny_dataset, tiny_model_and_tokenizer
from transformers import TrainerCallback

from g2rpo_fast.trainer.trainer import G2RPOTrainer


class Recorder(TrainerCallback):
    def __init__(self, stop_at=None, save_at=None, evaluate_at=None):
        self.events, self.logs, self.steps = [], [], []
        self.stop_at, self.save_at, self.evaluate_at = stop_at, save_at, evaluate_at

    def _record(self, name, state):
        self.events.append(name)

    def on_init_end(self, args, state, control, **kw):
        self._record("init_end", state)

    def on_train_begin(self, args, state, control, **kw):
        self._record("train_begin", state)
        self.max_steps = state.max_steps

    def on_step_begin(self, args, state, control, **kw):
        self._record("step_begin", state)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self._record("step_end", state)
        self.steps.append((state.global_step, state.epoch, state.num_input_tokens_seen))
        assert model is not None and optimizer is not None  # the trainer's objects, as transformers passes them
        control.should_training_stop = state.global_step == self.stop_at
        control.should_save = state.global_step == self.save_at
        control.should_evaluate = state.global_step == self.evaluate_at
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        self._record("log", state)
        self.logs.append(dict(logs))

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        self._record("evaluate", state)

    def on_save(self, args, state, control, **kw):
        self._record("save", state)

    def on_train_end(self, args, state, control, **kw):
        self._record("train_end", state)


def make(cfg, callbacks, eval_rows=None):
    model, tok = tiny_model_and_tokenizer()
    return G2RPOTrainer(model, cfg.reward_funcs, args=cfg, train_dataset=tiny_dataset(16), processing_class=tok,
                        callbacks=callbacks,
                        eval_dataset=None if eval_rows is None else tiny_dataset(eval_rows, split="eval"))


def test_events_state_and_logs(tmp_path):
    rec = Recorder()
    cfg = make_config(tmp_path, max_steps=3, logging_steps=2, save_steps=2, num_eval_prompts=2, eval_at_end=True)
    trainer = make(cfg, [rec], eval_rows=2)
    history = trainer.train()
    assert rec.events == ["init_end", "train_begin", "step_begin", "step_end", "step_begin", "step_end", "log",
                          "save", "step_begin", "step_end", "log", "evaluate", "save", "train_end"]
    assert rec.max_steps == 3 and [s for s, _, _ in rec.steps] == [1, 2, 3]
    assert [t for _, _, t in rec.steps] == [m["num_tokens"] for m in history]
    assert rec.steps[-1][2] > rec.steps[0][2] > 0
    assert [lg["step"] for lg in rec.logs] == [2, 3] and trainer.state.log_history == rec.logs
    assert rec.logs[0]["reward"] == pytest.approx((history[0]["reward"] + history[1]["reward"]) / 2)
    # running counts are logged as they stand at the logging step (TRL's num_tokens is
    # state.num_input_tokens_seen, transformers' epoch state.epoch), not averaged over the window
    # and what transformers' Trainer logs from the last step alone: learning_rate, grad_norm
    for key in ("num_tokens", "epoch", "steps_skipped", "learning_rate", "grad_norm"):
        assert rec.logs[0][key] == history[1][key] and rec.logs[1][key] == history[2][key], key
    assert history[1]["num_tokens"] > history[0]["num_tokens"]
    assert history[1]["grad_norm"] != history[0]["grad_norm"]  # else a window mean would pass too
    assert trainer.state.global_step == 3 and trainer.control is not None


def test_should_training_stop_save_and_evaluate_are_honoured(tmp_path):
    rec = Recorder(stop_at=3, save_at=1, evaluate_at=2)
    cfg = make_config(tmp_path, max_steps=6, save_steps=100, num_eval_prompts=2, eval_at_end=False)
    trainer = make(cfg, [rec], eval_rows=2)
    history = trainer.train()
    assert [m["step"] for m in history] == [1, 2, 3]  # stopped after step 3
    assert "eval_accuracy" in history[1] and "eval_accuracy" not in history[0]
    assert sorted(n for n in os.listdir(cfg.output_dir) if n.startswith("checkpoint-")) == \
        ["checkpoint-1", "checkpoint-3"]  # asked for at step 1; the final one where it stopped
    assert rec.events[-1] == "train_end"


def test_a_callback_class_is_instantiated_and_anything_else_refused(tmp_path):
    cfg = make_config(tmp_path)
    trainer = make(cfg, [Recorder])
    assert any(isinstance(cb, Recorder) for cb in trainer.callback_handler.callbacks)
    with pytest.raises(ValueError, match="`callbacks`: function is not a transformers TrainerCallback"):
        make(cfg, [lambda *a: None])


def test_train_resume_from_checkpoint_path_continues_exactly(tmp_path):
    full = make_config(tmp_path, name="full", max_steps=4)
    whole = make(full, [])
    straight = whole.train()
    part = make_config(tmp_path, name="part", max_steps=4, save_steps=2)
    first = make(part, [])
    first.max_steps = 2  # interrupted after step 2 (its checkpoint-2 written as at the end)
    first.train()
    second = make(part, [])
    resumed = second.train(resume_from_checkpoint=os.path.join(part.output_dir, "checkpoint-2"))
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    assert strip_timing(resumed) == strip_timing(straight)
    # transformers restores TrainerState.log_history from the checkpoint: a callback that reads
    # it after a resume sees every logged step, not only those since the resume
    assert [lg["step"] for lg in second.state.log_history] == [1, 2, 3, 4]
    assert strip_timing(second.state.log_history) == strip_timing(whole.state.log_history)
