"""A rank that gets stuck must not hang the run: the process-group timeout (`dist_timeout_s`)
makes the waiting rank fail with a message naming itself and the timeout, and torchrun then
stops the stuck rank. (A rank that raises prints the same notice; torchrun stops the others.)
The timeout also bounds how long ranks wait for each other at start-up: 10 s leaves room for
the import-time skew of two processes on two busy cores."""
import subprocess
import sys
import textwrap
import time

from helpers import child_env

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
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, timeout=200,
                          env=child_env(OMP_NUM_THREADS="1"))
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    # without the timeout it would take the stuck rank's 600 s (the start-up alone takes 10-30 s on 2 busy cores)
    assert elapsed < 150, f"took {elapsed:.0f} s: the timeout did not end the run"
    assert "g2rpo-fast: rank 0/2 failed" in proc.stderr and "dist_timeout_s=10" in proc.stderr, proc.stderr[-3000:]
