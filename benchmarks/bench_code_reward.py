"""code_reward on HumanEval: canonical solutions, wrong answers and hostile programs.

    .venv/bin/python benchmarks/bench_code_reward.py --data ../shared/data/HumanEval.jsonl.gz \\
        [--baseline-ref 5c6dee0] [--repeats 2] [--out benchmarks/results/code_reward_cpu.json]

Sets (the data file is read in place, never copied):
  canonical  prompt + canonical_solution of all 164 problems: must all pass;
  mutants    the canonical solution with its first operator or constant changed (a usual wrong
             answer; a mutant the tests cannot tell apart survives under any harness);
  hostile    12 attacks x 8 problems = 96 programs that try to forge a pass or escape; an attack
             that succeeds runs the canonical solution, so any pass is a forged or escaped one.
The timed set is canonical + hostile (260 programs). ``--baseline-ref`` also scores every set
with the code reward of that git commit (extracted to a temporary directory, never committed),
side by side in the same run; the baseline runs only in its namespace mode (never its process
mode: the kill attack would reach the host there).
"""
from __future__ import annotations

import argparse
import ast
import collections
import gzip
import importlib
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing

from g2rpo_fast.rewards import make_code_reward, sandbox_status

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "HumanEval.jsonl.gz"))
HOSTILE_PROBLEMS = 8
_BOMB_MB = 768  # above the benchmark's 512 MiB sandbox memory

# Each attack is top-level code that sets SUCCESS; the program then defines the canonical
# solution only if SUCCESS, else a stub (or an always-equal result where that is the attack).
ATTACKS = {
    "sys_exit": "import sys\nsys.exit(0)\nSUCCESS = False\n",
    "os_exit": "import os\nos._exit(0)\nSUCCESS = False\n",
    "always_equal": "SUCCESS = False\nSTUB_RESULT = '_Equal()'\n",
    "frames_secret": (  # finds a pass marker in the runner's frames (the old design) and forges it
        "import os, sys\nfor frame in sys._current_frames().values():\n    while frame is not None:\n"
        "        for value in list(frame.f_locals.values()):\n"
        "            if isinstance(value, bytes) and len(value) == 32:\n"
        "                os.write(1, b'\\n' + value + b'\\n')\n                os._exit(0)\n"
        "        frame = frame.f_back\nSUCCESS = False\n"),
    "builtins_patch": ("import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.round = lambda *a: 0\n"
                       "SUCCESS = False\nSTUB_RESULT = '0'\n"),  # float tests compare abs(got - want)
    "unix_socket": (  # _socket: the old design replaced socket.socket in-process, not the C module
        "import _socket\ntry:\n    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)\n    s.settimeout(2)\n"
        "    s.connect({sock!r})\n    s.sendall({task!r}.encode() + b'\\n')\n    parts = []\n"
        "    while True:\n        part = s.recv(65536)\n        if not part:\n            break\n"
        "        parts.append(part)\n    CANON = b''.join(parts).decode()\n    SUCCESS = bool(CANON)\n"
        "except OSError:\n    SUCCESS = False\n"),
    "host_read": "try:\n    CANON = open({path!r}).read()\n    SUCCESS = True\nexcept OSError:\n    SUCCESS = False\n",
    "memfd_bomb": ("import os\nheld = []\ntry:\n    while len(held) < {chunks}:\n"
                   "        fd = os.memfd_create('bomb')\n        os.write(fd, b'x' * (8 << 20))\n"
                   "        held.append(fd)\n"
                   "except OSError:\n    pass\nSUCCESS = len(held) == {chunks}\n"),
    "fork_bomb": ("import os, time\nforked = 0\nfor _ in range(128):\n    try:\n        if os.fork() == 0:\n"
                  "            time.sleep(10)\n            os._exit(0)\n        forked += 1\n    except OSError:\n"
                  "        break\nSUCCESS = forked == 128\n"),
    "detached_child": ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                       "        os.execv(sys.executable,\n"
                       "                 [sys.executable, '-c', 'import time; time.sleep(30)  # {token}'])\n"
                       "    os._exit(0)\nSUCCESS = False\n"),
    "kill_parent": ("import os, signal\nfor pid in (os.getppid(), {bench_pid}):\n    try:\n"
                    "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\n"
                    # kill(-1) only inside a private PID namespace: as root outside one it hits the machine
                    "if len([p for p in os.listdir('/proc') if p.isdigit()]) <= 3:\n"
                    "    os.kill(-1, signal.SIGKILL)\nSUCCESS = False\n"),
    "spin": "while True:\n    pass\n",
}
ALWAYS_EQUAL = ("class _Equal:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
                "        return False\n    __hash__ = object.__hash__\n")


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class _Mutate(ast.NodeTransformer):
    """Change the first operator or constant of the canonical body (one mutation)."""
    SWAPS: typing.ClassVar = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Lt: ast.LtE, ast.LtE: ast.Lt,
             ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Mod: ast.FloorDiv}

    def __init__(self):
        self.done = False

    def generic_visit(self, node):
        if self.done:
            return node
        if isinstance(node, ast.BinOp) and type(node.op) in self.SWAPS:
            node.op, self.done = self.SWAPS[type(node.op)](), True
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in self.SWAPS:
            node.ops[0], self.done = self.SWAPS[type(node.ops[0])](), True
        elif isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            node.value, self.done = (not node.value) if isinstance(node.value, bool) else node.value + 1, True
        return super().generic_visit(node)


def mutant(problem) -> str:
    tree = ast.parse(problem["prompt"] + problem["canonical_solution"])
    entry = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    _Mutate().visit(entry)
    return ast.unparse(tree)


def hostile_programs(problems, workdir, sock_path):
    programs, kinds, tokens = [], [], []
    for kind, template in ATTACKS.items():
        for problem in problems[:HOSTILE_PROBLEMS]:
            canon = problem["prompt"] + problem["canonical_solution"]
            path = os.path.join(workdir, problem["task_id"].replace("/", "_") + ".py")
            with open(path, "w") as f:
                f.write(canon)
            token = f"g2rpo-bench-{secrets.token_hex(6)}"
            prelude = template.format(sock=sock_path, task=problem["task_id"], path=path, token=token,
                                      chunks=_BOMB_MB // 8, bench_pid=os.getpid())
            result = prelude.split("STUB_RESULT = '")[1].split("'")[0] if "STUB_RESULT" in prelude else "None"
            stub_body = f"    return {result}\n"
            program = (f"{ALWAYS_EQUAL}CANON = {canon!r}\n{prelude}\n"
                       f"exec(CANON if SUCCESS else {problem['prompt'] + stub_body!r})\n")
            programs.append(program)
            kinds.append(kind)
            tokens.append(token)
    return programs, kinds, tokens


def serve_solutions(sock_path, problems, stop):
    """The host service a sandbox must not reach: answers a task id with its canonical solution."""
    by_id = {p["task_id"]: p["prompt"] + p["canonical_solution"] for p in problems}
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(64)
    server.settimeout(0.2)
    connections = []

    def loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(1)
            with conn:
                conn.sendall(by_id.get(conn.makefile().readline().strip(), "").encode())
        server.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, connections


def surviving(tokens) -> int:
    alive = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            alive += any(t.encode() in cmdline for t in tokens)
    return alive


def load_baseline(ref):
    """The code reward of git commit ``ref``, as a throw-away package in a temporary directory."""
    root = tempfile.mkdtemp(prefix="g2rpo_baseline_")
    package = os.path.join(root, "baseline_rewards")
    os.mkdir(package)
    open(os.path.join(package, "__init__.py"), "w").close()
    for name in ("sandbox.py", "_sandbox_runner.py", "code.py", "extract.py"):
        source = subprocess.run(["git", "show", f"{ref}:g2rpo_fast/rewards/{name}"], capture_output=True, text=True,
                                check=True, cwd=os.path.dirname(HERE)).stdout
        with open(os.path.join(package, name), "w") as f:
            f.write(source)
    sys.path.insert(0, root)
    return importlib.import_module("baseline_rewards.code")


def score(reward, sets, problems):
    """{set name: (rewards, wall seconds, details)} with the reward's own column handling; details
    (the new reward only): how many programs each mode scored, and runs that leaked a process."""
    out = {}
    for name, completions in sets.items():
        period = HOSTILE_PROBLEMS if name == "hostile" else len(problems)  # hostile: kind-major order
        chosen = [problems[i % period] for i in range(len(completions))]
        start = time.perf_counter()
        rewards = reward([p["prompt"] for p in chosen], completions, test=[p["test"] for p in chosen],
                         entry_point=[p["entry_point"] for p in chosen])
        wall = time.perf_counter() - start
        last = getattr(reward, "last_results", None) or []
        details = {"modes": dict(collections.Counter(r.mode for r in last)), "leaked": sum(r.leaked for r in last)}
        out[name] = (rewards, wall, details if last else None)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--memory-mb", type=int, default=512)
    parser.add_argument("--sandbox", default="auto", choices=["auto", "bwrap", "namespace"])
    parser.add_argument("--baseline-ref", default=None, help="git commit whose code reward to score side by side")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = parser.parse_args()

    problems = load(args.data)
    workdir = tempfile.mkdtemp(prefix="g2rpo_bench_")
    sock_path = os.path.join(workdir, "solutions.sock")
    stop = threading.Event()
    _, connections = serve_solutions(sock_path, problems, stop)
    hostile, kinds, tokens = hostile_programs(problems, workdir, sock_path)
    sets = {"canonical": [p["prompt"] + p["canonical_solution"] for p in problems],
            "mutants": [mutant(p) for p in problems], "hostile": hostile}
    contenders = {"new": make_code_reward(timeout=args.timeout, memory_mb=args.memory_mb, max_workers=args.workers,
                                          sandbox=args.sandbox)}
    if args.baseline_ref:
        old = load_baseline(args.baseline_ref)
        contenders[f"baseline {args.baseline_ref}"] = old.make_code_reward(
            timeout=args.timeout, memory_mb=args.memory_mb, max_workers=args.workers, isolation="namespace")
    load_before = os.getloadavg()
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs, load {load_before}; "
          f"sandbox status: {sandbox_status()}; workers {args.workers}, timeout {args.timeout} s, "
          f"memory {args.memory_mb} MiB")
    report = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                          "cpus": os.cpu_count()}, "runs": []}
    for repeat in range(args.repeats):
        for name, reward in contenders.items():
            before = len(connections)
            results = score(reward, sets, problems)
            time.sleep(0.5)  # let killed processes be reaped before counting survivors
            canonical, mutants, hostile_r = (results[k][0] for k in ("canonical", "mutants", "hostile"))
            forged = {k: 0 for k in ATTACKS}
            for kind, r in zip(kinds, hostile_r):
                forged[kind] += int(r == 1.0)
            run = {"contender": name, "repeat": repeat, "load": os.getloadavg(),
                   "canonical_passed": int(sum(canonical)), "mutants_failed": int(len(mutants) - sum(mutants)),
                   "hostile_passed": int(sum(hostile_r)), "forged_by_attack": forged,
                   "socket_connections": len(connections) - before, "surviving_processes": surviving(tokens),
                   "timed_set_s": results["canonical"][1] + results["hostile"][1],
                   "canonical_s": results["canonical"][1], "hostile_s": results["hostile"][1],
                   "mutants_s": results["mutants"][1], "mutant_verdicts": [int(r) for r in mutants],
                   "canonical_failures": [p["task_id"] for p, r in zip(problems, canonical) if r != 1.0]}
            if results["canonical"][2] is not None:
                run["details"] = {k: v[2] for k, v in results.items()}
            report["runs"].append(run)
            print(f"[{name} #{repeat}] canonical {run['canonical_passed']}/164 in {run['canonical_s']:.1f} s; "
                  f"mutants failed {run['mutants_failed']}/164 in {run['mutants_s']:.1f} s; hostile passed "
                  f"{run['hostile_passed']}/96 in {run['hostile_s']:.1f} s {forged}; timed set (260) "
                  f"{run['timed_set_s']:.1f} s; socket connections {run['socket_connections']}, surviving "
                  f"processes {run['surviving_processes']}; load {run['load']}; {run.get('details', '')}", flush=True)
    runs = report["runs"]
    if len(contenders) > 1:
        new, old = runs[0]["mutant_verdicts"], runs[1]["mutant_verdicts"]
        disagree = [problems[i]["task_id"] for i in range(len(problems)) if new[i] != old[i]]
        print(f"mutant verdicts that differ between the two harnesses: {disagree}")
        report["mutant_disagreements"] = disagree
    stop.set()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    ok = all(r["canonical_passed"] == 164 for r in runs if r["contender"] == "new") and \
        all(r["hostile_passed"] == 0 for r in runs if r["contender"] == "new")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
