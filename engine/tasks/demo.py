"""The embedded demo: a real workspace made offline in about two minutes on 2 CPU cores.

Synthesises a varied SPEECH/NONSPEECH data set (engine.data.synth, style "varied": 16 espeak-ng
voices, some over noise, music, rain, wind or traffic, vs noise, music, drums, rain, wind, traffic,
tones, clicks, hum; telephone and low-pass channels, rooms and loudness changes for both), trains
LoRA adapters on the demo model (engine.models.qwen2_audio.demo_model: the tiny Qwen2-Audio
pre-trained once to name sound kinds, cached like the tiny model; 4-bit) for attention-only and
attention+MLP over three seeds, scores the val and 32-clip test sets (the test set at the
p(SPEECH) cut chosen on val), adds the Silero VAD baseline (its rule and threshold chosen on val), and
runs the prompt-optimisation 2x2 design (OPRO on the base model and on each attention+MLP seed,
chosen on a 32-clip val set, tested once on the test set). Everything is labelled as a demo: the model is not Qwen2-Audio's weights and the
data is synthetic, so the numbers show how the dashboard works, not how the 7B performs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from engine.runs import folder as rf
from engine.config import PRESET_LABELS, TrainConfig

DEMO_DATA_DIR = ".demo-data"  # hidden inside the workspace: not listed as a run
DEMO_SEEDS = (42, 123, 456)
DEMO_PRESETS = ("attention", "attention+mlp")
DEMO_DATA_STYLE = "varied"  # engine.data.synth.STYLES


def demo_base_model(say: Callable[[str], None] = print) -> str:
    """The demo runs' base model, built (once) if it is not cached yet. Runs record its name,
    `tiny-demo`, not this machine's cache folder, so a copied workspace re-scores elsewhere."""
    from engine.models.qwen2_audio import QWEN2_AUDIO
    from engine.models.qwen2_audio.demo_model import ensure_demo_model

    ensure_demo_model(say=say)
    return QWEN2_AUDIO.demo_model


def demo_config(preset: str, seed: int, train_manifest: Path, epochs: float = 4,
                val_manifest: Path | None = None, model: str = "tiny") -> TrainConfig:
    """The demo recipe: batches of 8, a high LR for a tiny model (docs/PERFORMANCE.md, "The demo's adapters")."""
    return TrainConfig(
        label=f"{PRESET_LABELS[preset]} (demo)", model=model, quantization="4bit", targets=preset, seed=seed,
        lora_r=16, lora_alpha=32, lora_dropout=0.0, epochs=epochs, per_device_batch=8, grad_accum=1,
        learning_rate=2e-3, warmup_ratio=0.0, train_data=str(train_manifest),
        val_data=str(val_manifest) if val_manifest else "", device="cpu")


def build_demo(runs_root: Path, seeds=DEMO_SEEDS, presets=DEMO_PRESETS, epochs: float = 4, baseline: bool = True,
               n_train: int = 192, n_test: int = 32, n_dev: int = 32, opro: bool = True,
               model: str | None = None, say: Callable[[str], None] = print) -> dict:
    """Make (or complete) the demo workspace; finished demo runs are kept, not redone.

    model: the base model of the demo runs (default: the demo model, built once; see demo_base_model).
    """
    from engine.data.synth import dataset_style, make_dataset
    from engine.tasks.train import train

    started = time.time()
    runs_root = Path(runs_root)
    runs_root.mkdir(parents=True, exist_ok=True)
    data_dir = runs_root / DEMO_DATA_DIR
    # Older demo folders lack val: regenerated (same seed, same train/test bytes). One of the older,
    # plain style is replaced only while no demo run was trained on it, so runs and data stay paired.
    plain_and_unused = dataset_style(data_dir) != DEMO_DATA_STYLE and not any(runs_root.glob("demo-*"))
    if not (data_dir / "val.csv").is_file() or plain_and_unused:
        say(f"synthesising demo audio into {data_dir} ...")
        make_dataset(data_dir, n_train=n_train, n_test=n_test, n_val=n_dev, seed=0, style=DEMO_DATA_STYLE)
    cells = [(p, s) for p in presets for s in seeds]
    if model is None and (cells or opro):
        model = demo_base_model(say)
    manifests = {split: data_dir / f"{split}.csv" for split in ("train", "test", "val")}
    results = []
    for i, (preset, seed) in enumerate(cells, 1):
        name = f"demo-{preset.replace('+', '-')}-s{seed}"
        run_dir = runs_root / name
        if (run_dir / rf.STATUS).is_file() and rf.read_status(run_dir).get("state") == rf.SUCCEEDED:
            say(f"[{i}/{len(cells)}] {name}: already done")
            continue
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # an unfinished demo run: redo it
        say(f"[{i}/{len(cells)}] training {name} ...")
        # val_data: validation after every epoch (the loss curve shows it) and the final "val"
        # evaluation. The adapters rank the clips long before their arg-max moves (docs/PERFORMANCE.md):
        # the test set's p(SPEECH) cut is chosen on val, as `eval --threshold-from val` does, and recorded.
        cfg = demo_config(preset, seed, manifests["train"], epochs, manifests["val"], model=model)
        train(cfg, run_dir, evaluate_on={"test": str(manifests["test"])}, threshold_from="val")
        acc = rf.read_json(rf.evaluation_dir(run_dir, "test") / rf.EVALUATION)["summary"]["accuracy"]
        results.append({"run": name, "test_accuracy": acc})
        say(f"[{i}/{len(cells)}] {name}: test accuracy {acc * 100:.1f}%")
    if baseline and not (runs_root / "demo-silero-vad").exists():
        from engine.tasks.baselines import run_baseline

        say("scoring the Silero VAD baseline ...")
        # The val split chooses Silero's clip rule and threshold, as a researcher would.
        run_baseline("silero", str(manifests["test"]), runs_root / "demo-silero-vad", val_data=str(manifests["val"]))
    if opro and "attention+mlp" in presets:
        opro_demo(runs_root, [f"demo-attention-mlp-s{seed}" for seed in seeds], manifests, say, base_model=model)
    elapsed = time.time() - started
    say(f"demo ready in {elapsed:.0f} s: {runs_root}")
    return {"runs_root": str(runs_root), "seconds": round(elapsed, 1), "runs": results}


def opro_demo(runs_root: Path, fine_tuned: list[str], manifests: dict[str, Path],
              say: Callable[[str], None] = print, base_model: str = "tiny") -> None:
    """The 2x2 prompt-optimisation design: OPRO (edit search, 2 x 4 candidates on the 32 val clips)
    for the base model (the fine-tuned runs' base) and for each fine-tuned run, each tested once on the test set."""
    from engine.tasks.opro import OproSettings, optimise

    targets = [("demo-opro-base", None), *((f"demo-opro-{name.removeprefix('demo-')}", name) for name in fine_tuned)]
    for i, (name, run) in enumerate(targets, 1):
        run_dir = runs_root / name
        if (run_dir / rf.STATUS).is_file() and rf.read_status(run_dir).get("state") == rf.SUCCEEDED:
            continue
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # an unfinished demo search: redo it
        say(f"[opro {i}/{len(targets)}] optimising the prompt for {run or 'the base model'} ...")
        settings = OproSettings(dev_data=str(manifests["val"]), test_data=str(manifests["test"]), run=run,
                                base=run is None, model=base_model if run is None else None, quantization="4bit",
                                iterations=2, candidates=4, device="cpu")
        result = optimise(settings, run_dir, runs_root)
        say(f"[opro {i}/{len(targets)}] {name}: dev balanced accuracy "
            f"{100 * result['original']['balanced_accuracy']:.1f}% -> {100 * result['best']['balanced_accuracy']:.1f}%")


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", type=Path, default=None, help="workspace (default: ./runs or $QLORA_DASH_RUNS)")
    p.add_argument("--seeds", default=",".join(map(str, DEMO_SEEDS)))
    p.add_argument("--epochs", type=float, default=4)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--no-opro", action="store_true", help="skip the prompt-optimisation runs")
    p.add_argument("--model-only", action="store_true",
                   help="only build the demo model (tiny-demo) into its cache, e.g. on a machine that got a copied workspace")
    p.add_argument("--json", action="store_true")


def demo_main(args: argparse.Namespace) -> int:
    import logging

    from engine.runs.lifecycle import set_console_level

    set_console_level(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else (lambda msg: print(msg, flush=True))
    if args.model_only:
        from engine.models.qwen2_audio.demo_model import ensure_demo_model

        path = ensure_demo_model(say=say)
        print(json.dumps({"path": str(path)}) if args.json else f"demo model ready: {path}")
        return 0
    result = build_demo(rf.runs_root(args.runs_dir), seeds=seeds, epochs=args.epochs,
                        baseline=not args.no_baseline, opro=not args.no_opro, say=say)
    if args.json:
        print(json.dumps(result))
    return 0
