"""`python -m engine COMMAND ...`: a thin argparse layer over plain functions.

Each command lives in the module that owns its work. The module is imported only when its
command runs, so `python -m engine summary` never pays for importing torch. A command entry
"module:prefix" means the module defines `prefix_arguments(parser)` and `prefix_main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("engine.tasks.train:train", "train a QLoRA adapter (writes a run folder)"),
    "train-group": ("engine.tasks.train_group:train_group",
                    "train queued runs of a group one after another over one loaded base (the queue starts it)"),
    "eval": ("engine.tasks.evaluate:eval", "logit-score a run, an adapter folder or the base model"),
    "opro": ("engine.tasks.opro.cli:opro", "optimise the instruction prompt of a frozen model on a dev set (OPRO)"),
    "params": ("engine.models.qwen2_audio.runtime:params", "count trainable/total parameters without weights"),
    "tiny": ("engine.models.qwen2_audio.tiny:tiny", "build the small random Qwen2-Audio model folder locally"),
    "import-predictions": ("engine.tasks.importing:import", "store predictions made by another tool as a run"),
    "baseline": ("engine.tasks.baselines:baseline", "run a classic VAD (silero, webrtc) as a baseline run"),
    "summary": ("engine.stats.cli:summary", "accuracy, intervals, confusion for one evaluation"),
    "mcnemar": ("engine.stats.cli:mcnemar", "paired McNemar test of two evaluations"),
    "seeds": ("engine.stats.cli:seeds", "aggregate a configuration over seeds"),
    "compare": ("engine.stats.cli:compare", "the Compare page's statistics for two (or three) configurations"),
    "demo": ("engine.tasks.demo:demo", "make the offline demo workspace (data, tiny runs, baseline)"),
    "queue": ("engine.jobs.worker:queue", "add a job to the workspace queue"),
    "worker": ("engine.jobs.worker:worker", "run queued jobs (started by the dashboard)"),
    "cancel": ("engine.jobs.worker:cancel", "cancel a queued or running job"),
    "disk": ("engine.ops.disk:disk", "disk usage of the workspace and model cache"),
    "bench": ("engine.tasks.bench:bench", "GPU benchmark: stock vs fast path (random-weight 7B)"),
}


def _load(spec: str):
    module_name, prefix = spec.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, f"{prefix}_arguments"), getattr(module, f"{prefix}_main")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top.parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    add_arguments, run = _load(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"python -m engine {name}", description=COMMANDS[name][1])
    add_arguments(parser)
    args = parser.parse_args(_underscores_to_dashes(rest))
    return int(run(args) or 0)


def _underscores_to_dashes(argv: list[str]) -> list[str]:
    """Accept `--lora_r` as well as `--lora-r`: users' existing scripts spell flags both ways."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            flag, eq, value = arg.partition("=")
            arg = flag.replace("_", "-") + eq + value
        out.append(arg)
    return out
