"""GuidedGRPOTrainer under `accelerate launch` with two CPU processes (gloo DDP): two steps, groups
that span both processes (rank 0 holds places 0-1 of each group, rank 1 places 2-3), the guided
completions where they belong, the same ℓ on both ranks and the same weights after DDP's
gradient averaging through the fused loss's forward (`trl_accelerate_child.py`).

`--multi_gpu` is accelerate's torchrun launcher (its `--cpu` launcher needs mpirun for more than
one process); the config's `use_cpu=True` keeps both processes on the CPU, over gloo."""
import json
import os
import subprocess
import sys

import pytest
from helpers import TESTS_DIR, child_env
from trl_helpers import save_tiny_policy

pytest.importorskip("trl", reason="trl is the optional extra this test covers (pip install 'g2rpo_fast[trl]')")


def test_two_processes_run_two_guided_steps(tmp_path):
    save_tiny_policy(tmp_path)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                           f"{TESTS_DIR}/trl_accelerate_child.py", str(tmp_path)],
                          capture_output=True, text=True, timeout=400,
                          env=child_env(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                                        HF_HOME=str(tmp_path / "hf_home")))
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    for rank, seen in enumerate(ranks):
        assert len(seen["calls"]) == 2 and [len(c) for c in seen["calls"]] == [2, 2]  # 2 steps x 2 samples
        for call in seen["calls"]:
            for completion, solution in call:
                guided = completion.startswith(solution[:4])
                assert guided == (rank == 0), (rank, completion, solution)  # places 0, 1 of G = 4: rank 0
        assert [row["guidance_length"] for row in seen["logs"]] == [4, 4]
        assert all(row["loss"] == row["loss"] for row in seen["logs"])  # not NaN
    assert ranks[0]["guidance"] == ranks[1]["guidance"] and ranks[0]["guidance"]["length"] == 8
    assert ranks[0]["weights"] == ranks[1]["weights"]
