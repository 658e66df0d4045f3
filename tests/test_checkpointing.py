"""The checkpointing package: the manifest defines completeness, resume falls back past corrupt
ones, re-saving a step is atomic, leftovers are cleaned, a full disk says so; what makes an
output directory used (`run_dir.py`)."""
import errno
import hashlib
import json
import os

import pytest
import torch
from helpers import tiny_model_and_tokenizer

from g2rpo_fast.checkpointing import checkpoint as ck


@pytest.fixture(scope="module")
def tiny():
    return tiny_model_and_tokenizer(seed=0)


def save(out, step, tiny, marker=None):
    model, tok = tiny
    return ck.save_checkpoint(str(out), step, model, tok, {"marker": step if marker is None else marker})


def leftovers(out):
    return [n for n in os.listdir(out) if n.startswith(".tmp")]


def test_manifest_lists_every_file_with_its_sha256(tmp_path, tiny):
    path = save(tmp_path, 1, tiny)
    with open(os.path.join(path, ck.MANIFEST_FILE)) as fh:
        manifest = json.load(fh)
    on_disk = sorted(n for n in os.listdir(path) if n != ck.MANIFEST_FILE)
    assert sorted(manifest["files"]) == on_disk and "model.safetensors" in on_disk and ck.STATE_FILE in on_disk
    for name, entry in manifest["files"].items():
        blob = open(os.path.join(path, name), "rb").read()
        assert entry == {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    assert manifest["step"] == 1 and ck.verify_checkpoint(path) is None
    assert not leftovers(tmp_path)


def _truncate(path, name):
    full = os.path.join(path, name)
    with open(full, "r+b") as fh:
        fh.truncate(os.path.getsize(full) // 2)


def _flip_byte(path, name):
    full = os.path.join(path, name)
    with open(full, "r+b") as fh:
        fh.seek(os.path.getsize(full) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))


CORRUPTIONS = {
    "truncated safetensors": (lambda p: _truncate(p, "model.safetensors"), "model.safetensors has"),
    "truncated trainer_state.pt": (lambda p: _truncate(p, ck.STATE_FILE), "trainer_state.pt has"),
    "missing model file": (lambda p: os.remove(os.path.join(p, "model.safetensors")), "model.safetensors is missing"),
    "flipped byte, same size": (lambda p: _flip_byte(p, "model.safetensors"), "SHA-256"),
    "no manifest (save never finished)": (lambda p: os.remove(os.path.join(p, ck.MANIFEST_FILE)), "no checkpoint_"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_resume_skips_a_corrupt_latest_checkpoint(tmp_path, tiny, corruption):
    save(tmp_path, 1, tiny)
    latest = save(tmp_path, 2, tiny)
    damage, reason = CORRUPTIONS[corruption]
    damage(latest)
    assert reason in ck.verify_checkpoint(latest)
    path, skipped = ck.find_resumable_checkpoint(str(tmp_path))
    assert path == os.path.join(str(tmp_path), "checkpoint-1")
    assert [name for name, _ in skipped] == ["checkpoint-2"] and reason in skipped[0][1]


def test_no_checkpoint_verifies(tmp_path, tiny):
    os.remove(os.path.join(save(tmp_path, 1, tiny), "model.safetensors"))
    path, skipped = ck.find_resumable_checkpoint(str(tmp_path))
    assert path is None and skipped == [("checkpoint-1", "model.safetensors is missing")]


def _marker(path):
    return ck.load_trainer_state(path)["marker"]


def test_resave_replaces_the_step_and_leaves_nothing_behind(tmp_path, tiny):
    save(tmp_path, 2, tiny, marker="first")
    path = save(tmp_path, 2, tiny, marker="second")
    assert _marker(path) == "second" and ck.verify_checkpoint(path) is None
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2"]


@pytest.mark.parametrize("killed", [False, True])
def test_resave_interrupted_between_the_renames_is_recovered(tmp_path, tiny, monkeypatch, killed):
    """The old checkpoint-2 has been renamed aside, the new one is not in place yet. An
    exception (cleanup runs) leaves the old copy; a kill (no cleanup) leaves both copies. The
    next start puts back a complete checkpoint-2: the new copy when there is one."""
    save(tmp_path, 2, tiny, marker="old")
    real_replace = os.replace

    def crash_on_swap(src, dst):
        if os.path.basename(dst) == "checkpoint-2" and "-old-" not in src:
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash_on_swap)
    if killed:
        monkeypatch.setattr(ck.shutil, "rmtree", lambda *a, **k: None)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, tiny, marker="new")
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "checkpoint-2")
    assert len(leftovers(tmp_path)) == (2 if killed else 1)
    actions = ck.clean_partial_checkpoints(str(tmp_path))
    assert any(a.startswith("restored checkpoint-2") for a in actions)
    assert _marker(tmp_path / "checkpoint-2") == ("new" if killed else "old")
    assert ck.verify_checkpoint(str(tmp_path / "checkpoint-2")) is None
    assert not leftovers(tmp_path)


def test_leftover_partial_save_is_removed(tmp_path, tiny):
    save(tmp_path, 1, tiny)
    partial = tmp_path / ".tmp-checkpoint-2-abcd1234"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")  # killed before the manifest
    assert ck.clean_partial_checkpoints(str(tmp_path)) == [f"removed {partial.name} (left by an interrupted save)"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1472 vs 1366"),
], ids=["ENOSPC", "inline_container"])
def test_full_disk_names_the_directory_and_loses_nothing(tmp_path, tiny, monkeypatch, error):
    save(tmp_path, 1, tiny)

    def full_disk(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ck.NoSpaceLeftError) as info:
        save(tmp_path, 2, tiny)
    assert str(info.value).startswith(f"no space left on {os.path.abspath(tmp_path)}")
    assert info.value.errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]  # partial copy removed, earlier one intact
    assert ck.verify_checkpoint(str(tmp_path / "checkpoint-1")) is None


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "no")))
    with pytest.raises(PermissionError):
        save(tmp_path, 1, tiny)
    assert not leftovers(tmp_path)


def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path, tiny):
    for step in (1, 5, 6):
        save(tmp_path, step, tiny)
    model, tok = tiny
    ck.save_checkpoint(str(tmp_path), 3, model, tok, {"marker": 3}, save_total_limit=2)
    names = sorted(os.listdir(tmp_path))
    assert "checkpoint-3" in names and len(names) == 2


def test_what_makes_an_output_dir_used(tmp_path):
    from g2rpo_fast.checkpointing.run_dir import RunSetupError, check_output_dir, used_by_earlier_run

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "config.json").write_text("{}")
    assert used_by_earlier_run(str(out)) == []  # other files do not count
    check_output_dir(str(out))
    (out / "checkpoint-3").mkdir()
    assert used_by_earlier_run(str(out)) == ["checkpoint-3"]
    (out / "metrics.jsonl").write_text("")
    with pytest.raises(RunSetupError, match=r"already holds a run \(metrics.jsonl, checkpoint-3\)"):
        check_output_dir(str(out))
    check_output_dir(str(out), resume=True)
    check_output_dir(str(out), overwrite=True)
    with pytest.raises(RunSetupError, match="exclude each other"):
        check_output_dir(str(out), resume=True, overwrite=True)


@pytest.mark.parametrize("pending", [True, False])
def test_sharded_checkpoint_with_pending_rollouts_is_refused_on_another_world_size(tmp_path, pending):
    """Roll-outs still to train on (num_iterations > 1) belong to the ranks that generated them:
    on another world size such a checkpoint is refused before anything loads, never dropped
    silently. Without pending roll-outs it is accepted (the warning says what does not map)."""
    from types import SimpleNamespace

    from g2rpo_fast.checkpointing import sharded_checkpoint as sc

    path = tmp_path / "checkpoint-3"
    (path / sc.DCP_DIR).mkdir(parents=True)
    torch.save({"step": 3, "world_size": 2, "sharded": True}, path / ck.STATE_FILE)
    for rank in (0, 1):  # rank 1 holds the pending batch: every rank's file is looked at
        torch.save({"buffer": [{"samples": []}] if (pending and rank == 1) else None}, path / f"rank{rank}_state.pt")
    one_process = SimpleNamespace(rank=0, world_size=1, backend="gloo")
    if pending:
        with pytest.raises(ValueError, match="saved by 2 ranks with roll-outs still to train on"):
            sc.load_sharded_checkpoint(str(path), model=None, optimizer=None, dist=one_process)
    else:  # past the check: it goes on to load the (absent) DCP shards
        with pytest.warns(RuntimeWarning, match="saved by 2 ranks, this run has 1"), pytest.raises(Exception) as info:
            sc.load_sharded_checkpoint(str(path), model=None, optimizer=None, dist=one_process)
        assert "roll-outs still to train on" not in str(info.value)
