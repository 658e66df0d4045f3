"""transformers' callback protocol around a training loop: `TrainerCallback`s get the events
(on_init_end, on_train_begin, on_step_begin, on_step_end, on_log, on_evaluate, on_save,
on_train_end) with a `TrainerState` and a `TrainerControl`, through transformers' own
`CallbackHandler`, as TRL's GRPOTrainer gives them. The loop reads the control back: a callback
stops training (`should_training_stop`), or asks for a checkpoint (`should_save`) or an
evaluation (`should_evaluate`) after the step it sets it in.

The loop's own cadence (logging_steps, eval_strategy, save_strategy) is the trainer's, so
transformers' DefaultFlowCallback is not added (its flags would only repeat it).
"""
from __future__ import annotations

import logging


class Callbacks:
    def __init__(self, callbacks, args, model, tokenizer, optimizer, scheduler, *, max_steps: int,
                 steps_per_epoch: int, is_main: bool, is_local_main: bool):
        from transformers.trainer_callback import CallbackHandler, TrainerCallback, TrainerControl, TrainerState

        for cb in callbacks:
            cls = cb if isinstance(cb, type) else type(cb)
            if not issubclass(cls, TrainerCallback):
                raise ValueError(f"`callbacks`: {cls.__name__} is not a transformers TrainerCallback (or its class)")
        quiet = logging.getLogger("transformers.trainer_callback")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # its "no DefaultFlowCallback" warning: deliberate, see above
        try:
            self.handler = CallbackHandler(list(callbacks), model, tokenizer, optimizer, scheduler)
        finally:
            quiet.setLevel(level)
        self.args = args
        self.state = TrainerState(
            max_steps=max_steps, logging_steps=args.logging_steps, eval_steps=args.eval_steps or args.logging_steps,
            save_steps=args.save_steps, train_batch_size=args.per_device_train_batch_size,
            num_train_epochs=max_steps / steps_per_epoch, is_world_process_zero=is_main,
            is_local_process_zero=is_local_main, log_history=[])
        self.control = TrainerControl()

    def event(self, name: str, **kwargs):
        """Call every callback's `name`; returns the control they leave."""
        self.control = getattr(self.handler, name)(self.args, self.state, self.control, **kwargs)
        return self.control

    def step_done(self, step: int, epoch: float, num_tokens: int):
        self.state.global_step, self.state.epoch, self.state.num_input_tokens_seen = step, epoch, num_tokens
        return self.event("on_step_end")

    def log(self, logs: dict) -> None:
        self.state.log_history.append(dict(logs))
        self.event("on_log", logs=logs)
