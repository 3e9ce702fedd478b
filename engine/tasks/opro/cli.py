"""`python -m engine opro ...`: the flags come from OproSettings; the work is search.optimise."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.runs import folder as rf
from engine.cliargs import add_config_arguments, config_from_namespace
from engine.config import ConfigError
from engine.tasks.opro.search import optimise, resolve_target
from engine.tasks.opro.settings import OproSettings


def opro_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, OproSettings)
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object")


def opro_main(args: argparse.Namespace) -> int:
    from engine.models import ModelError

    settings = config_from_namespace(OproSettings, args)
    root = rf.runs_root(args.run_dir.parent if args.run_dir and not args.runs_dir else args.runs_dir)
    try:
        settings.check()
        resolve_target(settings, root)  # a wrong run or label words fail before any folder is made
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            stem = args.run_name or (f"opro-{Path(args.run).name}" if args.run
                                     else f"opro-base-{Path(str(args.model or 'tiny')).name}")
            run_dir = rf.unique_run_dir(root, rf.check_run_name(stem[:120]))
        result = optimise(settings, run_dir, root)
    except (ConfigError, rf.RunFolderError, ValueError, OSError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result is None:
        print(f"cancelled: {run_dir} (history kept in {rf.OPRO_HISTORY})", file=sys.stderr)
        return 3  # as `train`: the run did not succeed
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), **result}, default=str))
    else:
        best, original = result["best"], result["original"]
        print(f"{run_dir}: best dev balanced accuracy {100 * best['balanced_accuracy']:.1f}% "
              f"(original {100 * original['balanced_accuracy']:.1f}%) after {result['candidates_scored']} prompts")
        print(f"best prompt: {best['prompt']}")
        if result["dev_to_test"]:
            drop = result["dev_to_test"]["best"]
            print(f"test balanced accuracy {100 * drop['test_balanced_accuracy']:.1f}% "
                  f"(dev-to-test drop {drop['drop_pts']:+.1f} pts)")
    return 0
