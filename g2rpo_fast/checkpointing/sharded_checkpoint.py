"""Checkpoints of an FSDP run: every rank writes its shards (torch.distributed.checkpoint, DCP).

`checkpoint-N/` of a sharded run holds
- `dcp/`: the model's and AdamW's sharded state dicts (DCP files, one per rank, plus `.metadata`);
- `trainer_state.pt` (rank 0): scheduler, guidance controller, data position, step, world size;
- `rank{r}_state.pt` (each rank): that rank's RNG states (CPU, current CUDA device, python,
  numpy) and its pending roll-outs;
- the tokenizer, the model's `config.json` and `g2rpo_config.json`;
- the final checkpoint also the whole model via `save_pretrained` (rank 0 export), so that
  `g2rpo-fast eval` reads it as any other checkpoint.
It is as atomic as a single-process checkpoint (`checkpoint.py`): every rank writes into the same
`.tmp-checkpoint-*` directory (rank 0 makes it and tells the others; several nodes need a shared
file system), then, after a barrier, rank 0 writes the SHA-256 manifest over all files (DCP's
included) and renames the directory into place.

Resume onto another world size (tested: 2 ranks -> 1 process, `tests/test_distributed_fsdp.py`):
DCP reshards the model and optimizer state on load, and the scheduler, guidance controller and
data position are global (keep the global batch: per-device batch x ranks); the per-rank RNG states cannot
map (a new rank takes a fresh state, with a warning: the run continues, not bit for bit), and
pending roll-outs (num_iterations > 1, saved mid-batch) belong to the ranks that generated
them, so such a checkpoint is refused on another world size.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import torch

from .checkpoint import (
    STATE_FILE,
    TMP_PREFIX,
    NoSpaceLeftError,
    _out_of_space,
    _swap_into_place,
    prune_checkpoints,
    rng_state,
    set_rng_state,
)
from .manifest import write_manifest

DCP_DIR = "dcp"


def is_sharded_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(path, DCP_DIR))


def _rank_file(rank: int) -> str:
    return f"rank{rank}_state.pt"


def _state_dicts(model, optimizer):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}


def _broadcast(value):
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded_checkpoint(output_dir: str, step: int, *, model, optimizer, tokenizer, global_state: dict,
                            rank_state: dict, config, dist, save_total_limit=None, export: bool = False) -> str:
    """Every rank calls it. `global_state`: rank 0's (scheduler, guidance, data position);
    `rank_state`: this rank's (pending roll-outs); RNG states are added here."""
    import torch.distributed.checkpoint as dcp

    final = os.path.join(output_dir, f"checkpoint-{step}")
    tmp, error = None, None
    if dist.rank == 0:
        try:
            os.makedirs(output_dir, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{step}-", dir=output_dir)
        except Exception as exc:  # the others learn it from the broadcast (None), not a timeout
            error = exc
    tmp = _broadcast(tmp)
    if tmp is None:
        _raise(error or RuntimeError(f"rank 0 could not create checkpoint-{step}'s directory"), output_dir, step)

    def each_rank_writes():
        dcp.save(_state_dicts(model, optimizer), checkpoint_id=os.path.join(tmp, DCP_DIR))
        torch.save({**rank_state, "rng": rng_state()}, os.path.join(tmp, _rank_file(dist.rank)))

    def rank0_writes():
        full = full_model_state(model) if export else None  # a collective: every rank takes part
        if dist.rank == 0:
            torch.save({**global_state, "step": step, "world_size": dist.world_size, "sharded": True},
                       os.path.join(tmp, STATE_FILE))
            model.config.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if config is not None:
                config.save_json(os.path.join(tmp, "g2rpo_config.json"))
            if full is not None:
                model.save_pretrained(tmp, state_dict=full)
            write_manifest(tmp, step)
            _swap_into_place(tmp, final, step)
            if save_total_limit:
                prune_checkpoints(output_dir, save_total_limit, keep=final)

    # Every phase ends with the ranks agreeing whether any failed, so no rank enters a
    # collective (DCP's, the full-model gather) that another has skipped, and all raise together.
    failed = False
    for phase in (each_rank_writes, rank0_writes):
        try:
            phase()
        except Exception as exc:
            error = exc
        failed = _broadcast_any(error is not None, dist)
        if failed:
            break
    if dist.rank == 0 and os.path.isdir(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    if error is not None:
        _raise(error, output_dir, step)
    if failed:
        raise RuntimeError(f"another rank failed while writing checkpoint-{step}; it was not kept")
    return final


def _raise(error: BaseException, output_dir: str, step: int):
    if _out_of_space(error):
        raise NoSpaceLeftError(os.path.abspath(output_dir), f"while writing checkpoint-{step}: {error}") from error
    raise error


def _broadcast_any(flag: bool, dist) -> bool:
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    if dist.backend == "nccl":
        t = t.cuda()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def full_model_state(model) -> dict:
    """The whole model's state dict, gathered to CPU on rank 0 (empty elsewhere); every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_sharded_checkpoint(path: str, *, model, optimizer, dist) -> dict:
    """Load the model and optimizer (resharded by DCP to this world size), this rank's RNG; returns
    the global trainer state with this rank's pending roll-outs under `rank_state`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)
    saved_world = int(state.get("world_size", 1))
    rank_path = os.path.join(path, _rank_file(dist.rank))
    rank_state = torch.load(rank_path, map_location="cpu", weights_only=False) if os.path.isfile(rank_path) else {}
    if saved_world != dist.world_size:
        pending = _any_pending(path, saved_world)
        if pending:
            raise ValueError(f"`resume`: {path} was saved by {saved_world} ranks with roll-outs still to train on "
                             f"(num_iterations > 1); it resumes only on {saved_world} ranks")
        rank_state.pop("buffer", None)
        warnings.warn(f"resume: {path} was saved by {saved_world} ranks, this run has {dist.world_size}: model and "
                      f"optimizer are resharded, RNG states do not map (the run continues, not bit for bit)",
                      RuntimeWarning, stacklevel=2)
    sds = _state_dicts(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP says it assumes so, which is the point
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load(sds, checkpoint_id=os.path.join(path, DCP_DIR))
    set_state_dict(model, optimizer, model_state_dict=sds["model"], optim_state_dict=sds["optimizer"])
    rng = rank_state.pop("rng", None)
    if saved_world == dist.world_size and rng is not None:
        set_rng_state(rng)
    state["rank_state"] = rank_state
    return state


def _any_pending(path: str, world: int) -> bool:
    for r in range(world):
        f = os.path.join(path, _rank_file(r))
        if os.path.isfile(f) and torch.load(f, map_location="cpu", weights_only=False).get("buffer") is not None:
            return True
    return False
