"""A GRPO script as a TRL user writes one: a model path, a datasets.Dataset, reward functions
with TRL's keyword signature, GRPOConfig arguments, a TrainerCallback and a LoRA peft_config.
tests/test_trl_script.py runs it twice, changing only its `from trl import` line (TRL's GRPOTrainer,
then g2rpo_fast's); written for this project, in TRL's spirit (not a copy of TRL's examples).

    python grpo_lora_script.py MODEL_DIR OUTPUT_DIR
"""
import json
import sys

import datasets
from peft import LoraConfig
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer  # the only line that changes

model_path, output_dir = sys.argv[1], sys.argv[2]


def length_reward(completions, **kwargs):
    """Longer answers, up to 16 characters, score more (a dense signal for a random model)."""
    return [min(len(c), 16) / 16 for c in completions]


def correct_sum(prompts, completions, answer, **kwargs):
    return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]


class StopEarly(TrainerCallback):
    """Ends the run after `at` steps, through TRL's TrainerControl; keeps what it was told."""

    def __init__(self, at):
        self.at, self.steps, self.logs, self.events = at, [], [], []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("train_begin")

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step >= self.at:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("train_end")


train_dataset = datasets.Dataset.from_list(
    [{"prompt": f"{a} + {b} = ", "answer": str(a + b)} for a in range(4) for b in range(4)])
stop = StopEarly(at=2)
training_args = GRPOConfig(
    output_dir=output_dir, per_device_train_batch_size=4, num_generations=4, max_completion_length=8,
    learning_rate=1e-4, logging_steps=1, max_steps=4, save_strategy="no", report_to="none", use_cpu=True,
    seed=0, gradient_checkpointing=False, bf16=False)
trainer = GRPOTrainer(
    model=model_path, reward_funcs=[length_reward, correct_sum], args=training_args, train_dataset=train_dataset,
    callbacks=[stop], peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
trainer.train()
trainable = sorted({name.split(".")[-3] for name, p in trainer.model.named_parameters() if p.requires_grad})
print("RESULT " + json.dumps({"steps": stop.steps, "events": stop.events, "logs": stop.logs,
                              "tokenizer": trainer.processing_class.name_or_path, "trainable": trainable}))
