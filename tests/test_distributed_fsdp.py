"""DDP and FSDP2 under torchrun (gloo, 2 CPU processes) against one process on the same global
batch (this replaces the former plain 2-process DDP test: the DDP run covers it). One launch
(`fsdp_child.py`) runs DDP with rows cut unevenly across ranks (it used to hang), FSDP2 with a
sharded checkpoint every step, and FSDP2 resumed from a copy of its checkpoint-1; this process
then trains the reference on the whole global batch."""
import json
import subprocess
import sys

import pytest
import torch
from fsdp_child import BASE
from helpers import TESTS_DIR, child_env, fixed_rollouts, make_config, make_trainer


def _once(tmp_path_factory, worker_id, name, compute):
    """`compute(dir)` once per test session, even when pytest-xdist spreads this module's tests
    over several workers (they share the session's base directory and take turns on a lock; the
    launch keeps both cores busy meanwhile, so the waiting worker costs no CI time)."""
    if worker_id == "master":
        path = tmp_path_factory.mktemp(name)
        compute(path)
        return path
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent
    path = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (path / "done").exists():
            path.mkdir(exist_ok=True)
            compute(path)
            (path / "done").touch()
    return path


def _launch(out):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           f"{TESTS_DIR}/fsdp_child.py", str(out)],
                          capture_output=True, text=True, timeout=240, env=child_env(OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]  # never ignored: an abort at exit fails here too


def _train_single(out):
    """One process, twice the per-device batch: the same prompts and completions as both ranks."""
    trainer = make_trainer(make_config(out, **BASE, per_device_train_batch_size=16))
    fixed_rollouts(trainer)
    history = trainer.train()
    torch.save(({key: [m[key] for m in history] for key in ("loss", "grad_norm")}, trainer.model.state_dict()),
               out / "single.pt")


@pytest.fixture(scope="module")
def launched(tmp_path_factory, worker_id):
    out = _once(tmp_path_factory, worker_id, "fsdp_launch", _launch)
    return out, json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def single(tmp_path_factory, worker_id):
    return torch.load(_once(tmp_path_factory, worker_id, "fsdp_single", _train_single) / "single.pt")


def _assert_weights_close(got: dict, want: dict):
    assert got.keys() == want.keys()
    for k in want:
        # AdamW (lr 1e-2) turns fp32 rounding in near-zero gradients into updates of ~1e-6; the
        # updates themselves are ~1e-2
        torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=2e-5, msg=k)


def test_ddp_uneven_row_splits_finish_and_match_one_process(launched, single):
    out, result = launched
    ddp = result["ddp"]
    # the ranks cut some micro-batch's row into different numbers of forwards (the old hang)
    assert any(a != b for a, b in zip(sum(ddp["pieces"][0], []), sum(ddp["pieces"][1], [])))
    assert ddp["step"] == 2 and ddp["position"] == 2 * 2 * 2 * 2  # steps x micro-batches x prompts x ranks
    assert ddp["checksums"][0] == ddp["checksums"][1]  # DDP kept the replicas identical
    rows = [json.loads(x) for x in (out / "ddp" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone wrote metrics.jsonl
    assert (out / "ddp" / "checkpoint-2" / "model.safetensors").is_file()
    # the loss (dapo: normalised by the global token count) and the gradient's scale (its norm,
    # before clipping; AdamW alone would hide a wrong scale) are the one-process ones
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(ddp[key], single[0][key], rtol=1e-5, atol=1e-6)
    _assert_weights_close(torch.load(out / "ddp.pt"), single[1])


def test_fsdp_matches_one_process_after_two_steps(launched, single):
    out, result = launched
    fsdp = result["fsdp"]
    assert fsdp["sharded"]  # the fp32 master weights are DTensor shards
    assert fsdp["gathered_for_rollouts"] == [True] * 2  # whole weights for every roll-out call (one per step)
    assert any(a != b for a, b in zip(sum(fsdp["pieces"][0], []), sum(fsdp["pieces"][1], [])))
    # the loss (dapo: normalised by the global token count) and the gradient's scale (its norm,
    # before clipping; AdamW alone would hide a wrong scale) are the one-process ones
    for key in ("loss", "grad_norm"):
        torch.testing.assert_close(fsdp[key], single[0][key], rtol=1e-5, atol=1e-6)
    _assert_weights_close(torch.load(out / "fsdp.pt"), single[1])


def test_fsdp_resume_from_sharded_checkpoint_equals_uninterrupted(launched):
    out, result = launched
    assert result["resume"]["step"] == 2 and result["resume"]["position"] == result["fsdp"]["position"]
    assert result["resume"]["loss"] == result["fsdp"]["loss"]
    got, want = torch.load(out / "resume.pt"), torch.load(out / "fsdp.pt")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    from g2rpo_fast.checkpointing.manifest import read_manifest, verify_checkpoint

    ckpt = out / "fsdp" / "checkpoint-1"
    assert verify_checkpoint(str(ckpt)) is None
    files = read_manifest(str(ckpt))["files"]
    assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp", "rank0_state.pt", "rank1_state.pt"} <= set(files)


@pytest.mark.parametrize("how", ["at the end of training", "g2rpo-fast export"])
def test_fsdp_export_loads_with_transformers_and_gives_the_trained_logits(launched, single, how, tmp_path):
    """The final checkpoint's rank-0 export, and the CLI's export of its DCP shards, load with
    transformers and give the logits of the model trained in one process."""
    from transformers import AutoModelForCausalLM

    from g2rpo_fast.cli import main

    out, _ = launched
    path = out / "fsdp" / "checkpoint-2"
    if how == "g2rpo-fast export":
        assert main(["export", str(path), str(tmp_path / "hf")]) == 0
        path = tmp_path / "hf"
        assert main(["export", str(out / "fsdp" / "checkpoint-1"), str(path)]) == 2  # not an empty directory
    exported = AutoModelForCausalLM.from_pretrained(path).float().eval()
    reference = make_trainer(make_config(tmp_path, "ref", **BASE)).model
    reference.load_state_dict(single[1])
    ids = torch.tensor([[5, 9, 12, 7, 30, 4, 11]])
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, reference.eval()(ids).logits, rtol=1e-4, atol=1e-5)


def test_sharded_checkpoint_resumes_in_one_process(launched, single, tmp_path):
    """Another world size (2 ranks -> 1 process, twice the per-device batch: the same global
    batch): DCP reshards model and AdamW state; the run continues (with a warning that the
    per-rank RNG states do not map) to the weights of the uninterrupted one-process run."""
    import shutil

    out, _ = launched
    run = tmp_path / "one"
    shutil.copytree(out / "fsdp" / "checkpoint-1", run / "checkpoint-1")
    trainer = make_trainer(make_config(tmp_path, "one", per_device_train_batch_size=16, **BASE))
    fixed_rollouts(trainer)
    with pytest.warns(RuntimeWarning, match="saved by 2 ranks, this run has 1"):
        history = trainer.train(resume_from_checkpoint=True)
    # step 1's metrics come back from the checkpoint (only the checkpoint was copied here)
    assert trainer.step == 2 and [m["step"] for m in history] == [1, 2]
    torch.testing.assert_close(history[-1]["loss"], single[0]["loss"][-1], rtol=1e-5, atol=1e-6)
    _assert_weights_close(trainer.model.state_dict(), single[1])

