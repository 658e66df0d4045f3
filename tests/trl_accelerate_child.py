"""Run by `tests/test_integrations_trl_accelerate.py` under `accelerate launch --cpu --num_processes 2`:
two steps of GuidedGRPOTrainer (guided, fused loss, DDP over gloo) with one prompt per step, so
that each group of G = 4 spans both processes. Each rank writes what it saw to rank<i>.json."""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from trl_helpers import guided_config, load_policy, solution_dataset

from g2rpo_fast.integrations.trl import GuidedGRPOTrainer

PLANTED = [0.5, 0.25]  # ℓ: 4, 4, then 8 after the second batch


def planted(prompts, completions, trainer_state, **kw):
    return [PLANTED[trainer_state.global_step]] * len(prompts)


class Recorder:
    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, completions, solution, **kw):
        self.calls.append([[c, s] for c, s in zip(completions, solution)])
        return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def main(out):
    model, tok = load_policy(os.path.join(out, "policy"))
    recorder = Recorder()
    args = guided_config(os.path.join(out, "run"), per_device_train_batch_size=2, guidance_ratio=0.5,
                         guidance_initial_length=4, guidance_max_length=8, guidance_reward="planted",
                         reward_weights=[0.0, 1.0], use_g2rpo_loss=True)
    trainer = GuidedGRPOTrainer(model=model, reward_funcs=[planted, recorder], args=args,
                                train_dataset=solution_dataset(), processing_class=tok)
    trainer.train()
    digest = hashlib.sha256()
    for p in trainer.model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump(dict(world=trainer.accelerator.num_processes, calls=recorder.calls, weights=digest.hexdigest(),
                       guidance=trainer.guidance.state_dict(),
                       logs=[h for h in trainer.state.log_history if "loss" in h]), fh)


if __name__ == "__main__":
    main(sys.argv[1])
