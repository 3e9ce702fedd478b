"""QLoRA training: `train(cfg, run_dir)` and `python -m engine train ...`.

One loop, read top to bottom: setup (validate, data, model, LoRA), train (optimizer steps with
gradient accumulation, one flushed metrics line per step), save (adapter written atomically),
cleanup (terminal state always written in `finally:`). SIGTERM/SIGINT finish the current
optimizer step, save the adapter and end the run as `cancelled`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from engine import cliargs
from engine.runs import folder as rf
from engine.config import ConfigError, TrainConfig
from engine.labels import DEFAULT_LABEL_SET
from engine.runs.lifecycle import DiskFullError, StopSignal, describe_error, is_disk_full, run_lifecycle

log = logging.getLogger("engine.tasks.train")


# ----------------------------------------------------------------------------- run folder helpers

def environment_info(device) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    packages = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "numpy", "soundfile", "soxr"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    info = {"python": platform.python_version(), "platform": platform.platform(), "packages": packages,
            "device": str(device), "cpu_count": os.cpu_count(), "hostname": platform.node()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_name=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda)
    return info


def save_adapter(model, run_dir: Path, name: str = rf.ADAPTER_DIR) -> Path:
    """Write the PEFT adapter to a temp folder and rename it into place.

    A crash or a full disk never leaves a folder named `adapter/` that looks complete: the
    partial folder is removed, and a full disk (in whatever form the writer reports it) raises
    DiskFullError.
    """
    run_dir = Path(run_dir)
    final = run_dir / name
    partial = run_dir / f".{Path(name).name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial, safe_serialization=True)
        (partial / "README.md").unlink(missing_ok=True)  # peft's boilerplate model card
        missing = [f for f in rf.ADAPTER_FILES if not (partial / f).is_file()]
        if missing:
            raise RuntimeError(f"adapter save wrote no {', '.join(missing)}")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException as exc:
        shutil.rmtree(partial, ignore_errors=True)
        # safetensors reports a full disk as SafetensorError("... os error 28"), not as an OSError
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(errno.ENOSPC, f"no space left writing the adapter to {final}") from exc
        raise
    return final


# ----------------------------------------------------------------------------- a base shared by runs

class SharedBase:
    """The loaded base model that the runs of a group (`engine.tasks.train_group`) train on, one
    after another, in one process: loaded, cached and compiled by the first run, kept for the next.

    A run whose base settings match reuses it; its LoRA is re-initialised in place when shaped
    like the last run's (the compiled layers and their CUDA graphs stay valid), else taken off and
    attached anew (the layers recompile). Either way the adapter starts from the values, and the
    RNG from the state, that a run started alone with the same seed gets.
    """

    def __init__(self) -> None:
        self.loaded = None
        self.base_key: tuple | None = None
        self.lora_key: tuple | None = None
        self.offload = False
        self.cache = None
        self.compile_mode, self.compile_reason, self.compiled = "off", "", 0
        self.load_s = 0.0
        self.runs = 0  # runs trained on the current base
        self.lora_action = ""

    @staticmethod
    def base_key_of(cfg: TrainConfig) -> tuple:
        return (cfg.model, cfg.quantization, cfg.dtype, cfg.device, cfg.offload_embeddings, cfg.base_cache, cfg.compile)

    @staticmethod
    def lora_key_of(cfg: TrainConfig) -> tuple:
        return (tuple(cfg.target_modules), cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)

    def serves(self, cfg: TrainConfig) -> bool:
        return self.loaded is not None and self.base_key == self.base_key_of(cfg)

    def keep(self, cfg: TrainConfig, loaded, offload: bool, cache, compile_mode: str, reason: str, compiled: int,
             load_s: float) -> None:
        """Remember the base the current run just loaded and prepared."""
        self.loaded, self.offload, self.cache = loaded, offload, cache
        self.compile_mode, self.compile_reason, self.compiled = compile_mode, reason, compiled
        self.base_key, self.lora_key = self.base_key_of(cfg), self.lora_key_of(cfg)
        self.load_s, self.runs, self.lora_action = load_s, 1, "attached with the model's load"

    def retarget(self, cfg: TrainConfig, m) -> None:
        """Ready the kept model for `cfg`'s run: LoRA as a fresh attach after seeding would leave
        it (in place when shaped alike), gradient checkpointing as the run asks."""
        import torch

        hf = self.loaded.hf
        checkpointing = cfg.gradient_checkpointing == "on"
        self.loaded.model.zero_grad(set_to_none=True)
        if self.lora_key == self.lora_key_of(cfg):
            layers = m.reinit_lora(self.loaded.model, cfg.seed)
            self.lora_action = f"re-initialised in place ({layers} layers)"
        else:
            self.lora_key = None  # until the new LoRA is on: an attach refused below leaves none
            m.detach_lora(self.loaded)
            if self.compiled:
                torch._dynamo.reset()  # the old LoRA's compiled code and graphs: the next steps recompile
            torch.manual_seed(cfg.seed)
            m.attach_lora(self.loaded, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, checkpointing)
            self.lora_key = self.lora_key_of(cfg)
            self.lora_action = "attached anew (LoRA shape changed)"
        if checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            hf.enable_input_require_grads()
        else:
            hf.gradient_checkpointing_disable()
        self.runs += 1
        log.info("shared base: run %d on the model loaded %.1f s earlier in this process; LoRA %s",
                 self.runs, self.load_s, self.lora_action)

    def release(self) -> None:
        """Drop the kept model (the next run needs another base)."""
        if self.loaded is None:
            return
        import gc

        import torch

        device = self.loaded.device
        self.loaded = None
        self.base_key = self.lora_key = None
        if self.compiled:
            torch._dynamo.reset()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        """summary.json's "shared_base": where this run stands in its process."""
        return {"run_on_this_base": self.runs, "model_load_s": round(self.load_s, 2),
                "loaded_by_this_run": self.runs == 1, "lora": self.lora_action}


# ----------------------------------------------------------------------------- training

def lr_lambda(scheduler: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at each step: linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if scheduler in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        if scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def micro_batches(order: list[int], clips, micro_batch: int, grad_accum: int) -> list[list[int]]:
    """Split a shuffled epoch into micro-batches, grouping clips of similar length.

    Each optimizer step keeps exactly the clips the shuffle gave it (so the optimisation is the
    same whatever the split); only inside a step are clips sorted by duration before being cut
    into micro-batches, which keeps the padded encoder input short.
    """
    step = micro_batch * grad_accum
    out = []
    for start in range(0, len(order), step):
        chunk = sorted(order[start:start + step], key=lambda i: (-(clips[i].duration_s or 0.0), i))
        out.extend(chunk[j:j + micro_batch] for j in range(0, len(chunk), micro_batch))
    return out


def step_batches(order: list[int], clips, micro_batch: int, grad_accum: int, rank: int = 0,
                 world: int = 1) -> list[list[list[int]]]:
    """This rank's micro-batches of each optimizer step of a shuffled epoch.

    A step takes the next micro_batch x grad_accum x world clips of `order` (the same on every
    rank); rank r keeps every world-th of them, so the ranks' shards are disjoint and together
    are exactly the step one process would take. A rank may get none in a short last step.
    """
    per_step = micro_batch * grad_accum * world
    return [micro_batches(order[start:start + per_step][rank::world], clips, micro_batch, grad_accum)
            for start in range(0, len(order), per_step)]


COMPILE_MIN_GPU_BYTES = 20 * 2**30


def usable_gpu_bytes(device) -> int:
    """Memory this process may use on the GPU: the card, or less under a per-process cap."""
    from engine.models.base_cache import usable_gpu_bytes as usable

    return usable(device)


# What the auto rule avoids, as measured (docs/PERFORMANCE.md, round 4).
GRAPHS_WITH_DROPOUT_REASON = ("LoRA dropout {p:g}: the layers' CUDA graphs ran 9 s a step with dropout on an H200 "
                              "(0.13 s with dropout 0); --compile graphs forces them")


def choose_compile(mode: str, device_type: str, usable_bytes: int, shared_by: int = 1,
                   lora_dropout: float = 0.0) -> tuple[str, str]:
    """The compile mode to use for `mode` (auto|graphs|on|off) and why. Auto: CUDA graphs on a GPU
    this job has to itself with >= 20 GB (below, the graphs' buffers do not fit beside the model),
    for LoRA without dropout: the recorded graphs were fast only without it (120 samples/s, 1-s
    clips, H200), and with the default dropout of 0.05 every step took about 9 s instead of 0.13;
    then the layers run uncompiled (a 96-step run with dropout took 113 s end to end on an H200)."""
    if mode != "auto":
        return mode, "as asked"
    if device_type != "cuda":
        return "off", "auto: only on a GPU"
    if lora_dropout > 0:
        return "off", "auto: " + GRAPHS_WITH_DROPOUT_REASON.format(p=lora_dropout)
    if shared_by > 1:
        from engine.models.base_cache import SHARED_GPU_REASON

        return "off", "auto: " + SHARED_GPU_REASON.format(n=shared_by)
    if usable_bytes < COMPILE_MIN_GPU_BYTES:
        return "off", f"auto: {usable_bytes / 2**30:.1f} GiB usable, graphs need {COMPILE_MIN_GPU_BYTES / 2**30:.0f}"
    return "graphs", f"auto: {usable_bytes / 2**30:.1f} GiB usable, LoRA dropout 0"


def choose_micro_batch(model, cfg: TrainConfig, clips, make_batch, device: str = "cuda") -> tuple[int, int, bool]:
    """The largest micro-batch (a divisor of the effective batch) whose forward and backward on the
    longest clips fit in GPU memory, without gradient checkpointing if possible, else with it.

    The effective batch, and so the optimisation, is unchanged; only how it is split. Each probe
    is a real forward/backward whose gradients are thrown away, run while the memory AdamW's
    state will take later is held in reserve. The probes run in training mode, as the steps will:
    Hugging Face layers checkpoint only when training, so a probe in eval mode would measure
    "with checkpointing" without it and reject sizes that fit (an 8 GB card got 2 x 8 instead of
    16 x 1). The RNG state is restored afterwards, so dropout masks do not depend on the probe.
    """
    import torch

    from engine.models import family_for

    m = family_for(cfg.model).runtime()
    effective = cfg.per_device_batch * cfg.grad_accum  # this process's share of the step
    sizes = [d for d in range(effective, 0, -1) if effective % d == 0] if cfg.auto_micro_batch else [cfg.per_device_batch]
    options = {"auto": [False, True], "on": [True], "off": [False]}[cfg.gradient_checkpointing]
    longest = sorted(clips, key=lambda c: -(c.duration_s or 0))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    was_training = model.training
    model.train()
    try:
        # Eager, even when the layers are compiled: probes of sizes that do not fit would otherwise
        # compile and record graphs for shapes the steps never use.
        with torch.random.fork_rng(devices=[torch.device(device)] if device == "cuda" else []), \
                eager_if_compiled(True):
            for size in (s for s in sizes if s <= len(clips)):
                for checkpointing in options:
                    if _probe_fits(model, m, longest[:size], make_batch, checkpointing, trainable, device):
                        return size, effective // size, checkpointing
    finally:
        model.train(was_training)
    raise RuntimeError("not even a micro-batch of 1 fits in GPU memory")


def _probe_fits(model, m, clips, make_batch, checkpointing: bool, trainable: int, device: str) -> bool:
    """One forward/backward of `clips` as one micro-batch; False when it runs out of GPU memory."""
    import torch

    hf = m.unwrap(model)
    if checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        hf.enable_input_require_grads()
    else:
        hf.gradient_checkpointing_disable()
    reserve = None
    try:
        reserve = torch.empty(2 * trainable, dtype=torch.float32, device=device)  # Adam's two moments
        batch = make_batch(clips)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss, _ = m.answer_loss(model, batch)
        loss.backward()
        return True
    except torch.cuda.OutOfMemoryError:
        log.info("micro-batch %d%s does not fit", len(clips), " with checkpointing" if checkpointing else "")
        return False
    finally:
        model.zero_grad(set_to_none=True)
        del reserve
        if device == "cuda":
            torch.cuda.empty_cache()


def validation_metrics(p_speech, labels) -> dict[str, Any]:
    """val_loss (mean -log p(true class) under the two-class softmax, p clipped at 1e-12), val_accuracy
    and val_balanced_accuracy (arg-max, i.e. p_speech >= 0.5 as in the evaluations) and val_clips.

    The loss is the decision's log loss, not the training loss (which averages the full-vocabulary
    cross-entropy over every answer token): compare validation points with each other.
    """
    import numpy as np

    positive = DEFAULT_LABEL_SET.positive
    p = np.clip(np.asarray(p_speech, dtype=np.float64), 1e-12, 1 - 1e-12)
    truth = np.array([label == positive for label in labels])
    pred = p >= 0.5
    recalls = [float((pred[truth == side] == side).mean()) for side in (True, False) if (truth == side).any()]
    return {"val_loss": float(-np.where(truth, np.log(p), np.log1p(-p)).mean()),
            "val_accuracy": float((pred == truth).mean()), "val_balanced_accuracy": float(np.mean(recalls)),
            "val_clips": int(len(truth))}


def eager_if_compiled(compiled):
    """Run compiled layers eagerly inside (scoring between and after training steps): their graphs
    were made for training shapes with gradients; scoring would compile and capture new ones."""
    import contextlib

    import torch

    if not compiled or not hasattr(torch.compiler, "set_stance"):
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")


def validate_epoch(loaded, model, clips, audio, cfg: TrainConfig) -> dict[str, Any]:
    """Score the validation clips with the model as it stands (eval mode, no grad), then put it back
    in train mode; validation_metrics of them.

    Uses the end-of-training evaluation's scoring (evaluate.score_audio). Every random state
    (torch CPU and GPU, numpy, random) is restored afterwards, so a run with validation draws the
    same dropout masks, and so has the same training losses, as one without.
    """
    import random

    import numpy as np
    import torch

    from engine.tasks.evaluate import p_speech_from_scores, score_audio

    devices = [loaded.device] if loaded.device.type == "cuda" else []
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=devices), eager_if_compiled(True):
            scores = score_audio(loaded, [audio.load(c) for c in clips], cfg.system_prompt, cfg.prompt,
                                 cfg.label_words)
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        model.train()
    return validation_metrics(p_speech_from_scores(scores), [c.label for c in clips])


class StepProfiler:
    """torch.profiler over optimizer steps FIRST..LAST when QLORA_PROFILE_STEPS="FIRST:LAST" is set;
    the operator table goes to QLORA_PROFILE_OUT (default ./train-profile.txt). A diagnostic for
    docs/PERFORMANCE.md; off (and free) otherwise."""

    def __init__(self, first: int, last: int, out: Path, device):
        self.first, self.last, self.out, self.device, self.prof = first, last, out, device, None

    @classmethod
    def from_env(cls, device) -> "StepProfiler":
        spec = os.environ.get("QLORA_PROFILE_STEPS", "")
        first, _, last = spec.partition(":")
        if not spec:
            return cls(0, -1, Path(), device)
        return cls(int(first), int(last or first), Path(os.environ.get("QLORA_PROFILE_OUT", "train-profile.txt")),
                   device)

    def before_step(self, step: int) -> None:
        if step == self.first:
            import torch

            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()
            self.prof = torch.profiler.profile(activities=activities)
            self.prof.__enter__()
            self._t0 = time.perf_counter()

    def after_step(self, step: int) -> None:
        if self.prof is None or step != self.last:
            return
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - self._t0
        self.prof.__exit__(None, None, None)
        sort = "cuda_time_total" if self.device.type == "cuda" else "cpu_time_total"
        table = self.prof.key_averages().table(sort_by=sort, row_limit=40)
        steps = self.last - self.first + 1
        events = self.prof.key_averages()
        gpu_us = sum(e.self_device_time_total for e in events) if self.device.type == "cuda" else 0
        kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        head = (f"steps {self.first}-{self.last}: wall {wall / steps * 1e3:.1f} ms/step, GPU busy "
                f"{gpu_us / steps / 1e3:.1f} ms/step, {kernels / steps:.0f} GPU kernels/step\n")
        self.out.write_text(head + table)
        log.info("profile written to %s: %s", self.out, head.strip())
        self.prof = None


def train(cfg: TrainConfig, run_dir: Path, stop: StopSignal | None = None,
          evaluate_on: dict[str, str] | None = None, threshold_from: str | None = None,
          shared: "SharedBase | None" = None) -> dict[str, Any]:
    """Train one adapter into `run_dir`; returns the summary. Raises after recording a failure.

    evaluate_on: {evaluation name: test data} scored with the trained model before the run is
    marked finished (saves reloading the model, e.g. in the demo).
    threshold_from: name of an evaluation (e.g. "val") whose p(SPEECH) cut with the best balanced
    accuracy the evaluations scored after it use (`eval --threshold-from`), instead of 0.5.
    shared: the base model runs of a group train on one after another (`engine.tasks.train_group`):
    loaded by the first run that needs it, kept for the next; one process only.
    """
    from engine.tasks import distributed as dist

    cfg.validate()
    if shared is not None and cfg.num_processes > 1:
        raise ConfigError("num_processes", "a run of a shared-base group trains in one process; "
                          "queue a data-parallel run on its own")
    dist.init_from_env(cfg.device)
    try:
        if not dist.is_main():  # only rank 0 writes the run folder
            owns_stop = stop is None
            stop = stop if stop is not None else StopSignal().install()
            try:
                return _train(cfg, Path(run_dir), stop, evaluate_on or {}, lambda force=False, **fields: False,
                              threshold_from)
            finally:
                if owns_stop:
                    stop.restore()
        config = {"schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_TRAIN, **cfg.to_dict()}
        with run_lifecycle(run_dir, rf.KIND_TRAIN, config=config, stop=stop) as run:
            summary = _train(cfg, run.run_dir, run.stop, evaluate_on or {}, run.progress, threshold_from, shared)
        return summary
    finally:
        dist.cleanup()


def _train(cfg: TrainConfig, run_dir: Path, stop: StopSignal, evaluate_on: dict[str, str],
           progress: Callable[..., bool], threshold_from: str | None = None,
           shared: "SharedBase | None" = None) -> dict[str, Any]:
    import torch

    from engine.data.manifests import AudioCache, load_clips, require_both_classes
    from engine.models import base_cache, family_for
    from engine.tasks import distributed as dist

    started = time.time()
    rank, world, main = dist.rank(), dist.world_size(), dist.is_main()
    # ---- setup: data (every clip checked before the model loads), model, LoRA
    m = family_for(cfg.model).runtime()
    log.info("loading training data from %s", cfg.train_data)
    train_clips, train_report = load_clips(cfg.train_data, label_words=cfg.label_words, filters=cfg.filters,
                                           max_seconds=cfg.max_clip_seconds, skip_bad=cfg.skip_bad_audio)
    val_clips, val_report = [], None
    if cfg.val_data:
        val_clips, val_report = load_clips(cfg.val_data, label_words=cfg.label_words, filters=cfg.filters,
                                           max_seconds=cfg.max_clip_seconds, skip_bad=cfg.skip_bad_audio)
    if not train_clips:
        raise ValueError(f"train_data: no clips left in {cfg.train_data} after filters {cfg.filters or '{}'}")
    require_both_classes(train_report)
    log.info("%d training clips (%s)", len(train_clips), train_report.per_class)

    m.seed_everything(cfg.seed)
    checkpointing = cfg.gradient_checkpointing == "on"
    if shared is not None and shared.serves(cfg):
        rf.atomic_write_json(run_dir / rf.ENVIRONMENT, environment_info(shared.loaded.device))
        loaded, offload, cache, compiled = shared.loaded, shared.offload, shared.cache, shared.compiled
        compile_mode, why = shared.compile_mode, shared.compile_reason
        shared.retarget(cfg, m)
    else:
        if shared is not None:
            shared.release()
        load_started = time.time()
        loaded = m.load_model(cfg.model, cfg.quantization, dist.device_for(cfg.device), cfg.dtype)
        device = loaded.device
        if main:
            rf.atomic_write_json(run_dir / rf.ENVIRONMENT, environment_info(device))
        offload = cfg.offload_embeddings == "on" or (
            cfg.offload_embeddings == "auto" and device.type == "cuda" and usable_gpu_bytes(device) < 12 * 2**30)
        if offload:
            m.offload_input_embeddings(loaded)
            log.info("input embeddings kept on the CPU (small GPU): %.2f GB saved", m.input_embedding_bytes(loaded) / 1e9)
        torch.manual_seed(cfg.seed)  # LoRA init depends only on the seed
        m.attach_lora(loaded, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules, checkpointing)
        if rank:
            torch.manual_seed(cfg.seed + rank)  # same LoRA init on every rank, different dropout masks
        shared_by = m.gpu_share() if device.type == "cuda" else 1
        cache = base_cache.prepare(loaded.model, cfg.base_cache, device,
                                   usable_gpu_bytes(device) if device.type == "cuda" else None, shared_by)
        compile_mode, why = choose_compile(cfg.compile, device.type,
                                           usable_gpu_bytes(device) if device.type == "cuda" else 0, shared_by,
                                           cfg.lora_dropout)
        log.info("compile %s: %s", compile_mode, why)
        compiled = m.compile_layers(loaded, cuda_graphs=compile_mode == "graphs") if compile_mode != "off" else 0
        if shared is not None:
            shared.keep(cfg, loaded, offload, cache, compile_mode, why, compiled, time.time() - load_started)
    device = loaded.device
    model = loaded.model
    plan = m.label_plan(loaded.processor.tokenizer, cfg.label_words)
    audio = AudioCache(max_seconds=cfg.max_clip_seconds)
    class_index = {name: DEFAULT_LABEL_SET.index(name) for name in DEFAULT_LABEL_SET}

    def make(clips, side="right"):
        return m.make_batch(loaded.processor, [audio.load(c) for c in clips], cfg.system_prompt, cfg.prompt, plan,
                            answers=[class_index[c.label] for c in clips], padding_side=side,
                            feature_device=device.type).to(device)

    micro_batch, grad_accum = cfg.per_device_batch, cfg.grad_accum
    if device.type == "cuda" and (cfg.auto_micro_batch or cfg.gradient_checkpointing == "auto"):
        micro_batch, grad_accum, checkpointing = choose_micro_batch(model, cfg, train_clips, make)
    log.info("micro-batch %d x accumulation %d x %d process(es) (effective %d), gradient checkpointing %s",
             micro_batch, grad_accum, world, micro_batch * grad_accum * world, "on" if checkpointing else "off")
    counts = m.parameter_counts(model)
    log.info("trainable %s / %s parameters (%.4f%%)", f"{counts['trainable']:,}", f"{counts['total']:,}",
             counts["percent"])
    micro_per_epoch = math.ceil(len(train_clips) / (micro_batch * world))
    steps_per_epoch = math.ceil(micro_per_epoch / grad_accum)
    total_steps = math.ceil(steps_per_epoch * cfg.epochs)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    warmup = int(cfg.warmup_ratio * total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.scheduler, warmup, total_steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if main:
        progress(step=0, total_steps=total_steps, force=True)

    def log_validation(metrics: dict[str, Any], at_step: int, at_epoch: float) -> None:
        rf.append_jsonl(run_dir / rf.METRICS, {"kind": rf.VALIDATION_RECORD, "step": at_step,
                                               "epoch": round(at_epoch, 4), **metrics,
                                               "elapsed_s": round(time.time() - t0, 3)})
        log.info("validation at step %d (epoch %.2f): loss %.4f, accuracy %.1f%% of %d clips", at_step, at_epoch,
                 metrics["val_loss"], 100 * metrics["val_accuracy"], metrics["val_clips"])

    # ---- train
    profiler = StepProfiler.from_env(device)
    # A diagnostic for the CUDA graphs' slowness with LoRA dropout (docs/PERFORMANCE.md, round 4,
    # benchmarks/graphs_dropout.sh): tell the graph trees where each micro-batch begins.
    mark_graph_steps = compile_mode == "graphs" and os.environ.get("QLORA_CUDAGRAPH_MARK_STEP") == "1"
    model.train()
    step, samples, last_loss, t0 = 0, 0, math.nan, time.time()
    epoch_float = 0.0
    done = False
    for epoch in range(math.ceil(cfg.epochs)):
        order = torch.randperm(len(train_clips), generator=generator).tolist()
        steps = step_batches(order, train_clips, micro_batch, grad_accum, rank, world)
        step_clips = micro_batch * grad_accum * world
        for index, group in enumerate(steps):
            profiler.before_step(step + 1)
            batches = [make([train_clips[i] for i in indices]) for indices in group]
            n_targets = sum(b.target_ids.numel() for b in batches)
            weighted_losses = []
            for batch in batches:
                if mark_graph_steps:
                    torch.compiler.cudagraph_mark_step_begin()
                with torch.autocast(device.type, dtype=loaded.dtype, enabled=loaded.dtype != torch.float32):
                    loss, count = m.answer_loss(model, batch)
                # weight by tokens so the step's loss is the mean over all its answer tokens
                weighted = loss * (count / n_targets)
                weighted.backward()
                weighted_losses.append(weighted.detach())
            # one host sync per step, not per micro-batch
            step_loss = float(torch.stack(weighted_losses).sum())
            # data-parallel: the mean over every rank's answer tokens (no-ops with one process)
            dist.all_reduce_grads(params, n_targets)
            step_loss = dist.weighted_mean(step_loss, n_targets)
            grad_norm = None
            if cfg.max_grad_norm:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples += min(step_clips, len(order) - index * step_clips)  # over all ranks
            epoch_float = epoch + min(1.0, min((index + 1) * grad_accum, micro_per_epoch) / micro_per_epoch)
            last_loss = step_loss
            elapsed = time.time() - t0
            eta = elapsed / step * (total_steps - step)
            if main:
                rf.append_jsonl(run_dir / rf.METRICS, {
                    "step": step, "epoch": round(epoch_float, 4), "loss": step_loss,
                    "learning_rate": schedule.get_last_lr()[0], "grad_norm": grad_norm,
                    "samples_per_s": samples / elapsed if elapsed else None, "elapsed_s": round(elapsed, 3),
                    "eta_s": round(eta, 1), "total_steps": total_steps})
                progress(step=step, total_steps=total_steps, epoch=round(epoch_float, 3), loss=step_loss,
                         eta_s=round(eta, 1), samples_per_s=samples / elapsed if elapsed else None,
                         force=step >= total_steps or bool(stop))
                log.info("step %d/%d epoch %.2f loss %.4f", step, total_steps, epoch_float, step_loss)
            if world > 1:  # a signal received by any rank stops every rank after this same step
                stop.signal = dist.max_over_ranks(stop.signal or 0) or None
            profiler.after_step(step)
            if step >= total_steps or stop:
                done = True
                break
        if val_clips and not done and main:  # the last point comes from the final val evaluation
            log_validation(validate_epoch(loaded, model, val_clips, audio, cfg), step, epoch_float)
        if cfg.checkpoints == "epoch" and not done and main:
            save_adapter(model, run_dir, f"checkpoints/epoch-{epoch + 1}")
        if done:
            break

    # ---- save
    if not main:  # the model is identical on every rank; rank 0 saves and evaluates it
        return {"steps": step, "total_steps": total_steps, "final_train_loss": last_loss, "stopped_early": bool(stop)}
    adapter = save_adapter(model, run_dir)
    runtime = time.time() - started
    summary = {
        "schema_version": rf.SCHEMA_VERSION,
        "trainable_params": counts["trainable"], "total_params": counts["total"],
        "trainable_percent": counts["percent"],
        "adapter_mb": round((adapter / "adapter_model.safetensors").stat().st_size / 1e6, 3),
        "runtime_s": round(runtime, 2), "train_time_s": round(time.time() - t0, 2),
        "final_train_loss": last_loss, "steps": step, "total_steps": total_steps, "epochs": round(epoch_float, 4),
        "samples_seen": samples, "samples_per_s": samples / (time.time() - t0),
        "micro_batch": micro_batch, "grad_accum": grad_accum, "num_processes": world,
        "effective_batch": micro_batch * grad_accum * world,
        "requested_split": [cfg.per_device_batch, cfg.grad_accum],
        "gradient_checkpointing": checkpointing, "embeddings_on_cpu": offload, "base_cache": cache.to_dict(),
        "compile": compile_mode, "compile_reason": why, "compiled_layers": compiled, "device": str(device), "dtype": str(loaded.dtype).replace("torch.", ""),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "stopped_early": bool(stop), "shared_base": shared.describe() if shared is not None else None,
        "data": {"train": train_report.to_dict(), "val": val_report.to_dict() if val_report else None},
    }
    rf.atomic_write_json(run_dir / rf.SUMMARY, summary)
    evaluations = ([("val", val_clips, val_report)] if val_clips else []) + [
        (name, *load_clips(source, label_words=cfg.label_words, max_seconds=cfg.max_clip_seconds, skip_bad=True))
        for name, source in evaluate_on.items()]
    if evaluations and not stop:
        from engine.tasks.evaluate import evaluate_clips

        from engine.tasks.evaluate import choose_threshold

        model.eval()
        threshold, threshold_source = 0.5, "fixed (arg-max)"
        for name, clips, report in evaluations:
            with eager_if_compiled(compiled):
                _, records = evaluate_clips(loaded, clips, report, run_dir, name, cfg.system_prompt, cfg.prompt,
                                            cfg.label_words, audio=audio, threshold=threshold,
                                            threshold_source=threshold_source,
                                            producer={"kind": "adapter", "run": run_dir.name, "adapter": str(adapter)})
            if name == threshold_from:
                threshold = choose_threshold(records)
                threshold_source = f"chosen on evaluation {name!r} (max balanced accuracy)"
            if name == "val" and clips is val_clips:  # the final validation point, from the same scores
                log_validation(validation_metrics([r["p_speech"] for r in records], [r["label"] for r in records]),
                               step, epoch_float)
    log.info("done in %.1f s: %d steps, final loss %.4f", runtime, step, last_loss)
    return summary


# ----------------------------------------------------------------------------- CLI

# Manifest filters with a flag of their own; other columns are filtered through --config or the form.
FILTER_FLAGS = {"duration_ms": "--filter-duration", "snr_db": "--filter-snr"}


def train_arguments(p: argparse.ArgumentParser) -> None:
    """Where the run goes, then one flag per TrainConfig field that has one (engine/cliargs.py);
    a flag not given leaves the value of --config, of a queued run's config.json, or the default."""
    p.add_argument("--config", type=Path, help="YAML file of TrainConfig fields; flags override it")
    p.add_argument("--run-dir", "--output-dir", dest="run_dir", type=Path,
                   help="run folder to create (default: <runs-dir>/<label>-s<seed>-<time>)")
    p.add_argument("--runs-dir", type=Path, default=None, help="workspace (default: ./runs or $QLORA_DASH_RUNS)")
    p.add_argument("--name", help="run name inside the workspace")
    cliargs.add_config_arguments(p, TrainConfig, overlay=True)
    p.add_argument("--add-mlp-targets", action="store_true", help="same as --targets attention+mlp")
    for column, flag in FILTER_FLAGS.items():
        p.add_argument(flag, dest=flag[2:].replace("-", "_"),
                       help=f"keep clips whose {column} is in 'min:max' or 'v1,v2'")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The validated TrainConfig: --config (or the queued run's config.json), then the flags given."""
    queued_config = Path(args.run_dir) / rf.CONFIG if args.run_dir else None
    if args.config:
        cfg = TrainConfig.from_yaml(args.config)
    elif queued_config is not None and queued_config.is_file():
        cfg = TrainConfig.from_dict(rf.read_json(queued_config))  # a run queued by the dashboard
    else:
        cfg = TrainConfig()
    cfg = cliargs.config_from_namespace(TrainConfig, args, base=cfg)
    if args.add_mlp_targets:
        if args.targets and args.targets != "attention+mlp":
            raise ConfigError("targets", "--add-mlp-targets and --targets disagree; use one")
        cfg.targets = "attention+mlp"
    filters = dict(cfg.filters)
    for column, flag in FILTER_FLAGS.items():
        spec = getattr(args, flag[2:].replace("-", "_"))
        if spec:
            filters[column] = spec
    cfg.filters = filters
    return cfg.validate()


def train_argv(cfg: TrainConfig, every_field: bool = False) -> tuple[list[str], list[str]]:
    """The `train` flags giving `cfg` (after "train", run folder left out), and "name=value" of what
    no flag can say (those values reach a run through --config or its config.json).

    Only values off their defaults are written, unless every_field (a relaunch must override
    whatever --config says). Filters on duration_ms and snr_db have flags; other columns do not.
    """
    argv = cliargs.config_to_argv(cfg, every_field=every_field)
    leftovers = []
    for column, spec in cfg.filters.items():
        if column in FILTER_FLAGS:
            argv += cliargs.flag_with_value(FILTER_FLAGS[column], str(spec))
        else:
            leftovers.append(f"filters.{column}={spec}")
    defaults = TrainConfig()
    leftovers += [f"{name}={getattr(cfg, name)!r}" for name in cliargs.flagless_fields(TrainConfig)
                  if name != "filters" and getattr(cfg, name) != getattr(defaults, name)]
    return argv, leftovers


def default_run_name(cfg: TrainConfig) -> str:
    import re

    base = re.sub(r"[^A-Za-z0-9._+-]+", "-", cfg.display_label()).strip("-") or "run"
    return f"{base}-r{cfg.lora_r}-s{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"


def rank_argv(args: argparse.Namespace, cfg: TrainConfig, run_dir: Path) -> list[str]:
    """The `train` command each data-parallel rank runs: every field with a flag as resolved here
    (so the ranks agree whatever --config says), --config again for the fields without a flag,
    and the run folder chosen here, so every rank writes the same one."""
    return ["train", *train_argv(cfg, every_field=True)[0], *(["--config", str(args.config)] if args.config else []),
            *(["--json"] if args.json else []), "--run-dir", str(run_dir)]


def _run_launcher(command: list[str]) -> int:
    """Run the data-parallel launcher, passing SIGTERM/SIGINT on (a cancel reaches this process
    only); torchrun hands them to every rank, which stop after the same step."""
    launcher = subprocess.Popen(command)
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, lambda signum, _frame: launcher.send_signal(signum))
        except ValueError:  # not the main thread
            pass
    try:
        return launcher.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train_main(args: argparse.Namespace) -> int:
    import json

    from engine.ops import disk
    from engine.tasks import distributed as dist

    try:
        cfg = config_from_args(args)
        root = Path(args.run_dir).parent if args.run_dir else rf.runs_root(args.runs_dir)
        if not dist.launched():  # the same check as the Train page's, before any folder is made
            disk.preflight(root, disk.train_bytes(cfg.to_dict()))
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            run_dir = rf.unique_run_dir(root, rf.check_run_name(args.name) if args.name else default_run_name(cfg))
    except disk.DiskSpaceError as exc:
        print(f"error: not enough disk space to train: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, rf.RunFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if cfg.num_processes > 1 and not dist.launched():
        # every rank must resolve the same run folder, so pass the one chosen here
        return _run_launcher(dist.launch_command(cfg.num_processes, rank_argv(args, cfg, run_dir)))
    try:
        summary = train(cfg, run_dir)
    except (ConfigError, rf.RunFolderError, ValueError, OSError) as exc:
        print(f"error: {describe_error(exc) if is_disk_full(exc) else exc}", file=sys.stderr)
        return 1
    if not dist.is_main():
        return 0
    status = rf.read_json(Path(run_dir) / rf.STATUS)
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "state": status["state"], **summary}))
    else:
        print(f"{status['state']}: {run_dir} ({summary['steps']} steps, final loss {summary['final_train_loss']:.4f}, "
              f"{summary['trainable_params']:,} trainable params)")
    return 0 if status["state"] == rf.SUCCEEDED else 3
