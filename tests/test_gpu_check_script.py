"""scripts/gpu_check.sh fits the GPU machine it will get (one command <= 10 min, ~15 min of device
time, <= 64 MiB carried, no registry): `--plan` says so as one JSON line, and the wheel list of
scripts/collect_gpu_wheels.sh is pinned."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _script(*args, **kw):
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, **kw)


def test_plan_fits_the_gpu_machine(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "a-1.0-py3-none-any.whl").write_bytes(b"\0" * (3 << 20))  # 3 MiB, as collected
    proc = _script("--plan", str(wheels))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [s["stage"] for s in plan["stages"]] == [1, 2]
    assert plan["time_cap_s"] == sum(s["time_cap_s"] for s in plan["stages"]) <= 540
    for stage in plan["stages"]:
        assert stage["time_cap_s"] <= 270  # 4.5 min
        assert sum(step["cap_s"] for step in stage["steps"]) <= stage["time_cap_s"]
    assert {step["name"] for step in plan["stages"][1]["steps"]} == {"loss", "fused_linear", "rollout", "e2e_vs_trl"}
    assert plan["wheels_mib"] == pytest.approx(3.0, abs=0.01)
    assert plan["carry_mib"] == pytest.approx(plan["tree_mib"] + plan["wheels_mib"], abs=0.02)
    assert plan["carry_mib"] <= 60


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_stages_refuse_without_cuda_and_bad_arguments():
    proc = _script("--stage", "1")
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr
    assert _script("--stage", "3").returncode == 2
    assert _script().returncode == 2


def test_collected_wheels_are_pinned():
    text = (ROOT / "scripts" / "collect_gpu_wheels.sh").read_text()
    packages = re.search(r"PACKAGES=\(([^)]*)\)", text)[1].split()
    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
    pins = {norm(line.split("==")[0]) for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    assert {"datasets", "liger-kernel", "trl", "math-verify"} <= {norm(p) for p in packages}
    assert {norm(p) for p in packages} <= pins
