"""Forward+backward time and peak memory of the G²RPO loss from logits, side by side.

Candidates, all on the same inputs in one run:
  * g2rpo_fast      the public `G2RPOLoss` as dispatched by default: the fused Triton kernel on
                    CUDA, the C++ kernels (`torch.ops.g2rpo_fast.token_loss`, g2rpo_fast._C) on the
                    CPU, or the Triton kernel in Triton's interpreter with --interpret
  * g2rpo_fast_torch the same module on the "torch" backend (its PyTorch reference: what the CPU
                    ran before the C++ kernels, and what it runs when `_C` is not built)
  * liger           liger-kernel's `triton_grpo_loss` (CUDA, or the interpreter with --interpret)
  * trl_eager       TRL's formula in eager PyTorch (materialised fp32 log_softmax)
  * compiled_ref    `torch.compile` of our reference (per_token_logps_ref + loss.objective.objective_from_logps)

Also reported: effective bandwidth = minimal logits traffic (read in forward, read + gradient
write in backward: 3·N·V·itemsize bytes) ÷ time, its fraction of the HBM peak on known GPUs,
and the bf16 log-prob max error of our path against fp32 log-probs of the same values.

On the CPU the candidates run interleaved (one timed step of each per round, the order rotating),
with the same thread count (--threads) for all, and the machine's load average is recorded:
on a shared machine this keeps a burst of load from landing on one candidate only.

Usage:
  python benchmarks/bench_loss.py                       # CUDA grid, or the CPU grid of issue 14
  python benchmarks/bench_loss.py --interpret           # CPU: add the Triton paths (tiny shape)
  python benchmarks/bench_loss.py --shapes 8192x151936  # custom N x V
Writes benchmarks/results/loss_<device>.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

if "--interpret" in sys.argv:  # must precede the first `import triton` (see tests/conftest.py)
    os.environ["TRITON_INTERPRET"] = "1"

import torch

HBM_PEAK = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12, "B200": 8.0e12}  # bytes/s (SXM parts)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None, help="comma-separated NxV (default: CUDA grid / small CPU shape)")
    p.add_argument("--seq-len", type=int, default=1024, help="completion length T (N = B·T)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--interpret", action="store_true", help="CPU: also run the Triton paths in the interpreter")
    p.add_argument("--skip", default="", help="comma-separated candidates to skip")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every candidate")
    p.add_argument("--large-only", default="g2rpo_fast,compiled_ref",
                   help="CPU: candidates run at shapes with N·V > --large-elems (the eager ones need ~4 fp32 "
                        "copies of the logits)")
    p.add_argument("--large-elems", type=float, default=4e8)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    return p.parse_args()


# ----------------------------------------------------------------------------------- inputs

def make_inputs(n, v, t, device, dtype=torch.bfloat16, seed=0):
    """Padded batch [B, T] with N = B·T, ~10% padding, a guidance-free GRPO step with old/ref log-probs."""
    t = min(t, n)
    b = max(n // t, 1)
    n = b * t
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = (torch.randn(b, t + 1, v, generator=gen) * 2).to(dtype).to(device)  # Liger wants T+1 positions
    ids = torch.randint(0, v, (b, t), generator=gen).to(device)
    lengths = torch.randint(int(0.8 * t), t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None] < lengths[:, None]).float().to(device)
    with torch.no_grad():
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    old = (lp + 0.05 * torch.randn(b, t, generator=gen).to(device)).contiguous()
    ref = (lp + 0.1 * torch.randn(b, t, generator=gen).to(device)).contiguous()
    adv = torch.randn(b, generator=gen).to(device)
    del lp
    return dict(logits_full=logits, ids=ids, mask=mask, old=old, ref=ref, adv=adv, b=b, t=t, n=n, v=v)


OPTS = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_type="bnpo", temperature=1.0)


# ------------------------------------------------------------------------------- candidates

def cand_ours(inp, backend=None):
    import contextlib

    import g2rpo_fast as g
    from g2rpo_fast.ops.backend import use_backend

    fn = g.G2RPOLoss(**OPTS)
    logits = inp["logits_full"][:, :-1].contiguous()  # our layout: T positions

    def step(x):
        with use_backend(backend) if backend else contextlib.nullcontext():
            loss, _ = fn(x, inp["ids"], advantages=inp["adv"], completion_mask=inp["mask"],
                         old_logps=inp["old"], ref_logps=inp["ref"])
            loss.backward()
        return loss

    return logits, step


def cand_liger(inp):
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    def step(x):
        loss, _ = triton_grpo_loss(x, inp["old"], inp["ref"], inp["ids"], inp["adv"], inp["mask"],
                                   temperature=OPTS["temperature"], beta=OPTS["beta"], eps_low=OPTS["epsilon_low"],
                                   eps_high=OPTS["epsilon_high"], inplace=False, loss_type=OPTS["loss_type"],
                                   reduce=True)
        loss.backward()
        return loss

    return inp["logits_full"], step


def trl_loss(logits, ids, mask, adv, old, ref):
    """TRL GRPOTrainer's loss (token level, bnpo): fp32 log_softmax materialised."""
    logps = torch.log_softmax(logits.float() / OPTS["temperature"], dim=-1).gather(-1, ids[..., None]).squeeze(-1)
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - OPTS["epsilon_low"], 1 + OPTS["epsilon_high"])
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    d = ref - logps
    per_token = per_token + OPTS["beta"] * (torch.exp(d) - d - 1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def cand_trl(inp):
    def step(x):
        loss = trl_loss(x, inp["ids"], inp["mask"], inp["adv"], inp["old"], inp["ref"])
        loss.backward()
        return loss

    return inp["logits_full"][:, :-1].contiguous(), step


def cand_compiled(inp):
    from g2rpo_fast.loss import LossOptions
    from g2rpo_fast.loss.inputs import prepare_loss_inputs
    from g2rpo_fast.loss.objective import objective_from_logps
    from g2rpo_fast.ops.logps import per_token_logps_ref

    opts = LossOptions(**OPTS)
    ids = inp["ids"]
    loss_inputs = prepare_loss_inputs(opts, ids, inp["logits_full"].shape[-1], ids.device, advantages=inp["adv"],
                                      completion_mask=inp["mask"], old_logps=inp["old"], ref_logps=inp["ref"])

    @torch.compile(dynamic=False)
    def loss_fn(x):
        lp = per_token_logps_ref(x.reshape(-1, x.shape[-1]), loss_inputs.token_ids, opts.temperature)
        return objective_from_logps(lp, loss_inputs, opts)[0]

    def step(x):
        loss = loss_fn(x)
        loss.backward()
        return loss

    return inp["logits_full"][:, :-1].contiguous(), step


CANDIDATES = {"g2rpo_fast": cand_ours, "g2rpo_fast_torch": lambda inp: cand_ours(inp, "torch"), "liger": cand_liger,
              "trl_eager": cand_trl, "compiled_ref": cand_compiled}


# ---------------------------------------------------------------------------------- timing

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name, inp, device, warmup, repeats):
    logits, step = CANDIDATES[name](inp)
    x = logits.detach().requires_grad_()
    for _ in range(warmup):
        x.grad = None
        step(x)
    sync(device)
    if device.type == "cuda":
        x.grad = None
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        x.grad = None
        sync(device)
        t0 = time.perf_counter()
        step(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() - base) if device.type == "cuda" else None
    del x, logits, step
    return statistics.median(times), peak


def measure_interleaved(names, inp, warmup, repeats):
    """CPU: {name: (median seconds, None) or an exception}; one step of each candidate per round."""
    state, times, out = {}, {}, {}
    for name in names:
        try:
            logits, step = CANDIDATES[name](inp)
            x = logits.detach().requires_grad_()
            for _ in range(warmup):  # compiles, first-touch of buffers
                x.grad = None
                step(x)
            state[name], times[name] = (x, step), []
        except Exception as e:
            out[name] = e
    for r in range(repeats):
        live = list(state)
        for name in live[r % len(live):] + live[:r % len(live)] if live else []:
            x, step = state[name]
            x.grad = None
            t0 = time.perf_counter()
            step(x)
            times[name].append(time.perf_counter() - t0)
    for name in state:
        out[name] = (statistics.median(times[name]), None)
    return out


def bf16_logp_error(n, v, device):
    """Max |logp(bf16 logits) - logp(fp32 copy of the same values)| through our op, and the
    fp32 path against float64: the error our kernel adds, not the rounding of the inputs."""
    import g2rpo_fast as g

    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(n, v, generator=gen) * 3).to(torch.bfloat16)
    ids = torch.randint(0, v, (n,), generator=gen)
    lp_bf16 = g.ops.per_token_logps(x.to(device), ids.to(device)).cpu()
    lp_fp32 = g.ops.per_token_logps(x.float().to(device), ids.to(device)).cpu()
    lp_64 = torch.log_softmax(x.double(), -1).gather(-1, ids[:, None]).squeeze(-1)
    return float((lp_bf16 - lp_fp32).abs().max()), float((lp_bf16.double() - lp_64).abs().max())


def device_tag(device):
    if device.type != "cuda":
        return "cpu", f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    name = torch.cuda.get_device_name(device)
    m = re.search(r"(H100|H200|A100|B200|L40S|A10G|L4|RTX\s?\d+)", name)
    return (m.group(1).replace(" ", "").lower() if m else re.sub(r"\W+", "_", name).lower()), name


def versions():
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "liger_kernel", "trl"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:
            out[mod] = "not installed"
    return out


def main():
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_cpu = device.type == "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shapes:
        shapes = [tuple(int(s) for s in sh.lower().split("x")) for sh in args.shapes.split(",")]
    elif on_cpu:
        # issue 14's CPU grid; at V = 151936 N is 1k and 4k (not 8k): the eager candidates would
        # need ~20 GB at 8k, more than this shared machine can give (--large-only runs the rest)
        shapes = [(16, 512)] if args.interpret else [(1024, 32_768), (8192, 32_768), (1024, 151_936),
                                                     (4096, 151_936)]
    else:
        shapes = [(n, v) for v in (32_768, 151_936) for n in (8_192, 32_768, 131_072)]
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 3)
    repeats = args.repeats if args.repeats is not None else (5 if on_cpu else 20)
    names = list(CANDIDATES)
    if on_cpu and not args.interpret:
        names.remove("liger")  # a Triton kernel: only in the interpreter on the CPU
    if not on_cpu or args.interpret:
        names.remove("g2rpo_fast_torch")  # the reference: only of interest on the CPU
    names = [n for n in names if n not in args.skip.split(",")]

    tag, dev_name = device_tag(device)
    rows, loads = [], []
    for n, v in shapes:
        inp = make_inputs(n, v, args.seq_len, device)
        itemsize = inp["logits_full"].element_size()
        traffic = 3 * inp["n"] * v * itemsize
        shape_names = names
        if on_cpu and n * v > args.large_elems:
            shape_names = [c for c in names if c in args.large_only.split(",")]
        load_before = os.getloadavg()
        interleaved = measure_interleaved(shape_names, inp, warmup, repeats) if on_cpu else None
        loads.append(dict(N=inp["n"], V=v, load_before=load_before, load_after=os.getloadavg()))
        for name in shape_names:
            label = name
            if name == "g2rpo_fast":
                from g2rpo_fast.ops.backend import implementation

                label += f" ({implementation(inp['logits_full'])})"
            try:
                if interleaved is not None:
                    if isinstance(interleaved[name], Exception):
                        raise interleaved[name]
                    sec, peak = interleaved[name]
                else:
                    sec, peak = measure(name, inp, device, warmup, repeats)
                bw = traffic / sec
                frac = next((bw / peak_bw for k, peak_bw in HBM_PEAK.items() if k in dev_name), None)
                rows.append(dict(candidate=label, N=inp["n"], V=v, ms=sec * 1e3, peak_mib=None if peak is None
                                 else peak / 2**20, bandwidth_gbs=bw / 1e9, roofline=frac, error=None))
            except Exception as e:
                rows.append(dict(candidate=label, N=inp["n"], V=v, ms=None, peak_mib=None, bandwidth_gbs=None,
                                 roofline=None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
            print(rows[-1], flush=True)
        del inp
        if not on_cpu:
            torch.cuda.empty_cache()
    err_n, err_v = (8, 512) if (on_cpu and args.interpret) else ((64, 2048) if on_cpu else (1024, 151_936))
    bf16_vs_fp32, bf16_vs_fp64 = bf16_logp_error(err_n, err_v, device)

    command = "python " + " ".join([os.path.relpath(__file__, Path(__file__).parent.parent)] + sys.argv[1:])
    if args.interpret:
        command = "TRITON_INTERPRET=1 " + command
    if on_cpu:
        from g2rpo_fast import _native

        dev_name += f", {torch.get_num_threads()} torch threads, C++ kernels: {_native.cpu_capability()}"
    result = dict(device=dev_name, device_tag=tag, versions=versions(), command=command, dtype="bfloat16",
                  options=OPTS, seq_len=args.seq_len, warmup=warmup, repeats=repeats, rows=rows, load=loads,
                  large_elems=args.large_elems if on_cpu else None, large_only=args.large_only,
                  bf16_logp_max_err_vs_fp32=bf16_vs_fp32, bf16_logp_max_err_vs_fp64=bf16_vs_fp64,
                  bf16_error_shape=[err_n, err_v])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"loss_{tag}" + ("_interpret" if args.interpret else "")
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(result, on_cpu))
    print(f"wrote {out / stem}.md and .json")


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def to_markdown(r, on_cpu):
    v = r["versions"]
    lines = [
        f"# G²RPO loss from logits: forward + backward ({r['device']})",
        "",
        f"Command: `{r['command']}`",
        "",
        f"torch {v['torch']}, triton {v['triton']}, liger-kernel {v['liger_kernel']}, trl {v['trl']}, "
        f"python {v['python']}. Logits bf16, padded [B, T = min({r['seq_len']}, N)] (~10% padding), loss_type bnpo, "
        f"beta {r['options']['beta']}, old and ref log-probs given; median of {r['repeats']} runs after "
        f"{r['warmup']} warm-up.",
        "",
    ]
    if on_cpu:
        lines += [
            "CPU goal (issue 14): `g2rpo_fast` (the public `G2RPOLoss`, dispatched to the C++ kernels) at "
            "least as fast as `compiled_ref` (`torch.compile` of the reference). Candidates run interleaved "
            "with the same thread count; "
            "the machine is shared with other jobs, so its load average during each shape is listed below. "
            "The GPU goals (Triton vs Liger's `triton_grpo_loss`, HBM roofline) need a GPU run. With "
            "`--interpret` the Triton rows time Triton's Python interpreter, not the kernels.",
            "",
        ]
    compiled = {(row["N"], row["V"]): row["ms"] for row in r["rows"] if row["candidate"] == "compiled_ref"}
    lines += [
        "| candidate | N | V | fwd+bwd ms | vs compiled_ref | peak MiB | GB/s (3·N·V·2 B) | HBM roofline | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in r["rows"]:
        c = compiled.get((row["N"], row["V"]))
        speedup = f"{c / row['ms']:.2f}×" if (c and row["ms"]) else "—"
        lines.append(
            f"| {row['candidate']} | {row['N']} | {row['V']} | {fmt(row['ms'], '.2f')} | {speedup} "
            f"| {fmt(row['peak_mib'], '.0f')} "
            f"| {fmt(row['bandwidth_gbs'], '.3g')} | {fmt(row['roofline'] and 100 * row['roofline'], '.0f')}"
            f"{'%' if row['roofline'] else ''} | {row['error'] or ''} |")
    if r.get("large_elems") and any(row["N"] * row["V"] > r["large_elems"] for row in r["rows"]):
        lines += ["", f"Shapes with N·V > {r['large_elems']:.0e} run only {r['large_only'].replace(',', ', ')}: "
                  "the eager candidates hold ~4 fp32 copies of the logits, more memory than this shared "
                  "machine can give at those sizes."]
    if r.get("load"):
        lines += ["", "Load average (1/5/15 min) before → after each shape: " + "; ".join(
            f"N={x['N']} V={x['V']}: {'/'.join(f'{a:.1f}' for a in x['load_before'])} → "
            f"{'/'.join(f'{a:.1f}' for a in x['load_after'])}" for x in r["load"])]
    n, vv = r["bf16_error_shape"]
    lines += [
        "",
        f"bf16 log-prob max error (our op, N={n}, V={vv}): {r['bf16_logp_max_err_vs_fp32']:.3g} against fp32 "
        f"logits holding the same values, {r['bf16_logp_max_err_vs_fp64']:.3g} against float64.",
        "",
        "Peak memory is the CUDA allocator's peak above the inputs (— on the CPU). Bandwidth counts the "
        "minimal logits traffic (forward read, backward read + gradient write) for every candidate, so it "
        "compares speed, not bytes actually moved.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
