"""Several processes under `torchrun`: the process group and how the policy is spread over it.

- `process_group.py`: set-up and teardown (nccl on CUDA, gloo on CPU, a timeout so a stuck rank
  ends the run), step metrics averaged over ranks, the line a failing rank prints;
- `parallel.py`: the packed policy (`packing.policy_forward.PackedPolicy`) wrapped in DDP or
  sharded in place by FSDP2, whole weights gathered for the roll-out engine, and every rank
  making as many model calls as the others.
One process is the case with `world_size == 1`: everything here is then a no-op. How a run
computes on its device (dtype, attention, Liger) is not decided here but in
`g2rpo_fast/runtime.py`, which a one-process CPU run needs as much as a multi-GPU one.
"""
