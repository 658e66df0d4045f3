"""Extra peak host memory of log-probs + backward: plain logits vs fused_linear_logps (CPU path).

Each variant runs in its own subprocess (so peaks never mix): it imports everything, warms up
(on a tiny shape; `compiled` on the real one, so that compiling is not measured), allocates the
inputs, resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), reads its RSS (the
baseline), then runs forward + backward once. The figure is the peak RSS (`VmHWM`) minus that
baseline, i.e. every byte the op needed beyond its inputs, gradients included.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/memory_fused_linear.py \\
        --out benchmarks/results/fused_linear_memory_cpu.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

VARIANTS = {
    "plain": "log_softmax(h @ W.T) + gather + backward (materialised [N, V] logits)",
    "fused": "g2rpo_fast.ops.fused_linear_logps on the torch backend (chunked PyTorch path) + backward",
    "native": "the same op as dispatched by default on the CPU (C++ kernels, torch.ops.g2rpo_fast) + backward",
    "native_loss": "FusedLinearG2RPOLoss as dispatched by default (one-pass C++ loss, what the trainer runs) "
                   "+ backward",
    "compiled": "torch.compile of the chunked PyTorch path + backward",
}


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Linux: reset the peak-RSS mark to the current RSS


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_variant(name, n, h, v, dtype_name):
    import torch

    from g2rpo_fast.ops import fused_linear_logps

    dtype = getattr(torch, dtype_name)
    if name.startswith("native"):
        from g2rpo_fast.ops.backend import get_backend

        if get_backend() != "native":
            raise SystemExit("the native variants need G2RPO_FAST_BACKEND=native (g2rpo_fast._C built)")
    loss_fn = None
    if name == "native_loss":
        from g2rpo_fast import FusedLinearG2RPOLoss

        loss_fn = FusedLinearG2RPOLoss(beta=0.04)
    logps_fn = torch.compile(fused_linear_logps) if name == "compiled" else fused_linear_logps

    def step(hidden, weight, ids):
        if name == "plain":
            logps = torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, ids[:, None]).squeeze(-1)
        elif loss_fn is not None:
            # packed: sequences of 16 tokens, old/ref log-probs given (as in a training step)
            cu_seqlens = torch.arange(0, ids.numel() + 1, 16, dtype=torch.int32)
            old = torch.full(ids.shape, -5.0)
            loss, _ = loss_fn(hidden, weight, ids, advantages=torch.linspace(-1, 1, ids.numel() // 16),
                              cu_seqlens=cu_seqlens, old_logps=old, ref_logps=old - 0.1)
            loss.backward()
            return
        else:
            logps = logps_fn(hidden, weight, ids)
        logps.sum().backward()

    def inputs(n_, v_):
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(n_, h, generator=g).to(dtype).requires_grad_()
        weight = (torch.randn(v_, h, generator=g) / h ** 0.5).to(dtype).requires_grad_()
        ids = torch.randint(0, v_, (n_,), generator=g)
        return hidden, weight, ids

    step(*(inputs(n, v) if name == "compiled" else inputs(64, 512)))  # warm-up: imports, pools, compiling
    hidden, weight, ids = inputs(n, v)
    reset_peak_rss()
    base = rss_bytes()
    t0 = time.perf_counter()
    step(hidden, weight, ids)
    seconds = time.perf_counter() - t0
    peak = peak_rss_bytes()
    assert hidden.grad is not None and weight.grad is not None
    return {"variant": name, "baseline": base, "peak": peak, "extra": peak - base, "seconds": seconds}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--h", type=int, default=256)
    ap.add_argument("--v", type=int, default=32768)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", help="write a markdown report here")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_variant(args._child, args.n, args.h, args.v, args.dtype)))
        return

    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    rows = []
    for name in VARIANTS:
        env["G2RPO_FAST_BACKEND"] = "native" if name.startswith("native") else "torch"
        cmd = [sys.executable, __file__, "--_child", name, "--n", str(args.n), "--h", str(args.h),
               "--v", str(args.v), "--dtype", args.dtype]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    mib = lambda b: b / 2 ** 20
    plain = next(r for r in rows if r["variant"] == "plain")
    lines = [
        f"N={args.n}, H={args.h}, V={args.v}, {args.dtype}, forward + backward (grads of hidden and weight)",
        "",
        "| variant | what | extra peak RSS (MiB) | ratio to plain | time (s) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['variant']} | {VARIANTS[r['variant']]} | {mib(r['extra']):.1f} | "
                     f"{r['extra'] / plain['extra']:.3f} | {r['seconds']:.2f} |")
    lines.append("")
    for r in rows:
        if r["variant"] != "plain":
            ratio = r["extra"] / plain["extra"]
            lines.append(f"Requirement: {r['variant']} extra peak <= 10% of plain -> {100 * ratio:.1f}%: "
                         f"{'PASS' if ratio <= 0.10 else 'FAIL'}")
    report = "\n".join(lines)
    print(report)
    if args.out:
        cmd = "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "<unset>") + " " + " ".join(
            [".venv/bin/python", "benchmarks/memory_fused_linear.py"] + sys.argv[1:])
        with open(args.out, "w") as f:
            f.write("# fused_linear_logps: extra peak memory on the CPU path\n\n")
            f.write(f"Command: `{cmd}`\n\n")
            f.write(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"Python {platform.python_version()}; every variant in its own subprocess; load average "
                    f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())} at the end (times are indicative only, "
                    f"see bench_fused_linear.py for speed).\n\n")
            f.write("Extra peak = peak RSS (`VmHWM`, reset after the warm-up and the inputs) minus the RSS "
                    "then; it includes the gradients (hidden: N·H·4 B, weight: V·H·4 B) that every variant "
                    "returns.\n\n")
            f.write(report + "\n")


if __name__ == "__main__":
    main()
