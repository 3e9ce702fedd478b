"""How fast the review pages render with 1,000 run folders.

Builds a temporary workspace of synthetic but well-formed runs (250 configurations x 4 seeds of
training-like runs with metrics, summary and a 32-clip test evaluation written by
engine.runs.predictions.write_evaluation, a few imported runs and baselines), then renders the
Overview and Compare pages with Streamlit's AppTest: once cold, then 3 warm reruns, and prints
the times with the machine. Target: under 2 s warm.

    /work/venv/bin/python benchmarks/bench_dashboard.py [--runs 1000] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.runs import folder as rf  # noqa: E402
from engine.runs.predictions import NONSPEECH, SPEECH, make_record, write_evaluation  # noqa: E402

N_CLIPS = 32
SEEDS = (42, 123, 456, 789)
N_BASELINES = 3
N_IMPORTED = 20
STEPS = 48
WARM_RUNS = 3


def synthetic_records(rng: np.random.Generator, skill: float) -> list[dict]:
    """32 clips, 16 per class; p_speech drawn around the gold label with `skill` separation."""
    records = []
    for i in range(N_CLIPS):
        label = SPEECH if i < N_CLIPS // 2 else NONSPEECH
        centre = 0.5 + (skill if label == SPEECH else -skill)
        p = float(np.clip(rng.normal(centre, 0.2), 0.001, 0.999))
        records.append(make_record(f"test/clip_{i:03d}.wav", f"/nonexistent/clip_{i:03d}.wav", label, p,
                                   float(np.log(p / (1 - p))), 1.0 + (i % 5) * 0.25,
                                   {"snr_db": (-5, 0, 5, 10)[i % 4], "duration_ms": 1000 + (i % 5) * 250}))
    return records


def make_run(root: Path, name: str, config: dict, rng: np.random.Generator, skill: float,
             training: bool) -> None:
    run_dir = root / name
    run_dir.mkdir()
    rf.atomic_write_json(run_dir / rf.CONFIG, {"schema_version": rf.SCHEMA_VERSION, **config})
    if training:
        loss = 6.0 * np.exp(-np.arange(1, STEPS + 1) / (20 + 40 * rng.random())) + 4.5
        rf.write_jsonl(run_dir / rf.METRICS, [{"step": s, "epoch": round(s / 12, 4), "loss": float(v),
                                              "total_steps": STEPS} for s, v in enumerate(loss, 1)])
        rf.atomic_write_json(run_dir / rf.SUMMARY, {"trainable_params": 28672, "total_params": 370432,
                                                    "trainable_percent": 7.74, "adapter_mb": 0.119,
                                                    "steps": STEPS, "final_train_loss": float(loss[-1])})
        (run_dir / rf.ADAPTER_DIR).mkdir()
        (run_dir / rf.ADAPTER_DIR / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    write_evaluation(run_dir, "test", synthetic_records(rng, skill), {"producer": {"kind": "benchmark"}})
    rf.write_status(run_dir, rf.SUCCEEDED)


def build_workspace(root: Path, n_runs: int) -> dict:
    rng = np.random.default_rng(0)
    made = 0
    n_train = n_runs - N_BASELINES - N_IMPORTED
    n_configs = -(-n_train // len(SEEDS))
    for c in range(n_configs):
        config = {"kind": rf.KIND_TRAIN, "label": f"Config {c:03d}", "model": "tiny", "lora_r": 4 * (1 + c % 8),
                  "targets": "attention" if c % 2 else "attention+mlp", "learning_rate": 1e-4 * (1 + c % 5)}
        skill = 0.05 + 0.25 * rng.random()
        for seed in SEEDS:
            if made == n_train:
                break
            make_run(root, f"cfg{c:03d}-s{seed}", dict(config, seed=seed), rng, skill, training=True)
            made += 1
    for i in range(N_IMPORTED):
        make_run(root, f"imported-{i:02d}", {"kind": rf.KIND_IMPORTED, "label": f"Imported {i // 2}", "seed": i % 2},
                 rng, 0.2, training=False)
    for i in range(N_BASELINES):
        make_run(root, f"baseline-{i}", {"kind": rf.KIND_BASELINE, "label": f"VAD {i}", "method": "silero"},
                 rng, 0.15, training=False)
    return {"runs": made + N_IMPORTED + N_BASELINES, "picks": ["Config 000", "Config 001"]}


def time_page(path: str, query: dict) -> dict:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / path), default_timeout=300)
    at.query_params.update(query)
    started = time.perf_counter()
    at.run()
    cold = time.perf_counter() - started
    if at.exception:
        raise RuntimeError(f"{path}: {[e.value for e in at.exception]}")
    warm = []
    for _ in range(WARM_RUNS):
        started = time.perf_counter()
        at.run()
        warm.append(time.perf_counter() - started)
    fresh = AppTest.from_file(str(REPO / path), default_timeout=300)
    fresh.query_params.update(query)
    started = time.perf_counter()
    fresh.run()
    new_session = time.perf_counter() - started
    return {"cold": cold, "warm": warm, "new_session": new_session}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    try:
        started = time.perf_counter()
        built = build_workspace(root, args.runs)
        print(f"built {built['runs']} run folders in {root} in {time.perf_counter() - started:.1f} s")
        os.environ[rf.RUNS_ROOT_ENV] = str(root)
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
        results = {
            "Overview": time_page("pages/overview.py", {}),
            "Compare": time_page("pages/compare.py", {"configs": built["picks"]}),
            "Results": time_page("pages/results.py", {"config": built["picks"][0]}),
        }
        ok = True
        for name, r in results.items():
            median = statistics.median(r["warm"])
            ok &= max(r["warm"]) < 2.0
            print(f"{name:9s} cold {r['cold']:6.2f} s | warm {', '.join(f'{w:.2f}' for w in r['warm'])} s "
                  f"(median {median:.2f} s) | new session, warm caches {r['new_session']:.2f} s")
        print("target: warm < 2 s:", "met" if ok else "NOT met")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
