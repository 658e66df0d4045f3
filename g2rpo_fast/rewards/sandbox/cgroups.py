"""One cgroup per sandbox run: total memory and process count for all its processes.

Per-process limits (RLIMIT_AS) miss memory that no process maps (memfd, tmpfs, pipes) and
multiply with every fork; a cgroup counts all of it for the whole run and can kill every
process in it. Supports cgroup v1 (separate ``memory`` and ``pids`` hierarchies) and v2
(unified); the run's cgroup is created below the trainer's own, so it also counts toward any
limit the trainer has. Creating one needs write access there (root, or a delegated subtree);
when it fails, ``SandboxCgroup.create`` raises ``CgroupUnavailable`` with the reason and the
caller falls back to per-process limits (see ``run.py``).
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import time

PREFIX = "g2rpo_sbx_"
_CONTROLLERS = ("memory", "pids")


class CgroupUnavailable(RuntimeError):
    pass


@dataclasses.dataclass
class CgroupStats:
    memory_peak_bytes: int | None = None
    pids_peak: int | None = None
    oom_kills: int | None = None


def _own_hierarchies() -> dict[str, str]:
    """{"memory": dir, "pids": dir} (v1) or {"unified": dir} (v2): this process's cgroup dirs."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
            for name in (controllers.split(",") if controllers else ["unified"] if hierarchy == "0" else []):
                own[name] = path
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, (fstype, _source, options) = left.split(), right.split()[:3]
            root, mountpoint = fields[3], fields[4]
            if fstype == "cgroup2":
                names = ["unified"]
            elif fstype == "cgroup":
                names = [c for c in _CONTROLLERS if c in options.split(",")]
            else:
                continue
            for name in names:
                path = own.get(name)
                if path is None or name in found:
                    continue
                relative = path[len(root):] if root != "/" and path.startswith(root) else path
                directory = os.path.join(mountpoint, relative.lstrip("/"))
                if os.path.isdir(directory):
                    found[name] = directory
    return found


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_int(path: str, key: str | None = None) -> int | None:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if key is None:
        return int(text.strip()) if text.strip().isdigit() else None
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return None


def _sweep_stale(parent: str) -> None:
    # Cgroups left by a trainer that died mid-run (empty ones only: rmdir refuses the rest).
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return
    for name in names:
        owner = name[len(PREFIX):].split("_")[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            try:
                os.rmdir(os.path.join(parent, name))
            except OSError:
                pass


_swept: set[str] = set()


class SandboxCgroup:
    """The cgroup(s) of one run: ``procs_files`` to join, ``kill_all``, ``stats``, ``remove``."""

    def __init__(self, dirs: dict[str, str], version: int):
        self.dirs = dirs  # controller ("memory", "pids" or "unified") -> directory
        self.version = version

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> SandboxCgroup:
        hierarchies = _own_hierarchies()
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        if "unified" in hierarchies and not all(c in hierarchies for c in _CONTROLLERS):
            try:
                return cls._create_v2(hierarchies["unified"], name, memory_bytes, max_pids)
            except (OSError, CgroupUnavailable) as exc:
                v2_reason = f"cgroup v2 at {hierarchies['unified']}: {exc}"
        else:
            v2_reason = "no cgroup v2 hierarchy"
        if all(c in hierarchies for c in _CONTROLLERS):
            return cls._create_v1(hierarchies, name, memory_bytes, max_pids)
        raise CgroupUnavailable(f"no writable memory+pids cgroup ({v2_reason}; cgroup v1 controllers found: "
                                f"{sorted(set(hierarchies) & set(_CONTROLLERS)) or 'none'})")

    @classmethod
    def _create_v1(cls, hierarchies, name, memory_bytes, max_pids) -> SandboxCgroup:
        made = cls({}, 1)
        try:
            for controller in _CONTROLLERS:
                parent = hierarchies[controller]
                if parent not in _swept:
                    _swept.add(parent)
                    _sweep_stale(parent)
                path = os.path.join(parent, name)
                os.mkdir(path)
                made.dirs[controller] = path
            _write(os.path.join(made.dirs["memory"], "memory.limit_in_bytes"), str(memory_bytes))
            memsw = os.path.join(made.dirs["memory"], "memory.memsw.limit_in_bytes")
            if os.path.exists(memsw):  # swap counted too, else memory could move to swap
                try:
                    _write(memsw, str(memory_bytes))
                except OSError:  # swap accounting disabled: nothing to limit
                    pass
            _write(os.path.join(made.dirs["pids"], "pids.max"), str(max_pids))
        except OSError as exc:
            made.remove()
            raise CgroupUnavailable(f"cgroup v1 {sorted(hierarchies.items())}: {exc}") from None
        return made

    @classmethod
    def _create_v2(cls, parent, name, memory_bytes, max_pids) -> SandboxCgroup:
        if parent not in _swept:
            _swept.add(parent)
            _sweep_stale(parent)
        path = os.path.join(parent, name)
        os.mkdir(path)
        made = cls({"unified": path}, 2)
        try:
            with open(os.path.join(path, "cgroup.controllers")) as f:
                enabled = f.read().split()
            if not all(c in enabled for c in _CONTROLLERS):
                # Fails with EBUSY when the parent holds processes itself (v2's "no internal
                # processes" rule); a delegated, empty parent accepts it.
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
            _write(os.path.join(path, "memory.max"), str(memory_bytes))
            if os.path.exists(os.path.join(path, "memory.swap.max")):
                _write(os.path.join(path, "memory.swap.max"), "0")
            _write(os.path.join(path, "pids.max"), str(max_pids))
        except OSError as exc:
            made.remove()
            raise CgroupUnavailable(str(exc)) from None
        return made

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.dirs.values()]

    def pids(self) -> set[int]:
        found = set()
        for path in self.procs_files:
            try:
                with open(path) as f:
                    found.update(int(p) for p in f.read().split())
            except OSError:
                pass
        return found

    def kill_all(self, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the cgroup until it is empty; False if it stayed populated."""
        kill_file = os.path.join(self.dirs.get("unified", ""), "cgroup.kill")
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return True
            if self.version == 2 and os.path.exists(kill_file):
                try:
                    _write(kill_file, "1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)

    def stats(self) -> CgroupStats:
        if self.version == 1:
            memory, pids = self.dirs.get("memory", ""), self.dirs.get("pids", "")
            return CgroupStats(_read_int(os.path.join(memory, "memory.max_usage_in_bytes")),
                               _read_int(os.path.join(pids, "pids.peak")),
                               _read_int(os.path.join(memory, "memory.oom_control"), "oom_kill"))
        path = self.dirs["unified"]
        return CgroupStats(_read_int(os.path.join(path, "memory.peak")), _read_int(os.path.join(path, "pids.peak")),
                           _read_int(os.path.join(path, "memory.events"), "oom_kill"))

    def remove(self) -> bool:
        """rmdir the cgroup(s); False when one still holds a process (a leak)."""
        removed = True
        for path in self.dirs.values():
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed
