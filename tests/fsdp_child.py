"""Run under `torchrun --nproc_per_node 2` by tests/test_distributed_fsdp.py: several trainer runs in
one launch (CI time), each on fixed roll-outs (`fixed_rollouts`) so that one process on the
global batch sees the same completions. Writes `<out>/result.json` (rank 0) and the final
weights of each run as `<out>/<run>.pt`.

Runs: `ddp` (row split 32 tokens: ranks cut their rows into different numbers of forwards),
`fsdp` (FSDP2, same batch, checkpoint every step), `resume` (FSDP2 from a copy of fsdp's
checkpoint-1, as if stopped after step 1).
"""
import json
import os
import shutil
import sys

import torch

torch.set_num_threads(1)
from helpers import fixed_rollouts, make_config, tiny_dataset, tiny_model_and_tokenizer  # noqa: E402

from g2rpo_fast.trainer.trainer import G2RPOTrainer  # noqa: E402

FSDP_RUN = dict(fsdp=True, save_steps=1, save_total_limit=None)


def run(out, name, resume=False, **kw):
    cfg = make_config_for(out, name, **kw)
    model, tok = tiny_model_and_tokenizer(seed=0)
    trainer = G2RPOTrainer(cfg, model=model, tokenizer=tok, train_dataset=tiny_dataset(16))
    gathered = fixed_rollouts(trainer)
    pieces = []
    train_micro_batches = trainer.train_micro_batches

    def spy(batches):
        pieces.append([len(b.packed.row_splits) + 1 for b in batches])
        return train_micro_batches(batches)

    trainer.train_micro_batches = spy
    history = trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.sharded:
        from g2rpo_fast.checkpointing.sharded_checkpoint import full_model_state

        weights = full_model_state(trainer.model)
        sharded = all(type(p).__name__ == "DTensor" for p in trainer.model.parameters())
    else:
        weights, sharded = trainer.model.state_dict(), False
    checksum = float(sum(v.double().sum() for v in weights.values())) if not sharded else None
    all_pieces, checksums = [None] * trainer.dist.world_size, [None] * trainer.dist.world_size
    torch.distributed.all_gather_object(all_pieces, pieces)
    torch.distributed.all_gather_object(checksums, checksum)
    if trainer.is_main:
        torch.save(weights, os.path.join(out, f"{name}.pt"))
    return {"loss": [m["loss"] for m in history], "grad_norm": [m["grad_norm"] for m in history],
            "pieces": all_pieces, "sharded": sharded,
            "gathered_for_rollouts": gathered, "step": trainer.step, "position": trainer.data_position,
            "checksums": checksums}


def make_config_for(out, name, **kw):
    import pathlib

    return make_config(pathlib.Path(out), name, **{**BASE, **kw})


BASE = dict(loss_type="dapo", packed_row_tokens=32, prefix_shared_forward="false", gradient_accumulation_steps=2,
            max_grad_norm=1.0, lr_scheduler_type="constant")

if __name__ == "__main__":
    out = sys.argv[1]
    result = {"ddp": run(out, "ddp")}
    result["fsdp"] = run(out, "fsdp", **FSDP_RUN)
    rank = torch.distributed.get_rank()
    if rank == 0:  # "stopped after step 1": the resumed run starts from a copy of checkpoint-1
        os.makedirs(os.path.join(out, "resume"))
        shutil.copytree(os.path.join(out, "fsdp", "checkpoint-1"), os.path.join(out, "resume", "checkpoint-1"))
        with open(os.path.join(out, "fsdp", "metrics.jsonl")) as src, \
                open(os.path.join(out, "resume", "metrics.jsonl"), "w") as dst:
            dst.write(src.readline())
    torch.distributed.barrier()
    result["resume"] = run(out, "resume", resume=True, **FSDP_RUN)
    if rank == 0:
        with open(os.path.join(out, "result.json"), "w") as fh:
            json.dump(result, fh)
    from g2rpo_fast.distributed.process_group import DistState, teardown_distributed

    teardown_distributed(DistState(rank=rank, world_size=2))
