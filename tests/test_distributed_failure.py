"""A rank that gets stuck must not hang the run: the process-group timeout (`dist_timeout_s`)
makes the waiting rank fail with a message naming itself and the timeout, and torchrun then
stops the stuck rank. (A rank that raises prints the same notice; torchrun stops the others.)
The timeout also bounds how long ranks wait for each other at start-up: 10 s leaves room for
the import-time skew of two processes on two busy cores."""
import json
import subprocess
import sys
import textwrap
import time

from helpers import child_env


def torchrun(script_text: str, tmp_path, timeout: float = 300):
    """Run `script_text` on 2 CPU ranks (gloo) with `tmp_path` as its argument: (process, seconds)."""
    script = tmp_path / "run.py"
    script.write_text(script_text)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=timeout,
                          env=child_env(OMP_NUM_THREADS="1"))
    return proc, time.monotonic() - start


SCRIPT = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(1)
    import pathlib
    from helpers import make_config, make_trainer

    trainer = make_trainer(make_config(pathlib.Path(sys.argv[1]), dist_timeout_s=10.0, max_steps=1))
    if trainer.dist.rank == 1:
        trainer.training_step = lambda: time.sleep(600)  # stuck: never reaches the step's collectives
    trainer.train()
""")


def test_stuck_rank_ends_the_run_within_the_timeout(tmp_path):
    proc, elapsed = torchrun(SCRIPT, tmp_path, timeout=200)
    assert proc.returncode != 0
    # without the timeout it would take the stuck rank's 600 s (the start-up alone takes 10-30 s on 2 busy cores)
    assert elapsed < 150, f"took {elapsed:.0f} s: the timeout did not end the run"
    assert "g2rpo-fast: rank 0/2 failed" in proc.stderr and "dist_timeout_s=10" in proc.stderr, proc.stderr[-3000:]


RAISING = textwrap.dedent("""
    import os, sys, torch
    torch.set_num_threads(1)
    from helpers import save_tiny_assets
    from g2rpo_fast.cli import main
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    if os.environ["RANK"] == "1":  # step 1 trains, step 2 fails on this rank only
        step = G2RPOTrainer.training_step
        def fail_at_step_2(self):
            if self.step >= 1:
                raise RuntimeError("reward server unreachable")
            return step(self)
        G2RPOTrainer.training_step = fail_at_step_2
    model, data = save_tiny_assets(os.path.join(sys.argv[1], f"assets{os.environ['RANK']}"))
    sys.exit(main(["train", "--model-name-or-path", model, "--dataset-name", data, "--output-dir",
                   os.path.join(sys.argv[1], "run"), "--num-generations", "2", "--per-device-train-batch-size", "4",
                   "--max-completion-length", "4", "--max-steps", "3", "--save-steps", "1", "--fsdp", "true",
                   "--progress-bar", "false", "--plots", "false", "--eval-at-end", "false",
                   "--dist-timeout-s", "120"]))
""")


def test_cli_under_torchrun_fsdp_then_a_raising_rank_exits_at_once(tmp_path):
    """`g2rpo-fast train` under torchrun with `--fsdp true`: step 1 writes a sharded checkpoint
    (DCP shards, one state file per rank, the manifest) and rank 0 alone writes metrics. Then
    rank 1 raises in step 2: it leaves without the teardown barrier (rank 0 waits in the step's
    collective, not there), so torchrun stops the run long before `dist_timeout_s`; with the
    barrier both would sit out the 120 s."""
    proc, elapsed = torchrun(RAISING, tmp_path)
    assert proc.returncode != 0
    assert "g2rpo-fast: rank 1/2 failed: RuntimeError: reward server unreachable" in proc.stderr, proc.stderr[-3000:]
    assert elapsed < 100, f"took {elapsed:.0f} s: the failing rank waited for the others"
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows] == [1]  # one writer, not one per rank
    ckpt = run / "checkpoint-1"
    assert (ckpt / "checkpoint_manifest.json").is_file() and (ckpt / "dcp").is_dir()
    assert {p.name for p in ckpt.glob("rank*_state.pt")} == {"rank0_state.pt", "rank1_state.pt"}


CHECKPOINT = textwrap.dedent("""
    import json, os, pathlib, sys, torch
    torch.set_num_threads(1)
    from helpers import make_config, make_trainer

    rank = os.environ["RANK"]
    if rank == "1":  # this rank's own shard file cannot be written (a full or read-only disk)
        real_save = torch.save
        def save(obj, f, *a, **k):
            if str(f).endswith("rank1_state.pt"):
                raise OSError("Read-only file system")
            return real_save(obj, f, *a, **k)
        torch.save = save
    trainer = make_trainer(make_config(pathlib.Path(sys.argv[1]), fsdp=True, save_steps=1, max_steps=1,
                                       dist_timeout_s=60.0))
    try:
        trainer.train()
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    pathlib.Path(sys.argv[1], f"error{rank}.json").write_text(json.dumps(error))
    trainer.close(failed=error is not None)
""")


def test_sharded_checkpoint_failure_on_one_rank_reaches_every_rank(tmp_path):
    """One rank fails to write its part of a sharded checkpoint: every rank raises (none goes
    on into the full-model gather or the next step alone, so nothing waits for a timeout), the
    checkpoint is not kept and no temporary directory is left."""
    proc, elapsed = torchrun(CHECKPOINT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = [json.loads((tmp_path / f"error{r}.json").read_text()) for r in (0, 1)]
    assert errors[1] == "OSError: Read-only file system"
    assert errors[0] == "RuntimeError: another rank failed while writing checkpoint-1; it was not kept"
    run = tmp_path / "run"
    assert not (run / "checkpoint-1").exists() and not list(run.glob(".tmp-checkpoint*"))
    assert elapsed < 55, f"took {elapsed:.0f} s: a rank waited for the 60 s timeout"
