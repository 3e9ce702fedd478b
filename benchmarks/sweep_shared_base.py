"""A sweep trained by `engine.tasks.train_group.train_runs` (what `python -m engine train-group`
runs for a group the queue hands it), outside the queue: wall time of the whole group, and each
run's summary. Usage (GPU):

    python benchmarks/sweep_shared_base.py --model /tmp/q7b --train-data M.csv --runs-dir W \
        --targets attention,attention+mlp --seeds 42,123,456,789 --epochs 3 --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine.config import TrainConfig
from engine.runs import folder as rf
from engine.runs.lifecycle import StopSignal
from engine.tasks.train_group import Member, train_runs

KEYS = ("runtime_s", "train_time_s", "samples_per_s", "steps", "micro_batch", "grad_accum", "compile", "compiled_layers",
        "peak_gpu_memory_mb", "final_train_loss", "shared_base")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--train-data", required=True)
    p.add_argument("--runs-dir", type=Path, required=True)
    p.add_argument("--targets", default="attention,attention+mlp")
    p.add_argument("--seeds", default="42,123,456,789")
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    members = []
    for targets in args.targets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = TrainConfig(model=args.model, train_data=args.train_data, targets=targets, seed=seed, epochs=args.epochs)
            members.append(Member(cfg.validate(), args.runs_dir / f"group-{targets}-{seed}", StopSignal()))
    stop = StopSignal().install()
    started = time.time()
    train_runs(iter(members), stop)
    wall = time.time() - started
    runs = {}
    for member in members:
        summary = rf.read_json(member.run_dir / rf.SUMMARY) if (member.run_dir / rf.SUMMARY).is_file() else {}
        status = rf.read_status(member.run_dir)
        runs[member.run_dir.name] = {"state": status.get("state"), "error": status.get("error"),
                                     "files": sorted(p.relative_to(member.run_dir).as_posix()
                                                     for p in member.run_dir.rglob("*") if p.is_file()),
                                     "losses": [m["loss"] for m in rf.read_metrics(member.run_dir)],
                                     **{k: summary.get(k) for k in KEYS}}
    result = {"group_wall_s": round(wall, 1), "runs": runs}
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text)
    print("GROUP_WALL_S", round(wall, 1))
    for name, run in runs.items():
        print(name, run["state"], run["runtime_s"], run["samples_per_s"], run["compile"], run["micro_batch"],
              run["peak_gpu_memory_mb"], (run["shared_base"] or {}).get("lora"), run["error"] or "")


if __name__ == "__main__":
    main()
