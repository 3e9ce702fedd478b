"""GPU benchmark on the full-size Qwen2-Audio-7B architecture with random weights.

No weights can be downloaded here, so `build_random_7b` builds the public 7B config with random
bf16 weights once on local disk (with the tiny model's tokenizer: the vocabulary size stays
156,032, only the ids used differ) and every measurement then loads it through the normal
4-bit path. Random weights are fine for speed and memory and meaningless for accuracy.

    python -m engine bench --model-dir /tmp/q7b --build --train-steps 20 --score-clips 256 --out DIR

Measures, in one process and on the same clips:
- stock: the users' recipe (3000-frame input, micro-batch 2 x accumulation 8, gradient
  checkpointing, full-vocabulary logits and loss, peft's k-bit preparation with fp32 upcast);
- fast: the engine's path (trimmed encoder input, logits only at answer/scored positions,
  no upcast), with the whole effective batch in one micro-batch when it fits.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.audio import SAMPLE_RATE
from engine.labels import CLASSES
from engine.runs import folder as rf


def build_random_7b(out_dir: Path) -> Path:
    """Save the 7B architecture with random bf16 weights (about 16.8 GB) and a processor."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

    from engine.models.qwen2_audio import QWEN2_AUDIO
    from engine.models.qwen2_audio.tiny import ensure_tiny_model

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    tiny = ensure_tiny_model()
    processor = Qwen2AudioProcessor.from_pretrained(tiny)
    config = Qwen2AudioConfig(**{**copy.deepcopy(dict(QWEN2_AUDIO.reference_config)),
                                 "audio_token_index": processor.tokenizer.convert_tokens_to_ids(QWEN2_AUDIO.audio_token)})
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir, max_shard_size="5GB")
    processor.save_pretrained(out_dir)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out_dir


def make_clips(n: int, seconds: float, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Random tones (class 0) and noise (class 1) of a fixed length; only speed matters here."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    audios, labels = [], []
    for i in range(n):
        if i % 2 == 0:
            audios.append((0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t)).astype(np.float32))
        else:
            audios.append((0.1 * rng.standard_normal(t.size)).astype(np.float32))
        labels.append(i % 2)
    return audios, labels


def write_manifest(folder: Path, n: int, seconds: float, seed: int = 0) -> Path:
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    audios, labels = make_clips(n, seconds, seed)
    rows = ["path,label,duration_ms"]
    for i, (a, y) in enumerate(zip(audios, labels)):
        sf.write(folder / f"clip{i:04d}.wav", a, SAMPLE_RATE)
        rows.append(f"clip{i:04d}.wav,{CLASSES[y]},{int(seconds * 1000)}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv"


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_training(model_dir: Path, path: str, targets: list[str], steps: int, warmup: int, seconds: float,
                     micro: int, accum: int, checkpointing: bool, lr: float = 2e-4,
                     stock_upcast: bool = True) -> dict[str, Any]:
    """Optimizer steps/s of one training path; returns samples/s, peak memory and the loss curve."""
    import torch

    from engine.models.qwen2_audio import runtime as m

    loaded = m.load_model(str(model_dir), "4bit", "auto", "auto")
    plan = m.label_plan(loaded.processor.tokenizer, list(CLASSES))
    torch.manual_seed(0)  # same LoRA initialisation for both paths; dropout 0 so they compute the same function
    if path == "stock":
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if stock_upcast:  # peft's k-bit preparation: fp32 copies of every non-quantized weight
            hf = prepare_model_for_kbit_training(loaded.hf, use_gradient_checkpointing=checkpointing,
                                                 gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            hf = loaded.hf
            for param in hf.parameters():
                param.requires_grad_(False)
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            hf.enable_input_require_grads()
        loaded.model = get_peft_model(hf, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                     target_modules=targets, task_type="CAUSAL_LM"))
    else:
        m.attach_lora(loaded, 16, 32, 0.0, targets, gradient_checkpointing=checkpointing)
    model = loaded.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    opt = torch.optim.AdamW(params, lr=lr)
    audios, labels = make_clips(micro * accum * (steps + warmup), seconds)
    torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    k = 0
    for step in range(steps + warmup):
        _sync()
        t0 = time.perf_counter()
        total = 0.0
        for _ in range(accum):
            idx = range(k, k + micro)
            k += micro
            batch = m.make_batch(loaded.processor, [audios[i] for i in idx], "You are a helpful assistant.",
                                 "Is this speech?", plan, answers=[labels[i] for i in idx], padding_side="right",
                                 full_features=path == "stock",
                                 feature_device="cpu" if path == "stock" else "cuda").to(loaded.device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if path == "stock":
                    loss = m.stock_answer_loss(model, batch)
                else:
                    loss = m.answer_loss(model, batch)[0]
            (loss / accum).backward()
            total += loss.item() / accum
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        times.append(time.perf_counter() - t0)
        losses.append(total)
    timed = times[warmup:]
    result = {"path": path, "targets": targets, "lr": lr, "stock_upcast": stock_upcast if path == "stock" else None, "clip_s": seconds, "micro_batch": micro, "grad_accum": accum,
              "gradient_checkpointing": checkpointing, "steps_timed": len(timed),
              "step_s": float(np.mean(timed)), "samples_per_s": micro * accum / float(np.mean(timed)),
              "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2), "losses": losses}
    del model, loaded, opt
    torch.cuda.empty_cache()
    return result


def measure_scoring(model_dir: Path, n_clips: int, seconds: float, batch_sizes: dict[str, int]) -> dict[str, Any]:
    """Clips/s of the stock and fast scoring paths on the same base model and clips, and how
    often their predictions agree."""
    import torch

    from engine.models.qwen2_audio import runtime as m

    loaded = m.load_model(str(model_dir), "4bit", "auto", "auto")
    plan = m.label_plan(loaded.processor.tokenizer, list(CLASSES))
    audios, _ = make_clips(n_clips, seconds, seed=1)
    loaded.model.eval()
    out: dict[str, Any] = {"clips": n_clips, "clip_s": seconds}
    preds = {}
    for path, batch_size in batch_sizes.items():
        score = m.stock_class_scores if path == "stock" else m.class_scores
        torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            for warm in (True, False):
                chunk = audios[:batch_size] if warm else audios
                results = []
                _sync()
                t0 = time.perf_counter()
                for s in range(0, len(chunk), batch_size):
                    batch = m.make_batch(loaded.processor, chunk[s:s + batch_size], "You are a helpful assistant.",
                                         "Is this speech?", plan, full_features=path == "stock",
                                         feature_device="cpu" if path == "stock" else "cuda").to(loaded.device)
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        results.append(score(loaded.model, batch, plan).float().cpu())
                _sync()
                elapsed = time.perf_counter() - t0
        preds[path] = torch.cat(results).argmax(-1)
        out[path] = {"batch_size": batch_size, "clips_per_s": n_clips / elapsed, "seconds": elapsed,
                     "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    if len(preds) == 2:
        out["prediction_agreement"] = float((preds["stock"] == preds["fast"]).float().mean())
        out["speedup"] = out["fast"]["clips_per_s"] / out["stock"]["clips_per_s"]
    del loaded
    torch.cuda.empty_cache()
    return out


def steady_state(metrics: list[dict], warmup: int, effective_batch: int, last: int | None = None) -> dict[str, Any]:
    """Samples/s between the end of optimizer step `warmup` and step `last` (default: the last
    step; the profiled steps are left out), from metrics.jsonl."""
    timed = [r for r in metrics if r["step"] >= warmup and (last is None or r["step"] <= last)]
    if len(timed) < 2:
        return {"steady_samples_per_s": None, "steady_steps": 0}
    seconds = timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]
    steps = timed[-1]["step"] - timed[0]["step"]
    return {"steady_samples_per_s": round(steps * effective_batch / seconds, 2), "steady_steps": steps,
            "steady_step_s": round(seconds / steps, 4)}


def measure_engine_training(model_dir: Path, steps: int, seconds: float, targets: str, work: Path,
                            warmup: int = 3, **overrides: Any) -> dict[str, Any]:
    """`engine.tasks.train.train()` itself, the default recipe (4-bit, effective batch 16, auto
    micro-batch, LoRA dropout 0.05) plus `overrides` (TrainConfig fields): steady-state samples/s
    after `warmup` steps, and the end-to-end time from data loading to the adapter saved.
    (Until round 4 this forced dropout 0, and the CUDA graphs' speed it measured was not the
    default recipe's: docs/PERFORMANCE.md.)"""
    from engine.config import TrainConfig
    from engine.tasks.train import train

    manifest = write_manifest(work / f"data-{seconds:g}s", 16 * steps, seconds)
    run_dir = work / f"engine-run-{seconds:g}s-{time.time_ns()}"
    profile = os.environ.get("QLORA_PROFILE_STEPS")
    if profile:  # one table per variant, beside the results
        os.environ["QLORA_PROFILE_OUT"] = str(work / f"profile-{seconds:g}s-{'-'.join(f'{k}_{v}' for k, v in overrides.items()) or 'default'}.txt")
    t0 = time.perf_counter()
    summary = train(TrainConfig(model=str(model_dir), train_data=str(manifest), targets=targets, max_steps=steps,
                                epochs=1, **overrides), run_dir)
    wall = time.perf_counter() - t0
    metrics = rf.read_metrics(run_dir)
    keep = ("micro_batch", "grad_accum", "gradient_checkpointing", "base_cache", "compile", "compile_reason",
            "compiled_layers", "samples_per_s",
            "peak_gpu_memory_mb", "train_time_s", "runtime_s", "final_train_loss", "trainable_params")
    return {"clip_s": seconds, "overrides": overrides, **{k: summary.get(k) for k in keep},
            **steady_state(metrics, warmup, summary["effective_batch"], int(profile.split(":")[0]) - 1 if profile else None),
            "end_to_end_s": round(wall, 2),
            "losses": [r["loss"] for r in metrics]}


EVAL_WARMUP_BATCHES = 2  # batches left out of `eval`'s steady rate: the first one pays the compilation, if any


def batch_rates(stamps: list[tuple[int, float]], warmup: int = EVAL_WARMUP_BATCHES) -> dict[str, Any]:
    """From (clips scored, time) at the start of the scoring (0) and after each batch: the steady
    clips/s after `warmup` batches, the time the first `warmup` batches took, and how much longer
    that was than the steady rate gives for their clips (the compilation, with --compile on; the
    system prefix and the first CUDA calls either way)."""
    if len(stamps) < warmup + 3:
        return {"steady_clips_per_s": None, "first_batches_s": None, "first_batches_extra_s": None}
    (done0, t0), (done_w, t_w), (done_n, t_n) = stamps[0], stamps[warmup], stamps[-1]
    steady = (done_n - done_w) / (t_n - t_w)
    first = t_w - t0
    return {"steady_clips_per_s": round(steady, 1), "first_batches_s": round(first, 3),
            "first_batches_extra_s": round(first - (done_w - done0) / steady, 3), "steady_batches": len(stamps) - 1 - warmup}


def measure_engine_eval(model_dir: Path, n_clips: int, seconds: float, batch_size: int, work: Path,
                        extra: list[str] = ()) -> dict[str, Any]:
    """`python -m engine eval --base` itself (in this process, through the CLI's own parser):
    the evaluation's clips/s (decoding and scoring, from evaluation.json), the steady rate after
    EVAL_WARMUP_BATCHES batches and the first batches' extra time (`batch_rates`, from a clock
    read at every progress call), the graphs dynamo compiled, and the command's wall time
    (model load included)."""
    from torch._dynamo.utils import counters

    from engine import cli
    from engine.tasks import evaluate

    manifest = write_manifest(work / f"test-{seconds:g}s-{n_clips}", n_clips, seconds, seed=1)
    name = f"bench-eval-{seconds:g}s-{time.time_ns()}"
    argv = ["eval", "--base", "--model", str(model_dir), "--runs-dir", str(work), "--run-name", name,
            "--test-data", str(manifest), "--batch-size", str(batch_size), *extra]
    stamps: list[tuple[int, float]] = []
    plain = evaluate.ProgressFile

    class ClockedProgress(plain):
        def __call__(self, scored: int, total: int) -> bool:
            stamps.append((scored, time.perf_counter()))
            return super().__call__(scored, total)

    graphs_before = counters["stats"]["unique_graphs"]
    evaluate.ProgressFile = ClockedProgress
    t0 = time.perf_counter()
    try:
        code = cli.main(argv)
    finally:
        evaluate.ProgressFile = plain
    wall = time.perf_counter() - t0
    folder = work / name / "evaluations" / "test"
    evaluation = json.loads((folder / "evaluation.json").read_text())
    return {"clip_s": seconds, "clips": n_clips, "batch_size": batch_size, "extra": list(extra), "exit": code,
            "clips_per_s": evaluation.get("clips_per_s"), "scoring_s": evaluation.get("time_taken_s"),
            **batch_rates(stamps), "end_to_end_s": round(wall, 2), "base_cache": evaluation.get("base_cache"),
            "compile": evaluation.get("compile"), "compile_reason": evaluation.get("compile_reason"),
            "graphs_compiled": counters["stats"]["unique_graphs"] - graphs_before,
            "correct": evaluation.get("summary", {}).get("correct"), "evaluation": str(folder)}


def profile_scoring(model_dir: Path, n_clips: int, seconds: float, batch_size: int, work: Path) -> list[dict[str, Any]]:
    """`engine.tasks.evaluate.score_audio` (what `eval` runs per data set) on clips in memory, with
    the system-prefix cache off and on, each after one warm-up batch: steady clips/s from the
    per-batch clock, then a torch.profiler table of two batches (WORK/profile-eval-*.txt)."""
    import torch

    from engine.models.qwen2_audio import runtime as m
    from engine.tasks.evaluate import score_audio, use_base_cache

    loaded = m.load_model(str(model_dir), "4bit", "auto", "auto")
    cache = use_base_cache(loaded, "auto")
    audios, _ = make_clips(n_clips, seconds, seed=2)
    args = ("You are a helpful assistant.", "Is this speech? Answer SPEECH or NONSPEECH.", list(CLASSES))
    records = []
    for prefix_cache in (False, True):
        score_audio(loaded, audios[:batch_size], *args, batch_size=batch_size, prefix_cache=prefix_cache)
        stamps = []
        _sync()
        t0 = time.perf_counter()
        score_audio(loaded, audios, *args, batch_size=batch_size, prefix_cache=prefix_cache,
                    on_batch=lambda done, total: stamps.append((done, time.perf_counter())))
        wall = time.perf_counter() - t0
        steady = (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1]) if len(stamps) > 1 else None
        _sync()
        t1 = time.perf_counter()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            score_audio(loaded, audios[:2 * batch_size], *args, batch_size=batch_size, prefix_cache=prefix_cache)
            _sync()
        profiled = time.perf_counter() - t1
        events = prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events)
        kernels = sum(e.count for e in events if e.self_device_time_total > 0)
        out = work / f"profile-eval-{seconds:g}s-b{batch_size}-prefix_{'on' if prefix_cache else 'off'}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"2 batches of {batch_size}: wall {profiled:.3f} s, GPU busy {gpu_us / 1e6:.3f} s, "
                       f"{kernels} kernels\n{events.table(sort_by='self_device_time_total', row_limit=30)}\n")
        records.append({"clip_s": seconds, "clips": n_clips, "batch_size": batch_size, "prefix_cache": prefix_cache,
                        "base_cache": cache.get("used"), "clips_per_s": round(n_clips / wall, 1),
                        "steady_clips_per_s": round(steady, 1) if steady else None,
                        "profiled_wall_s": round(profiled, 3), "profiled_gpu_busy_s": round(gpu_us / 1e6, 3),
                        "profiled_kernels": kernels})
    del loaded
    torch.cuda.empty_cache()
    return records


def _variants(spec: str) -> list[str]:
    return [v.strip() for v in spec.split(";")] if spec.strip() else [""]


def bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-dir", type=Path, default=Path("/tmp/qwen2-audio-7b-random"))
    p.add_argument("--build", action="store_true", help="build the random-weight 7B if missing")
    p.add_argument("--what", default="train,score,engine,eval",
                   help="any of train (stock vs fast loop), score (stock vs fast scoring), engine (train()), "
                        "eval (engine eval), evalprofile (score_audio's steady rate and profile, prefix cache off and on)")
    p.add_argument("--engine-variants", default="base_cache=off;base_cache=on",
                   help="train() runs, ';'-separated, each ','-separated TrainConfig overrides")
    p.add_argument("--eval-variants", default="--base-cache off;--base-cache on",
                   help="eval runs, ';'-separated extra eval flags (give as --eval-variants=...)")
    p.add_argument("--eval-clips", type=int, default=1024)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--score-clips", type=int, default=256)
    p.add_argument("--clip-seconds", default="1")
    p.add_argument("--paths", default="stock,fast")
    p.add_argument("--targets", default="attention+mlp")
    p.add_argument("--fast-micro", type=int, default=16, help="micro-batch of the fast path (effective 16)")
    p.add_argument("--score-batch", type=int, default=64)
    p.add_argument("--memory-cap-gb", type=float, default=None, help="simulate a smaller card (engine run only)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of the train measurements")
    p.add_argument("--no-stock-upcast", action="store_true",
                   help="stock path without the fp32 upcast (to compare the math at equal precision)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-work"))
    p.add_argument("--out", type=Path, default=None, help="write results JSON here (rewritten after each part)")


def bench_main(args: argparse.Namespace) -> int:
    import torch

    from engine.config import TARGET_PRESETS

    if not torch.cuda.is_available():
        print("error: bench needs a CUDA GPU", flush=True)
        return 2
    t0 = time.time()
    model_dir = build_random_7b(args.model_dir) if args.build else args.model_dir
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d"),
                               "build_s": round(time.time() - t0, 1), "train": [], "score": [], "engine": [], "eval": [],
                               "evalprofile": []}
    targets = list(TARGET_PRESETS[args.targets])
    what = set(args.what.split(","))

    def emit(part: str, record: dict) -> None:
        results[part].append(record)
        print(json.dumps({k: v for k, v in record.items() if k != "losses"}), flush=True)
        if args.out:
            rf.atomic_write_json(args.out, results)

    for seconds in [float(s) for s in args.clip_seconds.split(",")]:
        if "train" in what:
            for path in args.paths.split(","):
                micro, accum, ckpt = (2, 8, True) if path == "stock" else (args.fast_micro, 16 // args.fast_micro, False)
                emit("train", measure_training(model_dir, path, targets, args.train_steps, args.warmup_steps, seconds,
                                               micro, accum, ckpt, args.lr, not args.no_stock_upcast))
        if "score" in what:
            sizes = {p: (16 if p == "stock" else args.score_batch) for p in args.paths.split(",")}
            emit("score", measure_scoring(model_dir, args.score_clips, seconds, sizes))
        if args.memory_cap_gb and ("engine" in what or "eval" in what):
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(args.memory_cap_gb * 2**30 / total)
        if "engine" in what:
            for variant in _variants(args.engine_variants):
                overrides = dict(item.split("=", 1) for item in variant.split(",") if item)
                try:
                    record = measure_engine_training(model_dir, args.train_steps, seconds, args.targets, args.work,
                                                     args.warmup_steps, **overrides)
                except Exception as exc:  # one failing variant must not lose the others' figures
                    record = {"clip_s": seconds, "overrides": overrides, "error": f"{type(exc).__name__}: {exc}"}
                    torch.cuda.empty_cache()
                emit("engine", {**record, "memory_cap_gb": args.memory_cap_gb})
        if "evalprofile" in what:
            for record in profile_scoring(model_dir, args.eval_clips, seconds, args.score_batch, args.work):
                emit("evalprofile", record)
        if "eval" in what:
            for variant in _variants(args.eval_variants):
                emit("eval", {**measure_engine_eval(model_dir, args.eval_clips, seconds, args.score_batch, args.work,
                                                    variant.split()), "memory_cap_gb": args.memory_cap_gb})
    return 0
