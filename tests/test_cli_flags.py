"""The `train`, `eval` and `opro` flags: every spelling documented before the flags were generated
from the typed configs is still accepted with the same meaning, and config -> argv -> parsed config
is the identity."""

from __future__ import annotations

import argparse
import importlib

import pytest

from engine import cli


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
    ("--save-predictions", "p.csv", "save_predictions", "p.csv"),
    ("--json", None, "json", True),
]
EVAL_DEFAULTS = {"name": "test", "device": "auto", "dtype": "auto", "batch_size": 8, "padding_side": "left",
                 "run": None, "checkpoint": None, "quantization": None, "prompt": None, "prompt_from": None,
                 "label_words": None, "threshold": None, "threshold_from": None, "control": None,
                 "save_predictions": None, "runs_dir": None, "run_name": None, "model": None, "json": False}
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
    ("opro", ["--dev-csv", "d.csv"], "one of the arguments --run --base is required"),
    ("opro", ["--base"], "--dev-csv"),
    ("train", ["--quantization", "3bit"], "invalid choice"),
    ("train", ["--lora-r", "many"], "invalid int value"),
])
def test_usage_errors_are_unchanged(command, argv, words_in_error, capsys):
    with pytest.raises(SystemExit):
        parse(command, argv)
    assert words_in_error in capsys.readouterr().err
