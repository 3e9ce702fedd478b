"""Logit-scoring evaluation: one forward pass per batch, no text generation.

Each class's score is the log-probability, given the prompt, of the first token where the two
answers differ (see the runtime's LabelPlan); p(SPEECH) is the softmax over the two class scores and
the prediction is SPEECH when p(SPEECH) >= threshold (0.5 = arg-max, or one chosen on a
validation evaluation and recorded). Targets: a training run's adapter (`--run`), any PEFT
adapter folder (`--checkpoint`), or the base model alone (`--base`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from engine.runs import folder as rf
from engine import cliargs
from engine.config import CONTROLS, DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT, ConfigError, EvalConfig
from engine.labels import DEFAULT_LABEL_SET
from engine.runs.lifecycle import StopRequested, StopSignal, run_lifecycle
from engine.runs.predictions import SPEECH, make_record, save_predictions_file, write_evaluation

log = logging.getLogger("engine.tasks.evaluate")


def score_audio(loaded, audios: "Sequence[np.ndarray] | ClipSamples", system_prompt: str, prompt: str,
                label_words: Sequence[str], batch_size: int = 8, padding_side: str = "left", trim: bool = True,
                on_batch: Callable[[int, int], Any] | None = None, prefix_cache: bool = True,
                compiled: bool = False) -> np.ndarray:
    """(N, classes) class scores, columns in `label_words` order, for 16 kHz clips: decoded, or
    `ClipSamples` (decoded batch by batch in the batch-ahead thread).

    Clips are batched longest-first so a batch's trimmed encoder input stays short; results
    come back in input order. on_batch(clips scored, clips in all) is called after each batch.
    With prefix_cache the system turn, the same for every clip, runs once (the runtime's
    `system_prefix`; equal to the whole sequence up to float rounding, tests/test_scoring.py).
    The next batch is made (tokens, mel features) in a thread while the device runs this one,
    and a batch's scores are fetched only after the next batch is queued, so the GPU does not
    wait for the host between batches. compiled=True runs the encoder's and the language model's
    layers compiled (the runtime's compiled scoring forward; the first batches pay the
    compilation): for long evaluations only, see `choose_scoring_compile`.
    """
    import torch

    m = loaded.family.runtime()
    plan = m.label_plan(loaded.processor.tokenizer, label_words)
    lengths = audios.lengths if isinstance(audios, ClipSamples) else [len(a) for a in audios]
    order = sorted(range(len(audios)), key=lambda i: -lengths[i])
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    scores = np.zeros((len(audios), len(label_words)), dtype=np.float64)
    feature_device = str(loaded.device) if loaded.device.type == "cuda" else "cpu"
    cuda = loaded.device.type == "cuda"
    loaded.model.eval()
    autocast = torch.autocast(loaded.device.type, dtype=loaded.dtype, enabled=loaded.dtype != torch.float32)

    def make(idx: list[int]):
        batch = m.make_batch(loaded.processor, [audios[i] for i in idx], system_prompt, prompt, plan,
                             padding_side=padding_side, feature_device=feature_device,
                             after_system_prefix=prefix is not None)
        return batch.pin_memory() if cuda else batch

    done = 0
    pending: list[tuple[list[int], Any]] = []

    def collect(keep: int) -> None:
        nonlocal done
        while len(pending) > keep:
            idx, out = pending.pop(0)
            scores[idx] = out.float().cpu().numpy()
            done += len(idx)
            if on_batch is not None:
                on_batch(done, len(order))

    with torch.inference_mode(), m.scoring_attention(loaded.device):
        with autocast:
            prefix = m.system_prefix(loaded.model, loaded.processor, system_prompt) if prefix_cache and audios else None
        for idx, batch in zip(chunks, _made_ahead(make, chunks)):
            with autocast:
                pending.append((idx, m.class_scores(loaded.model, batch.to(loaded.device, non_blocking=cuda), plan,
                                                    trim=trim, prefix=prefix, compiled=compiled)))
            collect(keep=1)
        collect(keep=0)
    return scores


def _made_ahead(make: Callable[[Any], Any], items: Sequence[Any]):
    """make(item) for each item in order, the next one made in a worker thread while the caller
    works on the current one (tokenizing and mel features overlap the device's work)."""
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="make-batch") as pool:
        future = pool.submit(make, items[0])
        for k in range(len(items)):
            made = future.result()
            if k + 1 < len(items):
                future = pool.submit(make, items[k + 1])
            yield made


# Scoring compiled (`--compile auto`) from this many clips on. The compilation costs a fixed time at
# the start and each batch then runs faster, so it pays only on long evaluations. None until the
# compiled forward has been measured on a GPU (benchmarks/perf_round4_eval.sh: compile time / time
# saved per clip, on the 7B): it is exact on the CPU, but its GPU speed and robustness are not known
# yet, so auto leaves it off and `--compile on` tries it.
SCORING_COMPILE_MIN_CLIPS: int | None = None


def choose_scoring_compile(mode: str, device_type: str, n_clips: int, unsupported: str | None = None) -> tuple[bool, str]:
    """Whether to score compiled for `mode` (auto|on|off), and why. auto: on a GPU, for evaluations
    of at least SCORING_COMPILE_MIN_CLIPS clips once that is set; never on the CPU. `unsupported`: why the model
    cannot run the compiled forward (the runtime's `compiled_scoring_unsupported`), if it cannot."""
    if mode == "off":
        return False, "turned off"
    if unsupported:
        return False, f"{'asked for, but' if mode == 'on' else 'auto:'} {unsupported}"
    if mode == "on":
        return True, "turned on"
    if device_type != "cuda":
        return False, "auto: only on a GPU"
    if SCORING_COMPILE_MIN_CLIPS is None:
        return False, "auto: not measured on a GPU yet; --compile on tries it"
    if n_clips < SCORING_COMPILE_MIN_CLIPS:
        return False, f"auto: {n_clips} clips; the compilation pays from {SCORING_COMPILE_MIN_CLIPS}"
    return True, f"auto: {n_clips} clips (the compilation pays from {SCORING_COMPILE_MIN_CLIPS})"


AUDIO_PREFIX_CPU_BUDGET = 4 * 2**30  # bytes of cached keys/values when scoring on the CPU
AUDIO_PREFIX_GPU_SHARE = 0.25  # ... and the share of free GPU memory they may take


def audio_prefixes(loaded, audios: Sequence[np.ndarray], system_prompt: str, batch_size: int) -> list[tuple[list[int], Any]]:
    """Each batch's chat up to and including its audio, as the runtime's cached prefix, for scoring
    many instructions on the same clips (prompt optimisation): the encoder and those tokens then
    run once per clip instead of once per candidate. Batches are longest-first like `score_audio`;
    once the memory budget is spent the remaining batches get None (scored without the cache)."""
    import torch

    m = loaded.family.runtime()
    if loaded.device.type == "cuda":
        budget = AUDIO_PREFIX_GPU_SHARE * torch.cuda.mem_get_info(loaded.device)[0]
    else:
        budget = AUDIO_PREFIX_CPU_BUDGET
    order = sorted(range(len(audios)), key=lambda i: -len(audios[i]))
    out, used = [], 0
    loaded.model.eval()
    with torch.inference_mode(), m.scoring_attention(loaded.device), torch.autocast(
            loaded.device.type, dtype=loaded.dtype, enabled=loaded.dtype != torch.float32):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            prefix = None
            if used < budget:
                prefix = m.audio_prefix(loaded.model, loaded.processor, [audios[i] for i in idx], system_prompt,
                                        feature_device=loaded.device.type)
                used += prefix.nbytes
                if used > budget:  # keep what fits; this batch and the rest go uncached
                    log.info("audio prefix cache: %.2f GB budget reached after %d clips", budget / 1e9, start)
                    prefix = None
            out.append((idx, prefix))
    return out


def score_on_audio_prefixes(loaded, prefixes: list[tuple[list[int], Any]], audios: Sequence[np.ndarray],
                            system_prompt: str, prompt: str, label_words: Sequence[str]) -> np.ndarray:
    """`score_audio`'s scores for one instruction, on prefixes from `audio_prefixes`."""
    import torch

    m = loaded.family.runtime()
    plan = m.label_plan(loaded.processor.tokenizer, label_words)
    scores = np.zeros((len(audios), len(label_words)), dtype=np.float64)
    loaded.model.eval()
    for idx, prefix in prefixes:
        if prefix is None:
            scores[idx] = score_audio(loaded, [audios[i] for i in idx], system_prompt, prompt, label_words,
                                      batch_size=len(idx))
            continue
        with torch.inference_mode(), m.scoring_attention(loaded.device), torch.autocast(
                loaded.device.type, dtype=loaded.dtype, enabled=loaded.dtype != torch.float32):
            batch = m.instruction_batch(loaded.processor, system_prompt, prompt, plan, rows=len(idx)).to(loaded.device)
            scores[idx] = m.class_scores(loaded.model, batch, plan, prefix=prefix).float().cpu().numpy()
    return scores


def use_base_cache(loaded, mode: str = "auto") -> dict:
    """Score with the 4-bit base's dequantized weights kept (engine.models.base_cache); the
    decision is recorded in every evaluation made with `loaded`."""
    from engine.models import base_cache

    loaded.base_cache = base_cache.prepare(loaded.model, mode, loaded.device,
                                           shared_by=loaded.family.runtime().gpu_share()).to_dict()
    return loaded.base_cache


def p_speech_from_scores(scores: np.ndarray) -> np.ndarray:
    """Probability of the positive class: the softmax over the class scores, at its column."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp[:, DEFAULT_LABEL_SET.index(DEFAULT_LABEL_SET.positive)] / exp.sum(axis=1)


def choose_threshold(records: list[dict]) -> float:
    """The p(SPEECH) cut that maximises balanced accuracy on (validation) records."""
    p = np.array([r["p_speech"] for r in records])
    y = np.array([r["label"] == SPEECH for r in records])
    best, best_t = -1.0, 0.5
    for t in np.unique(np.concatenate([p, [0.5]])):
        pred = p >= t
        tpr = (pred & y).sum() / max(1, y.sum())
        tnr = (~pred & ~y).sum() / max(1, (~y).sum())
        bal = (tpr + tnr) / 2
        if bal > best + 1e-12:
            best, best_t = bal, float(t)
    return best_t


def apply_control(audios: list[np.ndarray], control: str | None, seed: int = 0) -> list[np.ndarray]:
    """The audio-is-used control: silence keeps each clip's length; shuffle permutes clips."""
    if control is None:
        return audios
    if control == "silence":
        return [np.zeros_like(a) for a in audios]
    return [audios[i] for i in _control_order(len(audios), control, seed)]


def _control_order(n: int, control: str | None, seed: int = 0) -> list[int]:
    """Which clip's audio each position gets under `control` (shuffle: a seeded permutation)."""
    if control is None or control == "silence":
        return list(range(n))
    if control == "shuffle":
        return [int(i) for i in np.random.default_rng(seed).permutation(n)]
    raise ConfigError("control", f"{control!r} is not one of {', '.join(CONTROLS)}")


# Formats whose header states the frame count exactly (libsndfile's `frames`; a WAV cut short
# reports the frames it holds).
_EXACT_LENGTH_FORMATS = frozenset({"WAV", "WAVEX", "RF64", "W64", "FLAC", "AIFF", "AU", "CAF"})


def header_length(path: str | Path, max_seconds: float | None) -> int | None:
    """The number of samples `load_audio(path, max_seconds)` returns, from the file's header alone:
    for a 16 kHz file of a format whose header states its frame count. None for any other file
    (resampled, compressed, unreadable, too short): decode it to know."""
    import soundfile as sf

    from engine.data.audio import MIN_SAMPLES, SAMPLE_RATE

    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - soundfile raises several types; decoding then says why
        return None
    if info.samplerate != SAMPLE_RATE or info.format not in _EXACT_LENGTH_FORMATS or not 0 < info.frames < 2**40:
        return None
    n = info.frames
    if max_seconds is not None:  # load_audio reads ceil(max_seconds x rate) frames, keeps round(max_seconds x 16 kHz)
        n = min(n, int(np.ceil(max_seconds * SAMPLE_RATE)), int(round(max_seconds * SAMPLE_RATE)))
    return n if n >= MIN_SAMPLES else None


def _is_compile_failure(exc: BaseException) -> bool:
    """An error of torch.compile itself (dynamo or inductor), not of the scoring it would run."""
    import torch._dynamo.exc

    kinds: list[type] = [torch._dynamo.exc.TorchDynamoException]
    try:
        from torch._inductor.exc import InductorError

        kinds.append(InductorError)
    except ImportError:  # older torch: inductor's errors reach us as dynamo's BackendCompilerFailed
        pass
    return isinstance(exc, tuple(kinds))


class HeaderLengthMismatch(RuntimeError):
    """A clip decoded to another length than its header gave: the batches made from the header
    lengths are not the ones its decoded length makes."""


class ClipSamples(Sequence):
    """The clips' samples for `score_audio`, as `apply_control([audio.load(c) for c in clips], control)`
    gives them, each decoded only when indexed: score_audio does that in its batch-ahead thread, so
    decoding overlaps the device's work instead of coming before all of it.

    The lengths, which fix the batches (longest first), are known before: from the header where that
    is exact (`header_length`, with an AudioCache as the loader), else by decoding the clip at once.
    A clip that decodes to another length raises HeaderLengthMismatch (`evaluate_clips` then scores
    again with every clip decoded first), so the batches, and every score, are the ones of decoding first.
    """

    def __init__(self, clips: Sequence[Any], audio, control: str | None = None, seed: int = 0) -> None:
        from engine.data.manifests import AudioCache

        self.clips, self.audio, self.control = list(clips), audio, control
        self.order = _control_order(len(self.clips), control, seed)
        self._decoded: dict[int, np.ndarray] = {}
        self._lengths: list[int] = []
        for j, clip in enumerate(self.clips):
            n = header_length(clip.path, audio.max_seconds) if isinstance(audio, AudioCache) else None
            if n is None:
                self._decoded[j] = audio.load(clip)
                n = len(self._decoded[j])
            self._lengths.append(n)
        self.lengths = [self._lengths[j] for j in self.order]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, k: int) -> np.ndarray:
        j = self.order[k]
        samples = self._decoded.get(j)
        if samples is None:
            samples = self.audio.load(self.clips[j])
            if len(samples) != self._lengths[j]:
                raise HeaderLengthMismatch(f"{self.clips[j].path}: decoded to {len(samples)} samples, its header "
                                           f"gave {self._lengths[j]}")
        return np.zeros_like(samples) if self.control == "silence" else samples

    def decoded(self) -> list[np.ndarray]:
        """Every clip decoded now, in order (what scoring took before ClipSamples)."""
        return apply_control([self.audio.load(c) for c in self.clips], self.control)


PROGRESS_EVERY_S = 1.0  # evaluations/<name>/progress.json is rewritten at most this often


class ProgressFile:
    """Writes evaluations/<name>/progress.json {clips_scored, total_clips, clips_per_s, eta_s,
    started_at, updated_at} at most once every PROGRESS_EVERY_S (and at the first and last batch),
    for the dashboard's job lists; `remove()` once evaluation.json is written."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(folder) / rf.EVALUATION_PROGRESS
        self.clock = clock
        self.started, self.started_at = clock(), rf.now_iso()
        self.written_at: float | None = None

    def __call__(self, scored: int, total: int) -> bool:
        now = self.clock()
        if self.written_at is not None and scored < total and now - self.written_at < PROGRESS_EVERY_S:
            return False
        elapsed = now - self.started
        rate = scored / elapsed if elapsed > 0 else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rf.atomic_write_json(self.path, {
            "clips_scored": scored, "total_clips": total, "clips_per_s": round(rate, 3) if rate else None,
            "eta_s": round((total - scored) / rate, 1) if rate else None,
            "started_at": self.started_at, "updated_at": rf.now_iso()})
        self.written_at = now
        return True

    def remove(self) -> None:
        """Remove the file, and its folder when nothing else is in it (a scoring that failed first)."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # holds predictions: the evaluation (or an older one of the same name)
            pass


def evaluate_clips(loaded, clips, report, run_dir: Path, name: str, system_prompt: str, prompt: str,
                   label_words: Sequence[str], producer: dict, audio=None, batch_size: int = 8,
                   threshold: float = 0.5, threshold_source: str = "fixed", control: str | None = None,
                   padding_side: str = "left", save_to: Path | None = None,
                   prefix_cache: bool = True, compile: str = "off") -> tuple[Path, list[dict]]:
    """Score clips and store the evaluation `name` in `run_dir`; returns (folder, records).

    The clips are decoded batch by batch while the device scores (`ClipSamples`). compile
    (auto|on|off): score with the compiled forward (`choose_scoring_compile`; recorded with its reason).
    """
    from engine.data.manifests import AudioCache

    audio = audio if audio is not None else AudioCache()  # an empty AudioCache is falsy (len 0)
    started = time.time()
    compiled, compile_reason = False, "turned off"
    if compile != "off":
        compiled, compile_reason = choose_scoring_compile(
            compile, loaded.device.type, len(clips), loaded.family.runtime().compiled_scoring_unsupported(loaded))
        log.info("scoring compile %s: %s", "on" if compiled else "off", compile_reason)
    progress = ProgressFile(rf.evaluation_dir(run_dir, name))
    progress(0, len(clips))
    try:
        audios: ClipSamples | list[np.ndarray] = ClipSamples(clips, audio, control)
        while True:  # each fallback happens at most once: then every clip is decoded, or compiling is off
            try:
                scores = score_audio(loaded, audios, system_prompt, prompt, label_words, batch_size, padding_side,
                                     on_batch=progress, prefix_cache=prefix_cache, compiled=compiled)
                break
            except HeaderLengthMismatch as exc:
                log.warning("%s; scoring again with every clip decoded first", exc)
                audios = audios.decoded()
            except Exception as exc:
                if not (compiled and _is_compile_failure(exc)):
                    raise
                log.warning("compiling the scoring forward failed (%s: %s); scoring again eager", type(exc).__name__, exc)
                compiled, compile_reason = False, f"{compile_reason}; compiling failed ({type(exc).__name__}), scored eager"
        lengths = audios.lengths if isinstance(audios, ClipSamples) else [len(a) for a in audios]
        p_speech = p_speech_from_scores(scores)
        records = [make_record(c.clip_id, c.path, c.label, float(p), float(s[0] - s[1]),
                               c.duration_s if c.duration_s is not None else n / loaded.family.sample_rate,
                               c.metadata, threshold)
                   for c, p, s, n in zip(clips, p_speech, scores, lengths)]
        elapsed = time.time() - started
        report_dict = report.to_dict() if report is not None else {}
        meta = {
            "producer": {**producer, "model": str(loaded.model_path), "quantization": loaded.quantization},
            "prompt": prompt, "system_prompt": system_prompt, "label_words": list(label_words),
            "scoring": "log-probability of the first answer token where the two label words differ",
            "threshold": threshold, "threshold_source": threshold_source, "control": control,
            "test_data": report_dict.get("source"), "manifest_sha256": report_dict.get("manifest_sha256"),
            "skipped": report_dict.get("bad_files", []), "truncated": report_dict.get("truncated", []),
            "time_taken_s": round(elapsed, 3), "clips_per_s": round(len(clips) / elapsed, 2) if elapsed else None,
            "batch_size": batch_size, "device": str(loaded.device),
            "base_cache": getattr(loaded, "base_cache", None), "prefix_cache": prefix_cache,
            "compile": "on" if compiled else "off", "compile_reason": compile_reason,
        }
        out = write_evaluation(run_dir, name, records, meta)
    finally:
        progress.remove()  # after evaluation.json (or a failure): a finished evaluation holds only its two files
    if save_to:
        save_predictions_file(save_to, records)
    return out, records


# ----------------------------------------------------------------------------- CLI

def eval_arguments(p: argparse.ArgumentParser) -> None:
    cliargs.add_config_arguments(p, EvalConfig)
    p.add_argument("--json", action="store_true", help="print the evaluation summary as one JSON object")


def find_run(spec: str, runs_dir: Path | None) -> Path:
    """A run given as a folder, or by its name in the workspace (which it may not escape)."""
    path = Path(spec)
    if path.is_dir():
        return path
    return rf.resolve_in_root(rf.runs_root(runs_dir), spec)


def optimised_prompt(opro_run: Path, label_words: Sequence[str]) -> str:
    """The best prompt an OPRO run found (engine/tasks/opro/), checked against the label words in use."""
    from engine.runs.opro_history import best_entry

    config = rf.read_json(opro_run / rf.CONFIG)
    if config.get("kind") != rf.KIND_OPRO:
        raise rf.RunFolderError(f"{opro_run} is not an OPRO run (kind {config.get('kind')!r})")
    if list(config.get("label_words") or []) != list(label_words):
        raise ConfigError("prompt_from", f"{opro_run.name} optimised prompts for the answer words "
                                         f"{config.get('label_words')}, not {list(label_words)}")
    best = best_entry(rf.read_jsonl(opro_run / rf.OPRO_HISTORY))
    if best is None:
        raise rf.RunFolderError(f"{opro_run} has no scored prompt yet ({rf.OPRO_HISTORY} is empty)")
    return best["prompt"]


def _score_into(args: argparse.Namespace, run_dir: Path, model_id: str, quantization: str, adapter: Path | None,
                producer: dict, system_prompt: str, prompt: str, words: list[str]) -> Path:
    """Score the test data with the chosen model into evaluation `args.name` of `run_dir`."""
    from engine.data.manifests import load_clips
    from engine.models import family_for

    threshold, source = 0.5, "fixed (arg-max)"
    if args.threshold is not None:
        threshold, source = args.threshold, "given"
    elif args.threshold_from:
        from engine.runs.predictions import read_predictions

        threshold = choose_threshold(read_predictions(run_dir, args.threshold_from))
        source = f"chosen on evaluation {args.threshold_from!r} (max balanced accuracy)"
    clips, report = load_clips(args.test_data, label_words=words, skip_bad=True)
    for bad in report.bad_files:
        print(f"warning: skipped unreadable clip {bad['path']}: {bad['reason']}", file=sys.stderr)
    if not clips:
        raise ValueError(f"test data {args.test_data}: no readable clips")
    m = family_for(model_id).runtime()
    loaded = m.load_model(model_id, quantization, args.device, args.dtype)
    if adapter is not None:
        m.load_adapter(loaded, adapter)
    use_base_cache(loaded, args.base_cache)
    name = f"{args.name}-{args.control}" if args.control else args.name
    out, _ = evaluate_clips(loaded, clips, report, run_dir, name, system_prompt, prompt, words, producer,
                            batch_size=args.batch_size, threshold=threshold, threshold_source=source,
                            control=args.control, padding_side=args.padding_side, save_to=args.save_predictions,
                            prefix_cache=args.prefix_cache == "on", compile=args.compile)
    return out


def eval_main(args: argparse.Namespace) -> int:
    from engine.models import ModelError

    try:
        cliargs.config_from_namespace(EvalConfig, args).validate()
        # Names first: a bad one must be refused before a model loads and every clip is scored.
        name = f"{args.name}-{args.control}" if args.control else args.name
        rf.check_run_name(name)
        if args.run_name:
            rf.check_run_name(args.run_name)
        run_cfg: dict[str, Any] = {}
        if args.run:
            run_dir = find_run(args.run, args.runs_dir)
            run_cfg = rf.read_json(run_dir / rf.CONFIG)
            adapter = run_dir / rf.ADAPTER_DIR
            if not (adapter / "adapter_model.safetensors").is_file():
                raise rf.RunFolderError(f"{run_dir} has no finished adapter ({rf.ADAPTER_DIR}/ missing)")
            producer = {"kind": "adapter", "run": run_dir.name, "adapter": str(adapter)}
        elif args.checkpoint:
            adapter = Path(args.checkpoint)
            if not (adapter / "adapter_config.json").is_file():
                raise ModelError(f"{adapter} has no adapter_config.json: not a PEFT adapter folder")
            adapter_cfg = rf.read_json(adapter / "adapter_config.json")
            run_cfg = {"model": args.model or adapter_cfg.get("base_model_name_or_path")}
            producer = {"kind": "checkpoint", "adapter": str(adapter.resolve())}
        else:
            adapter = None
            producer = {"kind": "base"}
        model_id = args.model or run_cfg.get("model") or "tiny"
        quantization = args.quantization or run_cfg.get("quantization", "4bit")
        prompt = args.prompt or run_cfg.get("prompt") or DEFAULT_PROMPT
        system_prompt = run_cfg.get("system_prompt") or DEFAULT_SYSTEM_PROMPT
        words = list(args.label_words or run_cfg.get("label_words") or DEFAULT_LABELS)
        if args.prompt_from:
            prompt = optimised_prompt(find_run(args.prompt_from, args.runs_dir), words)
        if args.run:
            # No lifecycle here (the run is finished): a cancel (SIGTERM) stops the scoring at once,
            # through the same cleanup as an error, and stores nothing.
            stop = StopSignal(interrupt=True).install()
            try:
                out = _score_into(args, run_dir, model_id, quantization, adapter, producer, system_prompt, prompt,
                                  words)
            except StopRequested:
                print(f"cancelled: evaluation {name} of {run_dir} not stored", file=sys.stderr)
                return 3
            finally:
                stop.restore()
        else:
            root = rf.runs_root(args.runs_dir)
            stem = args.run_name or f"{'base' if args.base else 'checkpoint'}-{Path(model_id).name}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = rf.unique_run_dir(root, rf.check_run_name(stem))
            config = {
                "schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_EVAL, "label": args.run_name or
                ("Base model" if args.base else f"Adapter {adapter.name}"), "model": model_id,
                "quantization": quantization, "adapter": str(adapter) if adapter else None, "prompt": prompt,
                "system_prompt": system_prompt, "label_words": words, "seed": None}
            with run_lifecycle(run_dir, rf.KIND_EVAL, config=config, log=False, interruptible=True) as run:
                out = _score_into(args, run_dir, model_id, quantization, adapter, producer, system_prompt, prompt,
                                  words)
            if run.state == rf.CANCELLED:
                print(f"cancelled: {run_dir}", file=sys.stderr)
                return 3
    except (ConfigError, rf.RunFolderError, ValueError, OSError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    evaluation = rf.read_json(out / rf.EVALUATION)
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), "evaluation": str(out), **evaluation["summary"]}))
    else:
        s = evaluation["summary"]
        print(f"{out}: accuracy {s['accuracy'] * 100:.1f}% ({s['correct']}/{s['n']})  "
              + "  ".join(f"{k} {v['accuracy'] * 100:.1f}% ({v['correct']}/{v['n']})" for k, v in s["per_class"].items()))
    return 0
