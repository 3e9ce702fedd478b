"""The `train`, `eval` and `opro` flags: every spelling documented before the flags were generated
from the typed configs is still accepted with the same meaning, and config -> argv -> parsed config
is the identity."""

from __future__ import annotations

import argparse
import importlib
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from engine import cli, cliargs
from engine.config import (BASE_CACHE_MODES, CHECKPOINT_POLICIES, CONTROLS, DEVICES, DTYPES, GRAD_CHECKPOINTING,
                           MODEL_LINEAR_NAMES, PREFIX_CACHE_MODES, QUANTIZATIONS, SCHEDULERS, SCORING_COMPILE_MODES,
                           TARGET_PRESETS, ConfigError, EvalConfig, TrainConfig)
from engine.tasks.opro import OproSettings
from engine.tasks.train import config_from_args, rank_argv, train_argv


def parser_for(command: str) -> argparse.ArgumentParser:
    module_name, prefix = cli.COMMANDS[command][0].split(":")
    parser = argparse.ArgumentParser(prog=f"python -m engine {command}")
    getattr(importlib.import_module(module_name), f"{prefix}_arguments")(parser)
    return parser


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    return parser_for(command).parse_args(cli._underscores_to_dashes(argv))


def words(value) -> list[str]:
    """Label words as a list, whether the namespace holds "A,B" or ["A", "B"]."""
    return [w.strip() for w in value.split(",")] if isinstance(value, str) else list(value)


# (flag, value given, namespace attribute, value expected there), from `python -m engine train --help`
# as it was before the flags were generated (README "Command line" documents them).
TRAIN_FLAGS = [
    ("--config", "c.yaml", "config", "c.yaml"),
    ("--run-dir", "runs/x", "run_dir", "runs/x"),
    ("--output-dir", "runs/x", "run_dir", "runs/x"),
    ("--runs-dir", "ws", "runs_dir", "ws"),
    ("--name", "n1", "name", "n1"),
    ("--label", "Attention-Only", "label", "Attention-Only"),
    ("--model", "tiny", "model", "tiny"),
    ("--quantization", "8bit", "quantization", "8bit"),
    ("--lora-r", "8", "lora_r", 8),
    ("--lora-alpha", "16", "lora_alpha", 16.0),
    ("--lora-dropout", "0.1", "lora_dropout", 0.1),
    ("--targets", "q_proj,v_proj", "targets", "q_proj,v_proj"),
    ("--add-mlp-targets", None, "add_mlp_targets", True),
    ("--seed", "7", "seed", 7),
    ("--num-epochs", "2", "epochs", 2.0),
    ("--epochs", "2.5", "epochs", 2.5),
    ("--max-steps", "10", "max_steps", 10),
    ("--per-device-train-batch-size", "4", "per_device_batch", 4),
    ("--gradient-accumulation-steps", "2", "grad_accum", 2),
    ("--learning-rate", "0.001", "learning_rate", 0.001),
    ("--warmup-ratio", "0.1", "warmup_ratio", 0.1),
    ("--scheduler", "cosine", "scheduler", "cosine"),
    ("--train-csv", "t.csv", "train_data", "t.csv"),
    ("--train-data", "t.csv", "train_data", "t.csv"),
    ("--val-csv", "v.csv", "val_data", "v.csv"),
    ("--val-data", "v.csv", "val_data", "v.csv"),
    ("--filter-duration", "200:2000", "filter_duration", "200:2000"),
    ("--filter-snr", "0:", "filter_snr", "0:"),
    ("--prompt", "Speech?", "prompt", "Speech?"),
    ("--label-words", "YES,NO", "label_words", ["YES", "NO"]),
    ("--skip-bad-audio", None, "skip_bad_audio", True),
    ("--checkpoints", "epoch", "checkpoints", "epoch"),
    ("--device", "cpu", "device", "cpu"),
    ("--dtype", "float32", "dtype", "float32"),
    ("--gradient-checkpointing", "on", "gradient_checkpointing", "on"),
    ("--num-gpus", "2", "num_processes", 2),
    ("--num-processes", "2", "num_processes", 2),
    ("--json", None, "json", True),
]
EVAL_BASE = ["--base", "--test-csv", "t.csv"]
EVAL_FLAGS = [
    ("--run", "r1", "run", "r1"),
    ("--checkpoint", "adapter", "checkpoint", "adapter"),
    ("--base", None, "base", True),
    ("--test-csv", "x.csv", "test_data", "x.csv"),
    ("--test-data", "x.csv", "test_data", "x.csv"),
    ("--name", "held-out", "name", "held-out"),
    ("--run-name", "base-eval", "run_name", "base-eval"),
    ("--runs-dir", "ws", "runs_dir", "ws"),
    ("--model", "tiny", "model", "tiny"),
    ("--quantization", "none", "quantization", "none"),
    ("--device", "cuda", "device", "cuda"),
    ("--dtype", "bfloat16", "dtype", "bfloat16"),
    ("--batch-size", "4", "batch_size", 4),
    ("--padding-side", "right", "padding_side", "right"),
    ("--prompt", "Speech?", "prompt", "Speech?"),
    ("--prompt-from", "opro-r1", "prompt_from", "opro-r1"),
    ("--label-words", "YES,NO", "label_words", ["YES", "NO"]),
    ("--threshold", "0.3", "threshold", 0.3),
    ("--threshold-from", "val", "threshold_from", "val"),
    ("--control", "silence", "control", "silence"),
    ("--base-cache", "on", "base_cache", "on"),
    ("--prefix-cache", "off", "prefix_cache", "off"),
    ("--compile", "on", "compile", "on"),
    ("--save-predictions", "p.csv", "save_predictions", "p.csv"),
    ("--json", None, "json", True),
]
EVAL_DEFAULTS = {"name": "test", "device": "auto", "dtype": "auto", "batch_size": 8, "padding_side": "left",
                 "run": None, "checkpoint": None, "quantization": None, "prompt": None, "prompt_from": None,
                 "label_words": None, "threshold": None, "threshold_from": None, "control": None,
                 "save_predictions": None, "runs_dir": None, "run_name": None, "model": None, "json": False,
                 "base_cache": "auto", "prefix_cache": "on", "compile": "auto"}
OPRO_BASE = ["--base", "--dev-csv", "d.csv"]
OPRO_FLAGS = [
    ("--run", "r1", "run", "r1"),
    ("--base", None, "base", True),
    ("--dev-csv", "x.csv", "dev_data", "x.csv"),
    ("--dev-data", "x.csv", "dev_data", "x.csv"),
    ("--test-csv", "t.csv", "test_data", "t.csv"),
    ("--test-data", "t.csv", "test_data", "t.csv"),
    ("--iterations", "5", "iterations", 5),
    ("--candidates", "2", "candidates", 2),
    ("--proposer", "self", "proposer", "self"),
    ("--seed", "3", "seed", 3),
    ("--model", "tiny", "model", "tiny"),
    ("--quantization", "8bit", "quantization", "8bit"),
    ("--prompt", "Speech?", "prompt", "Speech?"),
    ("--label-words", "YES,NO", "label_words", ["YES", "NO"]),
    ("--batch-size", "4", "batch_size", 4),
    ("--max-prompt-chars", "120", "max_prompt_chars", 120),
    ("--top-k", "5", "top_k", 5),
    ("--device", "cpu", "device", "cpu"),
    ("--dtype", "float32", "dtype", "float32"),
    ("--run-name", "opro-x", "run_name", "opro-x"),
    ("--run-dir", "ws/opro-x", "run_dir", "ws/opro-x"),
    ("--runs-dir", "ws", "runs_dir", "ws"),
    ("--json", None, "json", True),
]
OPRO_DEFAULTS = {"iterations": 3, "candidates": 4, "batch_size": 8, "max_prompt_chars": 300, "top_k": 10,
                 "device": "auto", "dtype": "auto", "run": None, "test_data": None, "proposer": None, "seed": None,
                 "model": None, "quantization": None, "prompt": None, "label_words": None, "run_name": None,
                 "run_dir": None, "runs_dir": None, "json": False}


def _check(command, base, flag, value, attr, expected, spelling):
    given = flag if spelling == "dashes" else "--" + flag[2:].replace("-", "_")
    # --run and --checkpoint replace the base argv's --base (the three are mutually exclusive)
    argv = [a for a in base if not (a == "--base" and flag in ("--run", "--checkpoint"))]
    argv += [given] + ([value] if value is not None else [])
    got = getattr(parse(command, argv), attr)
    if attr == "label_words":
        got = words(got)
    elif hasattr(got, "__fspath__"):
        got = str(got)
    assert got == expected, (flag, got)


@pytest.mark.parametrize("spelling", ["dashes", "underscores"])
@pytest.mark.parametrize("flag, value, attr, expected", TRAIN_FLAGS, ids=[f[0] for f in TRAIN_FLAGS])
def test_every_train_flag_is_accepted(flag, value, attr, expected, spelling):
    _check("train", [], flag, value, attr, expected, spelling)


@pytest.mark.parametrize("spelling", ["dashes", "underscores"])
@pytest.mark.parametrize("flag, value, attr, expected", EVAL_FLAGS, ids=[f[0] for f in EVAL_FLAGS])
def test_every_eval_flag_is_accepted(flag, value, attr, expected, spelling):
    _check("eval", EVAL_BASE, flag, value, attr, expected, spelling)


@pytest.mark.parametrize("spelling", ["dashes", "underscores"])
@pytest.mark.parametrize("flag, value, attr, expected", OPRO_FLAGS, ids=[f[0] for f in OPRO_FLAGS])
def test_every_opro_flag_is_accepted(flag, value, attr, expected, spelling):
    _check("opro", OPRO_BASE, flag, value, attr, expected, spelling)


def test_eval_and_opro_defaults_are_unchanged():
    args = vars(parse("eval", EVAL_BASE))
    assert {k: args[k] for k in EVAL_DEFAULTS} == EVAL_DEFAULTS
    args = vars(parse("opro", OPRO_BASE))
    assert {k: args[k] for k in OPRO_DEFAULTS} == OPRO_DEFAULTS


@pytest.mark.parametrize("command, argv, words_in_error", [
    ("eval", ["--test-csv", "t.csv"], "one of the arguments --run --checkpoint --base is required"),
    ("eval", ["--run", "r", "--base", "--test-csv", "t.csv"], "not allowed with argument"),
    ("eval", ["--base"], "--test-csv"),
    ("eval", [*EVAL_BASE, "--prompt", "p", "--prompt-from", "o"], "not allowed with argument"),
    ("eval", [*EVAL_BASE, "--control", "noise"], "invalid choice"),
    ("eval", [*EVAL_BASE, "--compile", "graphs"], "invalid choice"),
    ("opro", ["--dev-csv", "d.csv"], "one of the arguments --run --base is required"),
    ("opro", ["--base"], "--dev-csv"),
    ("train", ["--quantization", "3bit"], "invalid choice"),
    ("train", ["--lora-r", "many"], "invalid int value"),
])
def test_usage_errors_are_unchanged(command, argv, words_in_error, capsys):
    with pytest.raises(SystemExit):
        parse(command, argv)
    assert words_in_error in capsys.readouterr().err


# ---------------------------------------------------------------------------- config -> argv -> config

EXISTING = str(Path(__file__).resolve())  # train_data must exist; any file will do
# Text a user may type, including leading dashes, underscores, quotes, "=" and commas.
# Not exactly "--": argparse (3.11) drops that one value even as --flag=--.
TEXT = st.text(st.sampled_from("abcXYZ019 -_=,.:'\"?/é"), min_size=1, max_size=12).filter(lambda t: t != "--")
NON_BLANK = TEXT.filter(lambda t: t.strip())
WORD = st.text(st.sampled_from("ABCxyz09_-é"), min_size=1, max_size=8).filter(lambda w: w != "--")
FRACTION = st.floats(0, 1, exclude_max=True, allow_nan=False)
POSITIVE = st.floats(1e-6, 1e6, allow_nan=False) | st.integers(1, 10**6)
SPEC = st.sampled_from(["500:3000", ":20", "0:", "1,2,3", "-5:5"])


@st.composite
def train_configs(draw) -> TrainConfig:
    modules = st.lists(st.sampled_from(sorted(MODEL_LINEAR_NAMES)), min_size=1, max_size=4, unique=True)
    cfg = TrainConfig(
        label=draw(st.just("") | TEXT), model=draw(NON_BLANK), quantization=draw(st.sampled_from(QUANTIZATIONS)),
        targets=draw(st.sampled_from(sorted(TARGET_PRESETS)) | modules), lora_r=draw(st.integers(1, 512)),
        lora_alpha=draw(POSITIVE), lora_dropout=draw(FRACTION), seed=draw(st.integers(0, 2**31)),
        epochs=draw(POSITIVE), max_steps=draw(st.none() | st.integers(1, 10**6)),
        per_device_batch=draw(st.integers(1, 64)), grad_accum=draw(st.integers(1, 64)),
        learning_rate=draw(st.floats(1e-9, 0.5, allow_nan=False)), warmup_ratio=draw(FRACTION),
        scheduler=draw(st.sampled_from(SCHEDULERS)), prompt=draw(NON_BLANK),
        label_words=draw(st.lists(WORD, min_size=2, max_size=2, unique=True)),
        train_data=EXISTING, val_data=draw(st.sampled_from(["", EXISTING])),
        filters=draw(st.dictionaries(st.sampled_from(["duration_ms", "snr_db"]), SPEC)),
        skip_bad_audio=draw(st.booleans()), checkpoints=draw(st.sampled_from(CHECKPOINT_POLICIES)),
        device=draw(st.sampled_from(DEVICES)), dtype=draw(st.sampled_from(DTYPES)),
        gradient_checkpointing=draw(st.sampled_from(GRAD_CHECKPOINTING)), num_processes=draw(st.integers(1, 8)))
    return cfg.validate()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(train_configs(), st.booleans())
def test_train_config_round_trips_through_its_flags(cfg, every_field):
    flags, leftovers = train_argv(cfg, every_field=every_field)
    assert leftovers == []  # only fields with a flag (and flagged filter columns) were drawn
    assert config_from_args(parse("train", flags)) == cfg


@st.composite
def eval_configs(draw) -> EvalConfig:
    target = draw(st.sampled_from(["run", "checkpoint", "base"]))
    prompt_kind = draw(st.sampled_from([None, "prompt", "prompt_from"]))
    optional_text = st.none() | TEXT
    cfg = EvalConfig(
        run=draw(TEXT) if target == "run" else None,
        checkpoint=Path(draw(WORD)) if target == "checkpoint" else None, base=target == "base",
        model=draw(optional_text), runs_dir=draw(st.none() | st.just(Path("ws/a b"))), run_name=draw(optional_text),
        quantization=draw(st.none() | st.sampled_from(QUANTIZATIONS)), test_data=draw(NON_BLANK),
        name=draw(WORD), batch_size=draw(st.integers(1, 256)), control=draw(st.none() | st.sampled_from(CONTROLS)),
        threshold_from=draw(optional_text), prompt=draw(TEXT) if prompt_kind == "prompt" else None,
        prompt_from=draw(TEXT) if prompt_kind == "prompt_from" else None,
        label_words=draw(st.none() | st.lists(WORD, min_size=2, max_size=2, unique=True)),
        threshold=draw(st.none() | st.floats(0, 1)), device=draw(st.sampled_from(DEVICES)),
        dtype=draw(st.sampled_from(DTYPES)), padding_side=draw(st.sampled_from(["left", "right"])),
        base_cache=draw(st.sampled_from(BASE_CACHE_MODES)), prefix_cache=draw(st.sampled_from(PREFIX_CACHE_MODES)),
        compile=draw(st.sampled_from(SCORING_COMPILE_MODES)),
        save_predictions=draw(st.none() | st.just(Path("out/p.jsonl"))))
    return cfg.validate()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(eval_configs())
def test_eval_config_round_trips_through_its_flags(cfg):
    argv = cliargs.config_to_argv(cfg)
    assert cliargs.config_from_namespace(EvalConfig, parse("eval", argv)) == cfg


@st.composite
def opro_settings(draw) -> OproSettings:
    on_run = draw(st.booleans())
    optional_text = st.none() | TEXT
    settings_ = OproSettings(
        run=draw(TEXT) if on_run else None, base=not on_run, model=draw(optional_text), dev_data=draw(NON_BLANK),
        test_data=draw(optional_text), iterations=draw(st.integers(1, 20)), candidates=draw(st.integers(1, 20)),
        proposer=draw(optional_text), seed=draw(st.none() | st.integers(0, 2**31)),
        run_dir=draw(st.none() | st.just(Path("ws/opro-x"))), batch_size=draw(st.integers(1, 64)),
        quantization=draw(st.none() | st.sampled_from(QUANTIZATIONS)), prompt=draw(optional_text),
        label_words=draw(st.none() | st.lists(WORD, min_size=2, max_size=2, unique=True)),
        max_prompt_chars=draw(st.integers(40, 2000)), top_k=draw(st.integers(1, 50)),
        device=draw(st.sampled_from(DEVICES)), dtype=draw(st.sampled_from(DTYPES)), run_name=draw(optional_text),
        runs_dir=draw(st.none() | st.just(Path("ws"))))
    settings_.check()
    return settings_


@settings(max_examples=150, deadline=None, derandomize=True)
@given(opro_settings())
def test_opro_settings_round_trip_through_their_flags(settings_):
    argv = cliargs.config_to_argv(settings_)
    assert cliargs.config_from_namespace(OproSettings, parse("opro", argv)) == settings_


def test_a_value_starting_with_a_dash_is_not_read_as_a_flag():
    cfg = EvalConfig(base=True, test_data="t.csv", prompt="-- speech or not? --").validate()
    argv = cliargs.config_to_argv(cfg)
    assert "--prompt=-- speech or not? --" in argv
    assert parse("eval", argv).prompt == "-- speech or not? --"


def test_ranks_resolve_the_same_config_as_the_launching_process(tmp_path):
    """--config sets what no flag can; flags given override it; the ranks' argv keeps both."""
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"lora_r": 8, "system_prompt": "Be brief.", "skip_bad_audio": True,
                                      "filters": {"duration_ms": "100:200", "condition": "1,2"},
                                      "train_data": EXISTING}), encoding="utf-8")
    args = parse("train", ["--config", str(config), "--lora-r", "16", "--no-skip-bad-audio", "--num-gpus", "2",
                           "--filter-duration", "300:400", "--add-mlp-targets", "--json"])
    cfg = config_from_args(args)
    assert (cfg.lora_r, cfg.system_prompt, cfg.skip_bad_audio, cfg.targets) == (16, "Be brief.", False,
                                                                               "attention+mlp")
    assert cfg.filters == {"duration_ms": "300:400", "condition": "1,2"}
    argv = rank_argv(args, cfg, tmp_path / "run")
    assert argv[0] == "train" and argv[-2:] == ["--run-dir", str(tmp_path / "run")] and "--json" in argv
    rank_args = parse("train", argv[1:])
    assert config_from_args(rank_args) == cfg and rank_args.json


@pytest.mark.parametrize("cfg, field, words", [
    (EvalConfig(test_data="t.csv"), "target", "exactly one of --run RUN, --checkpoint FOLDER and --base"),
    (EvalConfig(run="r", base=True, test_data="t.csv"), "target", "exactly one"),
    (EvalConfig(base=True), "test_data", "is required"),
    (EvalConfig(base=True, test_data="t.csv", batch_size=0), "batch_size", ">= 1"),
    (EvalConfig(base=True, test_data="t.csv", threshold=1.5), "threshold", "[0, 1]"),
    (EvalConfig(base=True, test_data="t.csv", control="noise"), "control", "silence, shuffle"),
    (EvalConfig(base=True, test_data="t.csv", compile="graphs"), "compile", "auto, on, off"),
    (EvalConfig(base=True, test_data="t.csv", label_words=["YES", "YES"]), "label_words", "differ"),
])
def test_eval_config_names_the_bad_field(cfg, field, words):
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    assert err.value.field == field and str(err.value).startswith(f"{field}: ") and words in str(err.value)


@pytest.mark.parametrize("changes, field, words", [
    ({"base": False}, "target", "give exactly one of --run RUN and --base"),
    ({"dev_data": " "}, "dev_data", "is required"),
    ({"iterations": 0}, "iterations", "at least 1"),
    ({"max_prompt_chars": 39}, "max_prompt_chars", "at least 40"),
    ({"quantization": "3bit"}, "quantization", "4bit, 8bit, none"),
])
def test_opro_settings_name_the_bad_field(changes, field, words):
    with pytest.raises(ConfigError) as err:
        replace(OproSettings(base=True, dev_data="d.csv"), **changes).check()
    assert err.value.field == field and words in str(err.value)


def test_every_config_field_with_a_flag_has_help():
    for cls in (TrainConfig, EvalConfig, OproSettings):
        docs = cliargs.field_docs(cls)
        assert [f.name for f in cliargs.flag_fields(cls) if not docs.get(f.name)] == [], cls.__name__


def test_a_default_written_in_a_help_text_is_the_fields_default():
    import re

    checked = 0
    for cls in (TrainConfig, EvalConfig, OproSettings):
        docs = cliargs.field_docs(cls)
        for f in cliargs.flag_fields(cls):
            stated = re.search(r"\(default:? ([\w.]+)\)", docs.get(f.name, ""))
            if stated:
                assert stated.group(1) == cliargs.format_value(cliargs.field_default(f)), (cls.__name__, f.name)
                checked += 1
    assert checked >= 8  # name, batch sizes, padding side, iterations, candidates, max_prompt_chars, top_k
