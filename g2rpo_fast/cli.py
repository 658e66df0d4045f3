"""`g2rpo-fast` command line: train, demo, eval.

    g2rpo-fast train                                  # built-in task and tiny model, CPU-friendly
    g2rpo-fast train --config run.yaml --max-steps 50 --guidance fixed --learning-rate 1e-5
    g2rpo-fast train --output-dir out --resume        # continue from the last complete checkpoint
    g2rpo-fast demo --jobs 2                          # GRPO, DAPO, guidance schedules, G²RPO-A: 8 seeds
    g2rpo-fast demo --regime hard --jobs 2            # the same on 4-digit sums (sparse rewards)
    g2rpo-fast train --config hard --report-to tensorboard
    g2rpo-fast eval --checkpoint out/checkpoint-30    # greedy held-out accuracy
    g2rpo-fast plan --model-name-or-path DIR --gpu-memory-gb 80   # memory per phase, settings that fit

Every `G2RPOConfig` field is also an option `--field-name value` or `--field_name value` (lists/None in
YAML syntax, e.g. `--reward-funcs "[accuracy, format]"`; a true/false field alone means true, e.g.
`--overwrite-output-dir`), and so are TRL's other GRPOConfig names (docs/TRL_COMPAT.md). Without
`--config`, the built-in model runs its preset (configs/default.yaml) and a model of your own starts
from TRL's defaults. A user mistake (bad configuration, missing model or data, bad data
rows, an unusable or already used output directory, a bad checkpoint) exits with status 2 and
a one-line message naming the field, before any model is loaded (options are never
abbreviated: `--learning-rat` is an unknown option, not `--learning-rate`); a full disk exits with
status 1 and "no space left on <path>"; Ctrl-C (or a reward function raising
KeyboardInterrupt) stops cleanly with status 130, keeping the last complete checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
import time

# = guidance.SCHEDULES and demo.METHODS, written out: the CLI parses before anything heavy imports
GUIDANCE_SCHEDULES = ("adaptive", "adaptive_sparse", "fixed", "linear", "none")
DEMO_METHODS = ("none", "dapo", "fixed", "linear", "adaptive", "adaptive_sparse")


def flags(name: str) -> list[str]:
    """`--field-name` and `--field_name` (TRL's scripts spell them with underscores)."""
    dashed, underscored = "--" + name.replace("_", "-"), "--" + name
    return [dashed] if dashed == underscored else [dashed, underscored]


def _add_config_fields(parser, skip=()):
    import argparse

    from g2rpo_fast.trainer.config import G2RPOConfig
    from g2rpo_fast.trainer.trl_names import ALIASES, UNSUPPORTED

    for f in dataclasses.fields(G2RPOConfig):
        if f.name in skip:
            continue
        if str(f.type).startswith("bool"):  # `--flag` alone means true, `--flag false` still works
            parser.add_argument(*flags(f.name), dest=f"cfg_{f.name}", default=None, metavar="BOOL", nargs="?",
                                const="true", help=f.metadata.get("help", ""))
        else:
            parser.add_argument(*flags(f.name), dest=f"cfg_{f.name}", default=None, metavar="VALUE",
                                help=f.metadata.get("help", ""))
    # TRL's other names: aliases of our fields, and the unsupported ones (refused with the reason unless at
    # their no-op value); listed in docs/TRL_COMPAT.md rather than in --help
    for name, default in [(n, a[2]) for n, a in ALIASES.items()] + [(n, u[0][-1]) for n, u in UNSUPPORTED.items()]:
        extra = {"nargs": "?", "const": "true"} if isinstance(default, bool) else {}
        parser.add_argument(*flags(name), dest=f"trl_{name}", default=None, help=argparse.SUPPRESS, **extra)


def _config_from_args(args, fixed: dict | None = None):
    from g2rpo_fast.data.loading import is_embedded
    from g2rpo_fast.trainer.config import G2RPOConfig, parse_value

    overrides = {}
    types = {f.name: f.type for f in dataclasses.fields(G2RPOConfig)}
    for name, ann in types.items():
        raw = getattr(args, f"cfg_{name}", None)
        if raw is not None:
            overrides[name] = parse_value(raw, ann, name)
    for key, raw in vars(args).items():
        if key.startswith("trl_") and raw is not None:
            overrides[key[4:]] = parse_value(raw, "object", key[4:])
    for key in ("output_dir", "max_steps", "seed"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    if getattr(args, "guidance", None) is not None:
        given = overrides.get("guidance_schedule", args.guidance)
        if given != args.guidance:
            raise ValueError(f"`guidance_schedule`: --guidance {args.guidance} and --guidance-schedule {given} "
                             f"disagree (--guidance is its alias): give one")
        overrides["guidance_schedule"] = args.guidance
    if getattr(args, "guidance_ratio", None) is not None:
        overrides["guidance_ratio"] = args.guidance_ratio
    overrides.update(fixed or {})
    if getattr(args, "config", None) is None and not is_embedded(overrides.get("model_name_or_path")):
        # a model of the user's, no config file: TRL's defaults, not the built-in model's preset
        return G2RPOConfig.from_dict(overrides)
    return G2RPOConfig.from_yaml(getattr(args, "config", None), **overrides)


def _train_parser(sub):
    p = sub.add_parser("train", help="train a policy with G²RPO-A (or a baseline schedule)")
    p.add_argument("--config", default=None, help="YAML file of G2RPOConfig fields, or a packaged preset: default "
                                                  "(the default), hard (sparse rewards: 4-digit sums)")
    p.add_argument(*flags("output_dir"), dest="output_dir", default=None)
    p.add_argument(*flags("max_steps"), dest="max_steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in output_dir")
    p.add_argument("--guidance", choices=list(GUIDANCE_SCHEDULES), default=None,
                   help="guidance schedule (alias of --guidance-schedule)")
    p.add_argument(*flags("guidance_ratio"), dest="guidance_ratio", type=float, default=None)
    _add_config_fields(p, skip=("output_dir", "max_steps", "seed", "guidance_ratio"))
    return p


class UsageError(Exception):
    """A configuration / data error found before any work: reported without a traceback."""


class Interrupted(Exception):
    """Ctrl-C, or a reward function that raised KeyboardInterrupt: a clean stop (status 130)."""


class OneLineParser(argparse.ArgumentParser):
    """No abbreviated options (a typo is an error, never another field) and usage errors as
    one line, status 2, like every other user mistake."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _unknown_option(parser, command: str, extra: list[str]) -> str:
    """The one-line error for arguments no option takes, with the closest option's name."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    known = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    flag = next((a for a in extra if a.startswith("-")), None)
    if flag is None:
        return f"unexpected argument(s): {' '.join(extra)}"
    flag = flag.split("=")[0]
    close = difflib.get_close_matches(flag, known, n=1)
    return f"`{flag}`: unknown option" + (f" (did you mean {close[0]}?)" if close else "")


def _interrupted_at(trainer, output_dir: str) -> str:
    from g2rpo_fast.checkpointing.checkpoint import latest_checkpoint

    latest = latest_checkpoint(output_dir) if trainer.is_main else None
    kept = (f"{latest} is the last complete checkpoint (--resume continues from it)" if latest
            else "no checkpoint was saved yet")
    return f"interrupted at step {trainer.step} (Ctrl-C or KeyboardInterrupt); {kept}"


def _setup(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_train(args) -> int:
    cfg = _setup(_config_from_args, args)
    from g2rpo_fast.trainer.preflight import preflight

    args.resolved_output_dir = cfg.output_dir  # named by a full-disk message
    _setup(preflight, cfg, resume=args.resume)  # before torch, the data and the model load
    from g2rpo_fast.checkpointing.run_dir import RunSetupError
    from g2rpo_fast.trainer.trainer import G2RPOTrainer

    t0 = time.perf_counter()
    trainer = _setup(G2RPOTrainer, cfg)
    try:
        history = trainer.train(resume_from_checkpoint=True if args.resume else None)
    except RunSetupError as exc:  # output dir / checkpoint to resume: found before step 1
        trainer.close(failed=True)
        raise UsageError(str(exc)) from exc
    except KeyboardInterrupt:
        trainer.close(failed=True)
        raise Interrupted(_interrupted_at(trainer, cfg.output_dir)) from None
    except BaseException:
        trainer.close(failed=True)
        raise
    trainer.close()
    if trainer.is_main:
        first, last = (history[0], history[-1]) if history else ({}, {})
        print(f"done: {len(history)} steps in {time.perf_counter() - t0:.1f} s; reward "
              f"{first.get('reward', float('nan')):.3f} -> {last.get('reward', float('nan')):.3f}; "
              f"outputs in {cfg.output_dir}")
        if getattr(trainer, "final_eval", None):
            print(f"held-out greedy accuracy: {trainer.final_eval['eval_accuracy']:.3f} "
                  f"({trainer.final_eval['eval_count']} prompts)")
    return 0


# ---- `g2rpo-fast eval`: the checks that need no torch first (the model source, a checkpoint's
# manifest), so a mistake costs a second; then a trainer on the checkpoint's weights runs the one
# evaluator (`g2rpo_fast/evaluation.py`).
def evaluate_checkpoint(config, checkpoint=None, split=None, max_prompts=None) -> dict:
    """Greedy accuracy (the config's `guidance_reward`, default accuracy) of `checkpoint`
    (a checkpoint-N dir or any model path; None: `config.model_name_or_path`)."""
    from g2rpo_fast.data.loading import is_embedded
    from g2rpo_fast.models.loading import check_model_source

    cfg = dataclasses.replace(config, eval_split=split or config.eval_split, progress_bar=False, plots=False,
                              eval_at_end=True)
    if checkpoint is not None:
        check_model_source(checkpoint, field="--checkpoint")
        _verify_if_checkpoint(checkpoint)
        # the checkpoint's weights and the tokenizer saved with them
        cfg = dataclasses.replace(cfg, model_name_or_path=checkpoint)
    if config.dataset_name is None and not is_embedded(config.model_name_or_path):
        # a model of the user's is never evaluated on the built-in task unless dataset_name names it
        raise ValueError(f"`dataset_name`: no data named to evaluate {checkpoint or config.model_name_or_path} on: "
                         f"give --dataset-name (its held-out split, or --split) and, for held-out rows in "
                         f"another file, --eval-dataset-name ('embedded' names the built-in task)")
    from g2rpo_fast.trainer.trainer import G2RPOTrainer  # torch: after the checks above

    trainer = G2RPOTrainer(cfg)
    if trainer.eval_dataset is None:
        raise ValueError(f"`eval_split`: {cfg.dataset_name or 'the data set'} has no held-out split to evaluate on: "
                         f"name one (--split) or give eval_dataset_name")
    result = trainer.evaluate(max_prompts=max_prompts if max_prompts is not None else cfg.num_eval_prompts)
    result["checkpoint"] = checkpoint or cfg.model_name_or_path
    return result


def _verify_if_checkpoint(path: str) -> None:
    """A training checkpoint (it has a manifest) must verify before it is evaluated."""
    from g2rpo_fast.checkpointing.manifest import MANIFEST_FILE, verify_checkpoint

    if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
        reason = verify_checkpoint(path)
        if reason is not None:
            raise ValueError(f"`--checkpoint`: {path} is not a complete checkpoint: {reason}")


def cmd_eval(args) -> int:
    import json

    fixed = {"progress_bar": False}
    if args.config is None and args.cfg_model_name_or_path is None and args.checkpoint is not None:
        # the model the checkpoint was trained from picks the starting values, as for train: the
        # built-in preset for the built-in model, TRL's defaults (and no built-in task) for a user's
        from g2rpo_fast.checkpointing.checkpoint import load_checkpoint_config

        fixed["model_name_or_path"] = (load_checkpoint_config(args.checkpoint) or {}).get(
            "model_name_or_path") or args.checkpoint
    cfg = _setup(_config_from_args, args, fixed)
    result = _setup(evaluate_checkpoint, cfg, args.checkpoint, split=args.split, max_prompts=args.max_prompts)
    print(json.dumps(result, indent=2))
    return 0


def cmd_export(args) -> int:
    from g2rpo_fast.checkpointing.export import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out_dir)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"exported {args.checkpoint} to {out} (transformers' save_pretrained format)")
    return 0


def cmd_plan(args) -> int:
    """The memory plan of a train command (`g2rpo_fast/memory_plan.py`): per-phase bytes and the
    settings that fit; the last line is one JSON object. Exit 0 when the plan fits, 1 when not."""
    import json

    from g2rpo_fast.memory_plan import plan_for_config, summary_lines

    if args.gpu_memory_gb is None or not args.gpu_memory_gb > 0:
        raise UsageError(f"`gpu_memory_gb` must be a number > 0, got {args.gpu_memory_gb}")
    if args.world_size < 1:
        raise UsageError(f"`world_size` must be an int >= 1, got {args.world_size}")
    cfg = _setup(_config_from_args, args, {"progress_bar": False})
    from g2rpo_fast.models.loading import model_config

    hf_config = _setup(model_config, cfg.model_name_or_path)
    device = "cpu" if cfg.device == "cpu" else "cuda"  # `--device auto` plans for the GPU
    result = plan_for_config(cfg, hf_config, memory_bytes=int(args.gpu_memory_gb * 1e9), device=device,
                             world_size=args.world_size)
    for line in summary_lines(result):
        print(line)
    print(json.dumps(result))
    return 0 if result["fits"] else 1


def cmd_demo(args) -> int:
    from g2rpo_fast.demo import REGIMES, run_demo

    if args.jobs < 1:
        raise UsageError(f"`jobs` must be an int >= 1, got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"`threads` must be an int >= 1, got {args.threads}")
    # The regime's packaged preset and demo budget (each run about a minute or two on 2 CPU
    # cores), unless the user chose a config file or the budget fields.
    preset, budget = REGIMES[args.regime]
    if args.config is None:
        args.config = preset
        budget = {k: v for k, v in budget.items()
                  if getattr(args, k, None) is None and getattr(args, f"cfg_{k}", None) is None}
    else:
        budget = {}
    if args.output_dir is None:
        args.output_dir = "g2rpo_demo" if args.regime == "easy" else f"g2rpo_demo_{args.regime}"
    cfg = _setup(_config_from_args, args, budget)
    run_demo(cfg, seeds=args.seeds, methods=args.methods, output_dir=cfg.output_dir, jobs=args.jobs,
             regime=args.regime, threads=args.threads, resume=args.resume,
             command="g2rpo-fast " + " ".join(getattr(args, "argv", ["demo"])))
    return 0


def build_parser():
    parser = OneLineParser(prog="g2rpo-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    d = sub.add_parser("demo", help="GRPO vs fixed guidance vs G²RPO-A over seeds, held-out accuracy")
    d.add_argument("--regime", choices=["easy", "hard"], default="easy",
                   help="easy: 3-digit sums (default.yaml, 60 steps); hard: 4-digit sums, sparse rewards "
                        "(the `hard` preset, configs/hard.yaml)")
    d.add_argument("--config", default=None, help="YAML file or preset name (default: the regime's preset)")
    d.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    d.add_argument("--methods", nargs="+", default=list(DEMO_METHODS), choices=list(DEMO_METHODS),
                   help="none: GRPO; dapo: GRPO with DAPO's dynamic sampling; the others: guidance_schedule")
    d.add_argument("--jobs", type=int, default=1, help="runs at a time, one process each")
    d.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: the cores divided by --jobs); results depend on it")
    d.add_argument("--resume", action="store_true",
                   help="reuse the runs of an earlier demo in --output-dir whose configuration is identical")
    d.add_argument(*flags("output_dir"), dest="output_dir", default=None,
                   help="default: g2rpo_demo (easy), g2rpo_demo_hard (hard)")
    d.add_argument(*flags("max_steps"), dest="max_steps", type=int, default=None)
    _add_config_fields(d, skip=("output_dir", "max_steps", "seed"))
    e = sub.add_parser("eval", help="greedy held-out accuracy of a checkpoint")
    e.add_argument("--checkpoint", default=None, help="checkpoint dir or model path (default: model_name_or_path)")
    e.add_argument("--config", default=None)
    e.add_argument("--split", default=None, help="dataset split (default: eval_split)")
    e.add_argument(*flags("max_prompts"), dest="max_prompts", type=int, default=None)
    _add_config_fields(e, skip=())
    pl = sub.add_parser("plan", help="predicted memory per phase of a training step and the settings that fit "
                                     "(from the model's config.json alone)")
    pl.add_argument("--config", default=None, help="YAML file or preset name, as for train")
    pl.add_argument("--gpu-memory-gb", dest="gpu_memory_gb", type=float, default=None, required=True,
                    help="memory of one device in GB (10^9 bytes), e.g. 80")
    pl.add_argument("--world-size", dest="world_size", type=int, default=1, help="processes (GPUs) of the run")
    pl.add_argument("--output-dir", dest="output_dir", default=None)
    pl.add_argument("--max-steps", dest="max_steps", type=int, default=None)
    pl.add_argument("--seed", type=int, default=None)
    _add_config_fields(pl, skip=("output_dir", "max_steps", "seed"))
    x = sub.add_parser("export", help="write a checkpoint (sharded FSDP ones too) as a Hugging Face model directory")
    x.add_argument("checkpoint", help="a checkpoint-N directory")
    x.add_argument("out_dir", help="where to write the model (a new or empty directory)")
    return parser


def _short_warnings() -> None:
    """Our own warnings (resume fallbacks, changed config, reward failures) as one line each."""
    import warnings

    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if "g2rpo_fast" in str(filename):
            return f"g2rpo-fast: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def _quiet_bars_off_terminal() -> None:
    """transformers' and the Hub's own tqdm bars (loading weights, writing shards) only on a
    terminal, as ours: in a log file each is a long line of carriage returns. Set before they are
    imported (both read it then); a user's explicit setting wins."""
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv=None) -> int:
    _short_warnings()
    _quiet_bars_off_terminal()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        print(f"g2rpo-fast {args.command}: error: {_unknown_option(parser, args.command, extra)}", file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the demo's table states its command
    commands = {"train": cmd_train, "demo": cmd_demo, "eval": cmd_eval, "export": cmd_export, "plan": cmd_plan}
    try:
        return commands[args.command](args)
    except UsageError as exc:
        # Configuration and data errors: a one-line message, status 2, no traceback.
        print(f"g2rpo-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"g2rpo-fast {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before the trainer existed, or in another command
        print(f"g2rpo-fast {args.command}: interrupted (Ctrl-C or KeyboardInterrupt)", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk: nothing the user typed is wrong, and nothing is lost (checkpoints are atomic).
        where = getattr(exc, "path", None) or exc.filename or getattr(args, "resolved_output_dir", None) or "."
        text = str(exc) if str(exc).startswith("no space left") else f"no space left on {where} ({exc})"
        print(f"g2rpo-fast {args.command}: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
