"""What a checkpoint holds of the trainer, and the run directory around it.

`state_dict` is everything besides the model that continues a run exactly (optimizer,
scheduler, guidance controller, data position, roll-outs still to train on, fp16 loss scale),
and every step's metrics so far (a resume rebuilds metrics.jsonl lines that were torn or deleted);
`save` / `load` write and read it with the model, in one process or DDP through
`checkpointing/checkpoint.py` (rank 0), under FSDP through `checkpointing/sharded_checkpoint.py`
(every rank its shards). `prepare_output_dir` and `_checkpoint_to_resume` run before step 1,
rank 0 deciding and the others following. A mixin of `G2RPOTrainer`: these are its methods,
kept apart from the loop.
"""
from __future__ import annotations

import os
import warnings

import torch

from g2rpo_fast.checkpointing.checkpoint import (
    checkpoint_to_resume,
    clean_partial_checkpoints,
    load_model_weights,
    load_trainer_state,
    save_checkpoint,
    set_rng_state,
    warn_changed_config,
)
from g2rpo_fast.checkpointing.run_dir import (
    RunSetupError,
    check_output_dir,
    delete_earlier_run,
    ended_early_notice,
    take_final_record,
)
from g2rpo_fast.models.adapters import load_adapter_weights

from .batch import RolloutBatch
from .metrics_log import read_metrics, rebuild_metrics


class TrainerState:
    def state_dict(self) -> dict:
        buffer = None if self.buffer is None else [b.state_dict() for b in self.buffer]
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "guidance": self.guidance.state_dict(), "data_position": self.data_position,
                "buffer": buffer, "buffer_uses": self.buffer_uses, "num_tokens": self.num_tokens,
                "buffer_guidance_length": self.buffer_guidance_length, "steps_skipped": self.steps_skipped,
                "metrics": list(self.history),
                # transformers' TrainerState.log_history (what callbacks read), restored on resume
                "log_history": list(self.callbacks.state.log_history),
                # fp16's loss scale and its growth tracker: a resume continues the same scaling
                "grad_scaler": None if self.grad_scaler is None else self.grad_scaler.state_dict()}

    def save(self, output_dir=None, export: bool = False) -> str | None:
        """Rank 0 writes the checkpoint (the model via `save_pretrained`); under FSDP every rank
        writes its shards (`sharded_checkpoint.py`) and `export` adds the whole model."""
        if self.sharded:
            from g2rpo_fast.checkpointing.sharded_checkpoint import save_sharded_checkpoint

            state = self.state_dict()
            rank_state = {k: state.pop(k) for k in ("buffer", "buffer_uses", "buffer_guidance_length")}
            state.pop("optimizer")
            path = save_sharded_checkpoint(output_dir or self.config.output_dir, self.step, model=self.model,
                                           optimizer=self.optimizer, tokenizer=self.tokenizer, global_state=state,
                                           rank_state=rank_state, config=self.config, dist=self.dist,
                                           save_total_limit=self.config.save_total_limit, export=export)
            return path if self.is_main else None
        if not self.is_main:
            return None
        # with adapters, the PeftModel: the checkpoint holds the adapter (`g2rpo-fast export` merges it)
        return save_checkpoint(output_dir or self.config.output_dir, self.step, self.peft_model or self.model,
                               self.tokenizer, self.state_dict(), self.config, self.config.save_total_limit)

    def load(self, path: str) -> None:
        from g2rpo_fast.checkpointing.sharded_checkpoint import is_sharded_checkpoint, load_sharded_checkpoint

        if is_sharded_checkpoint(path):  # DCP: resharded to this world size (one process too)
            state = load_sharded_checkpoint(path, model=self.model, optimizer=self.optimizer, dist=self.dist)
            state.update(state.pop("rank_state"))
        elif self.sharded:
            raise RunSetupError(f"`resume`: {path} is a single-process/DDP checkpoint; an fsdp run resumes from "
                                f"sharded checkpoints only (resume it with fsdp: false)")
        else:
            if self.peft_model is not None:
                load_adapter_weights(self.peft_model, path)
            else:
                load_model_weights(self.model, path)
            state = load_trainer_state(path)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.guidance.load_state_dict(state["guidance"])
        self.data_position = int(state["data_position"])
        self.steps_skipped = int(state.get("steps_skipped", 0))
        if self.grad_scaler is not None and state.get("grad_scaler"):
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        buffer = state.get("buffer")
        self.buffer = None if buffer is None else [RolloutBatch.from_state_dict(b, self.device) for b in buffer]
        self.buffer_uses = int(state.get("buffer_uses", 0))
        self.num_tokens = int(state.get("num_tokens", 0))
        self.buffer_guidance_length = state.get("buffer_guidance_length")
        self.step = int(state["step"])
        self.saved_metrics = state.get("metrics")  # None in checkpoints written before they held it
        self.callbacks.state.log_history = list(state.get("log_history") or [])
        if "rng" in state:  # a sharded checkpoint restored this rank's RNG already
            set_rng_state(state["rng"])

    # ------------------------------------------------------------------ run directory
    def prepare_output_dir(self, resume: bool) -> None:
        """Refuse an output dir that is not writable or holds another run (`run_dir`), put
        back or remove leftovers of an interrupted save, apply `overwrite_output_dir`."""
        cfg = self.config
        if self.is_main:
            check_output_dir(cfg.output_dir, resume, cfg.overwrite_output_dir)
            os.makedirs(cfg.output_dir, exist_ok=True)
            for line in clean_partial_checkpoints(cfg.output_dir):
                _notice(f"{cfg.output_dir}: {line}")
            if cfg.overwrite_output_dir and not resume:
                removed = delete_earlier_run(cfg.output_dir)
                if removed:
                    _notice(f"overwrite_output_dir: removed the earlier run's {', '.join(removed)} from "
                            f"{cfg.output_dir}")
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    def _resume(self, resume_from_checkpoint, metrics_path: str) -> list[dict]:
        """The run's history before step 1 of this call: empty for a fresh run; resuming, the
        checkpoint loaded and its steps' metrics (metrics.jsonl, rebuilt from the checkpoint's
        copy where torn or lost). Takes the final record away: until this run reaches its end,
        it has none (an early end is never taken for a finished run; a resume says so)."""
        path = None
        if resume_from_checkpoint:
            path = self._checkpoint_to_resume(resume_from_checkpoint)
            self.load(path)
            warn_changed_config(path, self.config)
        out = self.config.output_dir
        previous = take_final_record(out) if self.is_main else None
        if not resume_from_checkpoint:
            return []
        logged = read_metrics(metrics_path)
        if self.is_main and previous is None:
            last = max((m["step"] for m in logged), default=None)
            warnings.warn(ended_early_notice(out, last, path), RuntimeWarning, stacklevel=3)
        return rebuild_metrics(logged, self.saved_metrics, self.step, path)

    def _checkpoint_to_resume(self, resume) -> str:
        """`resume`: True (the newest checkpoint of output_dir that verifies) or a path.
        Rank 0 verifies and tells the others."""
        found = [None, None]
        if self.is_main:
            found = list(checkpoint_to_resume(self.config.output_dir, resume))
        if self.dist.world_size > 1:
            torch.distributed.broadcast_object_list(found, src=0)
        path, error = found
        if error:
            raise RunSetupError(error)
        return path


def _notice(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)
