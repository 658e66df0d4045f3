"""Every field of the installed `trl.GRPOConfig` is in docs/TRL_COMPAT.md with the status the code
gives it, and G2RPOConfig accepts it with TRL's meaning or refuses it by name with the reason."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings

import pytest

from g2rpo_fast.trainer import trl_names
from g2rpo_fast.trainer.config import CHOICES, G2RPOConfig

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trl = pytest.importorskip("trl", reason="the TRL comparison needs trl (extra `test`)")

TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "TRL_COMPAT.md")
ROW = re.compile(r"^\| `(\w+)` \| `(.*)` \| (same|different default|alias|not supported) \| (.*) \|$")


def trl_defaults() -> dict:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(trl.GRPOConfig)}


def table_rows() -> dict:
    rows = {}
    with open(TABLE, encoding="utf-8") as fh:
        for line in fh:
            m = ROW.match(line.strip())
            if m:
                rows[m.group(1)] = (m.group(2), m.group(3), m.group(4))
    return rows


def status_in_code(name: str) -> str:
    if name in G2RPOConfig.field_names():
        return "different default" if name in trl_names.DIFFERENT_DEFAULTS else "same"
    if name in trl_names.ALIASES:
        return "alias"
    assert name in trl_names.UNSUPPORTED, f"{name}: neither a field, an alias nor listed as unsupported"
    return "not supported"


def test_the_table_lists_every_field_of_the_installed_trl_with_its_status():
    rows, defaults = table_rows(), trl_defaults()
    missing = [n for n in defaults if n not in rows]
    assert not missing, f"docs/TRL_COMPAT.md lacks {missing} (run scripts/trl_compat_table.py)"
    assert set(rows) == set(defaults), f"not GRPOConfig fields: {sorted(set(rows) - set(defaults))}"
    for name, (default, state, note) in rows.items():
        assert state == status_in_code(name), name
        assert default == repr(defaults[name]), name
        if state in ("different default", "not supported"):
            assert note.strip(), f"{name}: no reason given"


def test_the_committed_table_is_what_the_script_writes_now():
    """A field added to G2RPOConfig (or a note changed) without rerunning the script leaves the
    table stale: its list of our own fields then misses it."""
    import runpy

    script = runpy.run_path(os.path.join(os.path.dirname(TABLE), "..", "scripts", "trl_compat_table.py"))
    with open(TABLE, encoding="utf-8") as fh:
        assert fh.read() == script["table"](), "docs/TRL_COMPAT.md is stale: run scripts/trl_compat_table.py"


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b)
    return a == b


def test_shared_fields_have_trls_default_unless_the_difference_is_stated():
    for name, default in trl_defaults().items():
        if name in G2RPOConfig.field_names():
            ours = G2RPOConfig.default_of(name)
            if name in trl_names.DIFFERENT_DEFAULTS:
                assert not _same(ours, default), f"{name}: listed as different but the defaults agree"
            elif name not in trl_names.EQUIVALENT_DEFAULTS:
                assert _same(ours, default), f"{name}: ours {ours!r}, TRL's {default!r}"
        elif name in trl_names.UNSUPPORTED:
            accepted = [a for a in trl_names.UNSUPPORTED[name][0] if a is not trl_names.ANY]
            assert any(_same(default, a) for a in accepted), f"{name}: TRL's default {default!r} is refused"


def test_a_trl_config_at_its_defaults_is_accepted_and_reads_back():
    """A TRL script that spells out every GRPOConfig field at its default gets our defaults (bar
    the two where TRL's value is a setting of ours), and reads every TRL name back."""
    defaults = trl_defaults()
    cfg, ours = G2RPOConfig(**defaults), G2RPOConfig()
    differ = {n for n in G2RPOConfig.field_names() if getattr(cfg, n) != getattr(ours, n)}
    # TRL's true (with beta 0); ddp_timeout 1800; gradient checkpointing on (ours: auto, on for CUDA)
    assert differ == {"use_bias_correction_kl", "dist_timeout_s", "gradient_checkpointing"}
    assert cfg.dist_timeout_s == 1800 and cfg.ddp_timeout == 1800
    for name, default in defaults.items():  # an alias reads back its field's value (tested below)
        if name not in ("output_dir", "fsdp", "use_bias_correction_kl", "gradient_checkpointing") \
                and name not in trl_names.ALIASES:
            assert _same(getattr(cfg, name), default), name
    assert cfg.output_dir == "trainer_output" and cfg.fsdp is False


@pytest.mark.parametrize("name", sorted(n for n, (accepted, _) in trl_names.UNSUPPORTED.items()
                                        if trl_names.ANY not in accepted))
def test_unsupported_names_are_refused_with_the_reason_unless_at_their_no_op_value(name):
    accepted, reason = trl_names.UNSUPPORTED[name]
    G2RPOConfig(**{name: accepted[0]})  # TRL's default: accepted
    with pytest.raises(ValueError, match=rf"^`{name}`: .* is not supported \({re.escape(reason)}\)"):
        G2RPOConfig(**{name: "something else"})


def test_unknown_names_are_refused_by_name_with_the_closest_ones():
    with pytest.raises(ValueError, match=r"^`learning_rat`: unknown configuration field \(did you mean "
                                         r"'learning_rate'"):
        G2RPOConfig(learning_rat=1e-5)
    with pytest.raises(ValueError, match=r"^`zzz`: unknown configuration field; see docs/TRL_COMPAT.md"):
        G2RPOConfig.from_dict({"zzz": 1})


def test_aliases_set_our_fields_and_contradictions_name_both():
    assert G2RPOConfig(use_cpu=True).device == "cpu" and G2RPOConfig(use_cpu=True).use_cpu is True
    assert G2RPOConfig(fp16=True).torch_dtype == "float16"
    assert G2RPOConfig(disable_tqdm=True).progress_bar is False and G2RPOConfig().disable_tqdm is None
    assert G2RPOConfig(ddp_timeout=90).dist_timeout_s == 90
    assert G2RPOConfig(shuffle_dataset=False).curriculum is True
    assert G2RPOConfig(train_sampling_strategy="sequential").curriculum is True
    assert G2RPOConfig(activation_checkpointing=False).gradient_checkpointing == "false"
    with pytest.raises(ValueError, match=r"`use_cpu` \(True\) and `device` \('cuda'\) disagree"):
        G2RPOConfig(use_cpu=True, device="cuda")
    with pytest.raises(ValueError, match=r"`fp16` \(True\) and `torch_dtype` \('bfloat16'\) disagree"):
        G2RPOConfig(fp16=True, torch_dtype="bfloat16")
    with pytest.raises(ValueError, match="`train_sampling_strategy`: 'group_by_length' is not supported"):
        G2RPOConfig(train_sampling_strategy="group_by_length")


def test_trl_value_spellings_of_our_fields():
    assert G2RPOConfig(bf16=True).torch_dtype == "bfloat16" and G2RPOConfig(bf16=False).torch_dtype == "float32"
    with pytest.raises(ValueError, match=r"`bf16` \(True\) and `torch_dtype` \(float32\) disagree"):
        G2RPOConfig(bf16=True, torch_dtype="float32")
    assert G2RPOConfig(scale_rewards=True).scale_rewards == "group"
    assert G2RPOConfig(scale_rewards=False).scale_rewards == "none"
    cfg = G2RPOConfig(fsdp="full_shard auto_wrap offload")
    assert cfg.fsdp is True and cfg.fsdp_cpu_offload is True
    assert G2RPOConfig(fsdp="").fsdp is False and G2RPOConfig(fsdp=["full_shard"]).fsdp is True
    with pytest.raises(ValueError, match="`fsdp`: 'hybrid_shard' is not supported"):
        G2RPOConfig(fsdp="hybrid_shard")
    assert G2RPOConfig("out").output_dir == "out" and G2RPOConfig(output_dir=None).output_dir == "trainer_output"
    assert G2RPOConfig(report_to=["tensorboard", "none"]).report_targets == ["tensorboard"]
    with pytest.raises(ValueError, match=r"`eval_steps` \(5\) is set but `eval_strategy` is 'no'"):
        G2RPOConfig(eval_steps=5)
    with pytest.raises(ValueError, match=r"`steps_per_generation` .* is not supported"):
        G2RPOConfig(steps_per_generation=4, gradient_accumulation_steps=2)
    assert G2RPOConfig(steps_per_generation=2, gradient_accumulation_steps=2).steps_per_generation == 2
    with pytest.raises(ValueError, match="`use_bias_correction_kl`: the KL times the importance ratio"):
        G2RPOConfig(use_bias_correction_kl=True, beta=0.04)
    with pytest.raises(ValueError, match="`lr_scheduler_type` reduce_lr_on_plateau steps on the held-out accuracy"):
        G2RPOConfig(lr_scheduler_type="reduce_lr_on_plateau")
    with pytest.raises(ValueError, match="`max_steps` must be -1"):
        G2RPOConfig(max_steps=0)
    with pytest.raises(ValueError, match="`warmup_steps` must be a whole number"):
        G2RPOConfig(warmup_steps=2.5)
    with pytest.raises(ValueError, match="`logging_steps` must be an int"):
        G2RPOConfig(logging_steps=0.1)  # TRL's fraction of the run: refused by name


def test_every_get_scheduler_name_is_accepted_and_builds():
    import torch
    from transformers.trainer_utils import SchedulerType

    from g2rpo_fast.trainer.optimize import make_scheduler, steps_on_metric

    assert set(CHOICES["lr_scheduler_type"]) == {s.value for s in SchedulerType}
    needs = {"cosine_with_min_lr": {"min_lr_rate": 0.1}, "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
             "warmup_stable_decay": {"num_decay_steps": 3}}
    for name in CHOICES["lr_scheduler_type"]:
        metric = name in ("reduce_lr_on_plateau", "greedy")
        cfg = G2RPOConfig(lr_scheduler_type=name, lr_scheduler_kwargs=needs.get(name), warmup_steps=0.2,
                          eval_strategy="steps" if metric else "no", learning_rate=1.0)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = make_scheduler(cfg, optimizer, total_steps=10)
        assert steps_on_metric(scheduler) == metric, name
        if metric:
            assert scheduler.mode == "max"  # it watches eval_accuracy: higher is better
        elif name != "constant":  # warming up: warmup_steps 0.2 of 10 steps = 2
            assert optimizer.param_groups[0]["lr"] < 1.0, name
    with pytest.raises(ValueError, match="`lr_scheduler_kwargs`: cosine_with_min_lr cannot be built"):
        make_scheduler(G2RPOConfig(lr_scheduler_type="cosine_with_min_lr"),
                       torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 10)


def test_the_command_line_takes_underscores_dashes_and_trl_names():
    from g2rpo_fast.cli import _config_from_args, build_parser

    parse = build_parser().parse_args
    dashed = _config_from_args(parse(["train", "--model-name-or-path", "m", "--learning-rate", "3e-6",
                                      "--per-device-train-batch-size", "16", "--report-to", "tensorboard"]))
    underscored = _config_from_args(parse(["train", "--model_name_or_path", "m", "--learning_rate", "3e-6",
                                           "--per_device_train_batch_size", "16", "--report_to", "[tensorboard]"]))
    assert dataclasses.replace(dashed, report_to=["tensorboard"]) == underscored
    assert underscored.learning_rate == 3e-6 and underscored.per_device_train_batch_size == 16
    trl_style = _config_from_args(parse(["train", "--model_name_or_path", "m", "--use_cpu", "--disable_tqdm", "true",
                                         "--max_steps", "5", "--output_dir", "o", "--per_device_eval_batch_size",
                                         "4"]))
    assert trl_style.device == "cpu" and trl_style.progress_bar is False and trl_style.max_steps == 5
    assert trl_style.output_dir == "o" and trl_style.per_device_eval_batch_size == 4
    # a model of the user's without --config: TRL's defaults; the built-in model: its preset
    assert trl_style.learning_rate == 1e-6 and trl_style.temperature == 1.0
    assert _config_from_args(parse(["train"])) == G2RPOConfig.from_yaml(None)
    with pytest.raises(ValueError, match=r"`push_to_hub`: True is not supported \(no hub upload"):
        _config_from_args(parse(["train", "--model_name_or_path", "m", "--push_to_hub"]))
