"""Prompt optimisation (OPRO) of a frozen model: `python -m engine opro ...`.

The scored model (a training run's adapter, or the base model) never changes. Each candidate
instruction is scored by logit scoring on a development set; the objective is balanced
accuracy, ties broken by the mean log-probability of the correct class. New candidates come
from a proposer:

- `EditSearch` (no model, the default): deterministic edits of the best prompts so far
  (paraphrase the question or the answer clause, reorder sentences, add or remove a constraint);
- `ModelProposer`: a causal LM (any local Hugging Face folder or cached hub id, or the audio
  model's own language model in text-only mode) fed an OPRO meta-prompt listing the best
  prompts with their scores, as in Yang et al., "Large Language Models as Optimizers" (2023).

Every candidate passes `sanitise_prompt` (the answer words stay exactly the label words; length
bounded; one line) and duplicates are dropped. The history is appended to the run folder as each
candidate is scored, so a cancelled or crashed search keeps what it found. Only when the search
finishes is the best dev prompt evaluated, once, on the held-out test set, next to the original
prompt on the same clips. The run-folder contract is in docs/OPRO.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engine.runs import folder as rf
from engine.cliargs import add_config_arguments, cli_field, config_from_namespace, field_choices
from engine.config import DEFAULT_LABELS, DEFAULT_PROMPT, DEFAULT_SYSTEM_PROMPT, DEVICES, DTYPES, QUANTIZATIONS, ConfigError

from engine.runs.lifecycle import StopSignal, run_lifecycle
from engine.runs.opro_history import best_entry, rank_key, top_entries  # noqa: F401 (the search's ranking rule)

log = logging.getLogger("engine.tasks.opro")

TEST_NAME = "test"  # evaluations/test: the best dev prompt on the test set
ORIGINAL_SUFFIX = "-original-prompt"  # evaluations/test-original-prompt: the original prompt, same clips
ORIGINAL_TEST_NAME = TEST_NAME + ORIGINAL_SUFFIX
DEFAULT_MAX_PROMPT_CHARS = 300
MIN_PROMPT_CHARS = 10
DEFAULT_TOP_K = 10  # prompts shown to the proposer, as in the OPRO paper's meta-prompt
PROPOSER_ROUNDS = 3  # generate calls per iteration before the edit search fills the gaps
PROPOSER_EDIT, PROPOSER_SELF, PROPOSER_MODEL = "edit", "self", "model"
PROPOSERS = (PROPOSER_EDIT, PROPOSER_SELF, PROPOSER_MODEL)


# ----------------------------------------------------------------------------- sanitising

def answer_clause(label_words: Sequence[str]) -> str:
    return f"Answer with one word: {label_words[0]} or {label_words[1]}."


def prompt_key(prompt: str) -> str:
    """Duplicate key: case and spacing ignored."""
    return " ".join(prompt.split()).casefold()


def _word_pattern(word: str) -> re.Pattern:
    """A label word in any case, with optional space/dash/underscore between its letters."""
    letters = [re.escape(ch) for ch in word if ch.isalnum()]
    return re.compile(r"(?<![A-Za-z0-9])" + r"[\s_-]?".join(letters) + r"(?![A-Za-z0-9])", re.IGNORECASE)


_UPPER_WORD = re.compile(r"(?<![A-Za-z0-9])[A-Z][A-Z0-9_-]*[A-Z0-9](?![A-Za-z0-9])")


def sanitise_prompt(text: str, label_words: Sequence[str], max_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                    repair: bool = False) -> tuple[str | None, str]:
    """(prompt, note) for an acceptable candidate, else (None, why it was refused).

    Accepted prompts are one printable line of at most `max_chars`, hold no chat markers, name both label
    words exactly as written, and contain no other upper-case word or non-lower-case variant of a
    label word that could read as an answer word ("speech" and "non-speech" in lower case are
    plain English). With `repair`, a text naming neither label word (and breaking no other rule)
    gets the standard answer clause appended: note "answer clause added".
    """
    prompt = " ".join(str(text).split()).strip().strip("\"'`").strip()
    if "<|" in prompt or "|>" in prompt:
        return None, "contains chat markers"
    if not prompt.isprintable() or "\ufffd" in prompt:
        return None, "contains unprintable characters"
    if not re.search(r"[A-Za-z]{3}", prompt):
        return None, "has no words"
    for word in label_words:
        for match in _word_pattern(word).finditer(prompt):
            found = match.group(0)
            if found != word and found != found.lower():
                return None, f"changes the answer word {word} to {found!r}"
    for token in _UPPER_WORD.findall(prompt):
        if token not in label_words:
            return None, f"upper-case word {token!r} could read as an answer word"
    present = [bool(re.search(r"(?<![A-Za-z0-9])" + re.escape(w) + r"(?![A-Za-z0-9])", prompt))
               for w in label_words]
    note = "ok"
    if not all(present):
        if repair and not any(present):
            prompt = f"{prompt.rstrip()} {answer_clause(label_words)}"
            note = "answer clause added"
        else:
            return None, f"must name both answer words exactly: {' and '.join(label_words)}"
    if len(prompt) > max_chars:
        return None, f"longer than {max_chars} characters ({len(prompt)})"
    if len(prompt) < MIN_PROMPT_CHARS:
        return None, f"shorter than {MIN_PROMPT_CHARS} characters"
    return prompt, note


# ----------------------------------------------------------------------------- ranking

# ----------------------------------------------------------------------------- edit search

QUESTIONS = (
    "Is this short clip speech or non-speech?",
    "Does this audio contain human speech?",
    "Listen to the clip: is someone talking?",
    "Is a human voice speaking words in this recording?",
    "Does the clip contain spoken language, or only other sounds?",
    "Classify the audio: is it speech, or something else such as noise, music, a tone or silence?",
    "Is there talking in this audio clip?",
)
ANSWER_CLAUSES = (
    "Answer with one word: {0} or {1}.",
    "Reply with {0} or {1} only.",
    "Respond with exactly one word, {0} or {1}.",
    "Answer {0} if someone speaks, otherwise {1}.",
    "The answer is one word: {0} or {1}.",
)
CONSTRAINTS = (
    "Music, singing without words, noise, tones and silence are not speech.",
    "Whispered, distant or muffled talking still counts as speech.",
    "Listen to the whole clip before answering.",
    "Ignore background noise when a voice is present.",
    "Do not explain your answer.",
    "Be careful: the clip may be very short.",
)
EDIT_OPERATIONS = ("paraphrase question", "paraphrase answer clause", "reorder", "add constraint", "remove sentence")
PARENTS_FROM_TOP = 3


def split_sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.?!])\s+", text.strip()) if s]


def _names_label_word(sentence: str, label_words: Sequence[str]) -> bool:
    return any(re.search(r"(?<![A-Za-z0-9])" + re.escape(w) + r"(?![A-Za-z0-9])", sentence) for w in label_words)


def apply_edit(prompt: str, operation: str, rng: random.Random, label_words: Sequence[str]) -> str | None:
    """One edit of `prompt`, or None when the operation does not apply to it."""
    sentences = split_sentences(prompt)
    answer_idx = [i for i, s in enumerate(sentences) if _names_label_word(s, label_words)]
    other_idx = [i for i in range(len(sentences)) if i not in answer_idx]
    if operation == "paraphrase question":
        questions = [i for i in other_idx if sentences[i].endswith("?")] or other_idx
        replacement = rng.choice([q for q in QUESTIONS if q not in sentences])
        if questions:
            sentences[questions[0]] = replacement
        else:
            sentences.insert(0, replacement)
    elif operation == "paraphrase answer clause":
        clauses = [c.format(*label_words) for c in ANSWER_CLAUSES]
        choices = [c for c in clauses if c not in sentences]
        if not answer_idx or not choices:
            return None
        sentences[answer_idx[-1]] = rng.choice(choices)
        for i in reversed(answer_idx[:-1]):
            del sentences[i]
    elif operation == "reorder":
        if len(sentences) < 2:
            return None
        i, j = rng.sample(range(len(sentences)), 2)
        sentences.insert(j, sentences.pop(i))
    elif operation == "add constraint":
        choices = [c for c in CONSTRAINTS if c not in sentences]
        if not choices:
            return None
        position = answer_idx[-1] if answer_idx else len(sentences)
        sentences.insert(rng.choice([position, len(sentences)]), rng.choice(choices))
    elif operation == "remove sentence":
        if len(other_idx) < 2:  # keep at least one instruction besides the answer clause
            return None
        del sentences[rng.choice(other_idx)]
    else:
        raise ValueError(f"unknown edit operation {operation!r}")
    return " ".join(sentences)


@dataclass
class Candidate:
    prompt: str
    parent: int | None
    source: str  # "proposer" | "edit"
    operation: str


class EditSearch:
    """Deterministic edit-based proposer: the same seed and history give the same candidates."""

    kind = PROPOSER_EDIT

    def __init__(self, label_words: Sequence[str], seed: int, max_chars: int = DEFAULT_MAX_PROMPT_CHARS):
        self.label_words = list(label_words)
        self.seed = seed
        self.max_chars = max_chars

    def propose(self, history: Sequence[dict], k: int, iteration: int, seen: set[str]) -> list[Candidate]:
        rng = random.Random(f"opro-edit-{self.seed}-{iteration}")
        parents = top_entries(history, PARENTS_FROM_TOP)
        out: list[Candidate] = []
        for _ in range(40 * k):
            if len(out) == k:
                break
            parent = rng.choice(parents)
            operation = rng.choice(EDIT_OPERATIONS)
            edited = apply_edit(parent["prompt"], operation, rng, self.label_words)
            if edited is None:
                continue
            prompt, _ = sanitise_prompt(edited, self.label_words, self.max_chars)
            if prompt is None or prompt_key(prompt) in seen:
                continue
            seen.add(prompt_key(prompt))
            out.append(Candidate(prompt, parent["id"], "edit", operation))
        return out


# ----------------------------------------------------------------------------- model proposer

def meta_prompt(history: Sequence[dict], label_words: Sequence[str], top_k: int = DEFAULT_TOP_K) -> str:
    """The OPRO meta-prompt: task, the top-k prompts worst to best with their scores, the ask."""
    speech, nonspeech = label_words
    shown = list(reversed(top_entries(history, top_k)))
    lines = [
        "Your task is to write the instruction that an audio classifier receives together with a short "
        f"audio clip. The classifier must answer with exactly one word: {speech} if the clip contains human "
        f"speech, {nonspeech} otherwise (music, noise, tones, silence).",
        "",
        "Below are earlier instructions with their scores on a development set (balanced accuracy from 0 to "
        "100, higher is better), from worst to best:",
        "",
    ]
    for entry in shown:
        lines += [f"text: [{entry['prompt']}]", f"score: {100 * entry['balanced_accuracy']:.1f}", ""]
    lines.append("Write a new instruction that is different from all of the above and scores as high as "
                 f"possible. Keep the answer words exactly {speech} and {nonspeech}. Write only the new "
                 "instruction, in square brackets.")
    return "\n".join(lines)


def extract_proposal(text: str) -> str:
    """The instruction inside the first [...] of a generation, else its first non-empty line."""
    match = re.search(r"\[([^\[\]]+)\]", text)
    if match:
        return match.group(1).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip().lstrip("[").strip()
    return ""


class ModelProposer:
    """Proposes prompts by sampling a causal LM on the meta-prompt; sanitises and dedupes them.

    `generate(text, k, seed) -> list[str]` returns k sampled continuations of `text` (the
    meta-prompt already wrapped in the model's chat format). Slots the model cannot fill with
    usable, new prompts after PROPOSER_ROUNDS tries go to the edit search, and say so.
    """

    def __init__(self, kind: str, name: str | None, generate: Callable[[str, int, int], list[str]],
                 chat: Callable[[str], str], label_words: Sequence[str], seed: int,
                 max_chars: int = DEFAULT_MAX_PROMPT_CHARS, top_k: int = DEFAULT_TOP_K):
        self.kind, self.name = kind, name
        self.generate, self.chat = generate, chat
        self.label_words = list(label_words)
        self.seed, self.max_chars, self.top_k = seed, max_chars, top_k
        self.fallback = EditSearch(label_words, seed, max_chars)
        self.counts = {"proposed": 0, "accepted": 0, "rejected": 0, "time_s": 0.0}

    def propose(self, history: Sequence[dict], k: int, iteration: int, seen: set[str]) -> list[Candidate]:
        parent = best_entry(history)["id"]
        text = self.chat(meta_prompt(history, self.label_words, self.top_k))
        out: list[Candidate] = []
        for attempt in range(PROPOSER_ROUNDS):
            if len(out) == k:
                break
            started = time.time()
            generations = self.generate(text, k - len(out), self.seed * 1000 + iteration * 10 + attempt)
            self.counts["time_s"] += time.time() - started
            for raw in generations:
                self.counts["proposed"] += 1
                prompt, note = sanitise_prompt(extract_proposal(raw), self.label_words, self.max_chars, repair=True)
                if prompt is not None and prompt_key(prompt) in seen:
                    prompt, note = None, "duplicate of an earlier prompt"
                if prompt is None or len(out) == k:
                    self.counts["rejected"] += 1
                    log.info("iteration %d: proposal rejected (%s): %r", iteration, note, raw[:200])
                    continue
                self.counts["accepted"] += 1
                seen.add(prompt_key(prompt))
                operation = "meta-prompt" if note == "ok" else "meta-prompt + answer clause"
                out.append(Candidate(prompt, parent, "proposer", operation))
        if len(out) < k:
            log.info("iteration %d: the proposer gave %d usable new prompt(s) of %d; the edit search adds the rest",
                     iteration, len(out), k)
            out += self.fallback.propose(history, k - len(out), iteration, seen)
        return out


def family_chat(family) -> Callable[[str], str]:
    """The scored model's own chat turn format, used text-only, with the family's system prompt."""
    return lambda user: family.chat_text(family.default_system_prompt, user)


def tokenizer_chat(tokenizer) -> Callable[[str], str]:
    """The tokenizer's chat template when it has one, else the bare meta-prompt opening a bracket."""
    if getattr(tokenizer, "chat_template", None):
        return lambda user: tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                          add_generation_prompt=True)
    return lambda user: f"{user}\n\n["


def sampler(model, tokenizer, device, max_new_tokens: int, disable_adapter: bool = False):
    """generate(text, k, seed): k sampled continuations (temperature 1, as in OPRO)."""
    import contextlib

    import torch

    def generate(text: str, k: int, seed: int) -> list[str]:
        encoded = tokenizer([text], return_tensors="pt").to(device)
        torch.manual_seed(seed)
        context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
        with context, torch.inference_mode():
            hf = model.get_base_model() if disable_adapter else model
            out = hf.generate(**encoded, do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=max_new_tokens,
                              num_return_sequences=k, use_cache=True,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                              else tokenizer.eos_token_id)
        start = encoded["input_ids"].shape[1]
        return [tokenizer.decode(row[start:], skip_special_tokens=True) for row in out]

    return generate


def make_proposer(spec: str | None, loaded, label_words: Sequence[str], seed: int, max_chars: int, top_k: int):
    """EditSearch for no spec; the scored model's own LM for "self"; else a causal LM folder/hub id."""
    if not spec or spec == PROPOSER_EDIT:
        return EditSearch(label_words, seed, max_chars)
    max_new_tokens = max(32, max_chars // 2)
    if spec == PROPOSER_SELF:
        from peft import PeftModel

        adapter = isinstance(loaded.model, PeftModel)
        generate = sampler(loaded.model if adapter else loaded.hf, loaded.processor.tokenizer, loaded.device,
                           max_new_tokens, disable_adapter=adapter)
        return ModelProposer(PROPOSER_SELF, str(loaded.model_path), generate, family_chat(loaded.family),
                             label_words, seed, max_chars, top_k)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = loaded.family.runtime()
    path = m.resolve_model_path(spec)
    kwargs: dict[str, Any] = {"dtype": loaded.dtype}
    qconfig = m.quantization_config(loaded.quantization, loaded.dtype) if loaded.device.type == "cuda" else None
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map={"": loaded.device.index or 0})
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise m.ModelError(f"proposer {spec!r}: could not load a causal LM from {path}: {exc}") from exc
    if qconfig is None:
        model.to(loaded.device)
    model.eval()
    return ModelProposer(PROPOSER_MODEL, spec, sampler(model, tokenizer, loaded.device, max_new_tokens),
                         tokenizer_chat(tokenizer), label_words, seed, max_chars, top_k)


# ----------------------------------------------------------------------------- scoring on dev

@dataclass
class DevSet:
    """The development clips, decoded once and kept in memory for every candidate."""

    clips: list
    audios: list[np.ndarray]


def score_prompt(loaded, dev: DevSet, system_prompt: str, prompt: str, label_words: Sequence[str],
                 batch_size: int) -> dict[str, Any]:
    """Dev scores of one prompt: counts, accuracy, balanced accuracy, per class, log-likelihood."""
    from engine.stats import core as stats
    from engine.runs.predictions import SPEECH, make_record
    from engine.tasks.evaluate import p_speech_from_scores, score_audio

    scores = score_audio(loaded, dev.audios, system_prompt, prompt, label_words, batch_size)
    p_speech = p_speech_from_scores(scores)
    records = [make_record(c.clip_id, c.path, c.label, float(p), float(s[0] - s[1]),
                           len(a) / loaded.family.sample_rate)
               for c, p, s, a in zip(dev.clips, p_speech, scores, dev.audios)]
    summary = stats.evaluation_summary(records)
    log_probs = scores - np.logaddexp(scores[:, 0], scores[:, 1])[:, None]
    correct_column = np.array([0 if c.label == SPEECH else 1 for c in dev.clips])
    log_likelihood = float(log_probs[np.arange(len(dev.clips)), correct_column].mean())
    return {"n": summary["n"], "correct": summary["correct"], "accuracy": summary["accuracy"],
            "balanced_accuracy": summary["balanced_accuracy"], "log_likelihood": log_likelihood,
            "per_class": {cls: {k: part[k] for k in ("n", "correct", "accuracy")}
                          for cls, part in summary["per_class"].items()}}


# ----------------------------------------------------------------------------- the search

@dataclass
class OproSettings:
    """What `python -m engine opro` searches: prompts for a frozen model (a run's adapter or the
    base model), scored on dev data. Each field is one flag of the command."""

    run: str | None = cli_field(None, group="target", required=True)
    """optimise for this training run's adapter (folder, or its name)"""
    base: bool = cli_field(False, group="target", required=True)
    """optimise for the base model without adapter"""
    model: str | None = None
    """base model (default: the run's model; with --base: tiny)"""
    dev_data: str = cli_field("", "--dev-csv", "--dev-data", required=True)
    """development manifest (CSV/JSONL) or folder: every candidate is scored on it"""
    test_data: str | None = cli_field(None, "--test-csv", "--test-data")
    """held-out test data: the best dev prompt and the original are evaluated on it once"""
    iterations: int = 3
    """optimisation rounds (default 3)"""
    candidates: int = 4
    """new prompts scored per round (default 4)"""
    proposer: str | None = None
    """'self' (the audio model's own LM, text only), a causal LM folder or a cached hub id; default: the
    deterministic edit-based search"""
    seed: int | None = None
    """proposer sampling / edit search seed (default: the run's seed, else 0)"""
    run_dir: Path | None = None
    """exact run folder (used by the job queue)"""
    batch_size: int = 8
    """clips per forward pass (default 8)"""
    quantization: str | None = cli_field(None, choices=QUANTIZATIONS)
    """4bit, 8bit or none (default: the run's, else 4bit)"""
    prompt: str | None = None
    """the prompt to start from (default: the run's prompt)"""
    label_words: list[str] | None = None
    """SPEECH,NONSPEECH answer words (default: the run's)"""
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    """longest candidate accepted (default 300)"""
    top_k: int = DEFAULT_TOP_K
    """prompts shown to the proposer (default 10)"""
    device: str = cli_field("auto", choices=DEVICES)
    """auto (cuda when available), cpu or cuda"""
    dtype: str = cli_field("auto", choices=DTYPES)
    """compute dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16 or float32"""
    run_name: str | None = None
    """name of the OPRO run folder (default: opro-<run> or opro-base-<model>)"""
    runs_dir: Path | None = None
    """workspace (default: $QLORA_DASH_RUNS or ./runs)"""

    def check(self) -> None:
        if (self.run is None) == (not self.base):
            raise ConfigError("target", "give exactly one of --run RUN and --base")
        if not str(self.dev_data or "").strip():
            raise ConfigError("dev_data", "is required (a manifest CSV/JSONL or a folder)")
        for name, options in field_choices(OproSettings).items():
            if getattr(self, name) is not None and getattr(self, name) not in options:
                raise ConfigError(name, f"{getattr(self, name)!r} is not one of {', '.join(options)}")
        for name in ("iterations", "candidates", "batch_size", "top_k"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(name, f"must be at least 1 (got {getattr(self, name)})")
        if self.max_prompt_chars < 40:
            raise ConfigError("max_prompt_chars", f"must be at least 40 (got {self.max_prompt_chars})")


def resolve_target(settings: OproSettings, runs_root: Path) -> dict[str, Any]:
    """Model, adapter, prompts and label words of the frozen model to optimise for."""
    from engine.tasks.evaluate import find_run

    if settings.run:
        run_dir = find_run(settings.run, runs_root)
        cfg = rf.read_json(run_dir / rf.CONFIG)
        if cfg.get("kind") != rf.KIND_TRAIN:
            raise rf.RunFolderError(f"{run_dir} is a {cfg.get('kind')!r} run, not a training run")
        adapter = run_dir / rf.ADAPTER_DIR
        if not all((adapter / name).is_file() for name in rf.ADAPTER_FILES):
            raise rf.RunFolderError(f"{run_dir} has no finished adapter ({rf.ADAPTER_DIR}/ incomplete)")
        target = {"kind": "run", "run": run_dir.name, "run_dir": str(run_dir.resolve()),
                  "config_label": str(cfg.get("label") or run_dir.name), "seed": cfg.get("seed")}
    else:
        cfg, adapter = {}, None
        target = {"kind": "base", "run": None, "run_dir": None, "config_label": "Base model", "seed": None}
    model = settings.model or cfg.get("model") or "tiny"
    words = settings.label_words or cfg.get("label_words") or list(DEFAULT_LABELS)
    if len(words) != 2 or words[0] == words[1]:
        raise ConfigError("label_words", f"need two different answer words (got {words})")
    return {"target": target, "model": model, "adapter": adapter,
            "quantization": settings.quantization or cfg.get("quantization", "4bit"),
            "prompt": settings.prompt or cfg.get("prompt") or DEFAULT_PROMPT,
            "system_prompt": cfg.get("system_prompt") or DEFAULT_SYSTEM_PROMPT, "label_words": list(words)}


def run_config(settings: OproSettings, resolved: dict, search_seed: int) -> dict[str, Any]:
    target = resolved["target"]
    label = (f"OPRO · {target['config_label']}" if target["kind"] == "run"
             else f"OPRO · base {Path(str(resolved['model'])).name}")
    proposer = (settings.proposer if settings.proposer not in (None, PROPOSER_EDIT) else None)
    return {
        "schema_version": rf.SCHEMA_VERSION, "kind": rf.KIND_OPRO, "label": label, "target": target,
        "model": resolved["model"], "quantization": resolved["quantization"],
        "adapter": str(resolved["adapter"]) if resolved["adapter"] else None,
        "system_prompt": resolved["system_prompt"], "prompt": resolved["prompt"],
        "label_words": resolved["label_words"], "dev_data": str(settings.dev_data),
        "test_data": str(settings.test_data) if settings.test_data else None, "test_name": TEST_NAME,
        "iterations": settings.iterations, "candidates": settings.candidates,
        "proposer": {"kind": PROPOSER_EDIT if proposer is None else
                     (PROPOSER_SELF if proposer == PROPOSER_SELF else PROPOSER_MODEL),
                     "model": proposer if proposer not in (None, PROPOSER_SELF) else None},
        "seed": target["seed"] if target["kind"] == "run" and target["seed"] is not None else search_seed,
        "search_seed": search_seed, "batch_size": settings.batch_size,
        "max_prompt_chars": settings.max_prompt_chars, "top_k": settings.top_k,
    }


class Search:
    """One OPRO search writing into its run folder; `run()` returns the opro.json content."""

    def __init__(self, settings: OproSettings, run_dir: Path, resolved: dict, stop,
                 progress: Callable[..., Any] | None = None):
        self.settings, self.run_dir, self.resolved, self.stop = settings, run_dir, resolved, stop
        # the run's progress writer (Run.progress); without a lifecycle, straight into status.json
        self.progress = progress or (lambda force=False, **fields: rf.update_status(run_dir, progress=fields))
        self.history: list[dict] = []
        self.seen: set[str] = set()
        self.total = 1 + settings.iterations * settings.candidates
        self.started = time.time()
        self.scoring_s = 0.0

    def _record(self, candidate: Candidate, iteration: int, index: int, loaded, dev: DevSet) -> dict:
        started = time.time()
        dev_scores = score_prompt(loaded, dev, self.resolved["system_prompt"], candidate.prompt,
                                  self.resolved["label_words"], self.settings.batch_size)
        elapsed = time.time() - started
        self.scoring_s += elapsed
        entry = {"id": len(self.history), "iteration": iteration, "candidate": index, "prompt": candidate.prompt,
                 "parent": candidate.parent, "source": candidate.source, "operation": candidate.operation,
                 **dev_scores}
        best = best_entry([*self.history, entry])
        entry.update(best_id=best["id"], best_balanced_accuracy=best["balanced_accuracy"],
                     time_s=round(elapsed, 4), at=rf.now_iso())
        rf.append_jsonl(self.run_dir / rf.OPRO_HISTORY, entry)
        self.history.append(entry)
        self.seen.add(prompt_key(candidate.prompt))
        done = len(self.history)
        rate = (time.time() - self.started) / done
        self.progress(step=done, total_steps=self.total, iteration=iteration, iterations=self.settings.iterations,
                      best_balanced_accuracy=best["balanced_accuracy"], eta_s=round(rate * (self.total - done), 1),
                      force=done == self.total)
        log.info("iteration %d candidate %d: balanced accuracy %.1f%% (best %.1f%%, #%d): %s", iteration, index,
                 100 * entry["balanced_accuracy"], 100 * best["balanced_accuracy"], best["id"], candidate.prompt)
        return entry

    def run(self, loaded, dev: DevSet, proposer, test=None) -> dict | None:
        """Score the original, then iterate; None when stopped (history kept, no test evaluation)."""
        original = Candidate(self.resolved["prompt"], None, "original", "original")
        self._record(original, 0, 0, loaded, dev)
        iterations_done = 0
        for iteration in range(1, self.settings.iterations + 1):
            if self.stop:
                return None
            candidates = proposer.propose(self.history, self.settings.candidates, iteration, set(self.seen))
            if not candidates:
                log.warning("iteration %d: no new candidate could be made; stopping the search early", iteration)
                break
            for index, candidate in enumerate(candidates):
                if self.stop:
                    return None
                self._record(candidate, iteration, index, loaded, dev)
            iterations_done = iteration
        if self.stop:
            return None
        return self._finish(loaded, proposer, test, iterations_done)

    def _finish(self, loaded, proposer, test, iterations_done: int) -> dict:
        from engine.tasks.evaluate import evaluate_clips

        best, original = best_entry(self.history), self.history[0]
        result: dict[str, Any] = {
            "schema_version": rf.SCHEMA_VERSION, "original": original, "best": best,
            "improved": best["id"] != original["id"], "candidates_scored": len(self.history),
            "iterations_completed": iterations_done,
            "seconds_per_candidate": round(self.scoring_s / len(self.history), 4),
            "proposer": {"kind": proposer.kind, "model": getattr(proposer, "name", None),
                         **getattr(proposer, "counts", {})},
            "test": None, "dev_to_test": None}
        if test is not None:
            clips, report, audio = test
            producer = {"kind": "opro", "opro_run": self.run_dir.name, "target": self.resolved["target"],
                        "adapter": str(self.resolved["adapter"]) if self.resolved["adapter"] else None}
            summaries = {}
            for name, entry in ((ORIGINAL_TEST_NAME, original), (TEST_NAME, best)):
                if self.stop:  # a cancelled search leaves no test evaluation behind (docs/OPRO.md)
                    for written in summaries:
                        shutil.rmtree(rf.evaluation_dir(self.run_dir, written), ignore_errors=True)
                    return None
                out, _ = evaluate_clips(loaded, clips, report, self.run_dir, name, self.resolved["system_prompt"],
                                        entry["prompt"], self.resolved["label_words"],
                                        {**producer, "prompt_id": entry["id"]}, audio=audio,
                                        batch_size=self.settings.batch_size)
                summaries[name] = rf.read_json(out / rf.EVALUATION)["summary"]
            result["test"] = {"evaluation": TEST_NAME, "original_evaluation": ORIGINAL_TEST_NAME,
                              "best": summaries[TEST_NAME], "original": summaries[ORIGINAL_TEST_NAME]}
            result["dev_to_test"] = {
                key: {"dev_balanced_accuracy": entry["balanced_accuracy"],
                      "test_balanced_accuracy": summaries[name]["balanced_accuracy"],
                      "drop_pts": round(100 * (entry["balanced_accuracy"] - summaries[name]["balanced_accuracy"]), 4)}
                for key, entry, name in (("best", best, TEST_NAME), ("original", original, ORIGINAL_TEST_NAME))}
        result["time_taken_s"] = round(time.time() - self.started, 3)
        result["peak_gpu_memory_gb"] = peak_gpu_memory_gb(loaded.device)
        rf.atomic_write_json(self.run_dir / rf.OPRO_RESULT, result)
        return result


def peak_gpu_memory_gb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if device.type == "cuda" else None


def check_held_out(dev_clips, test_clips, test_data: str) -> None:
    """Refuse a test set that shares audio files with the dev set: the best prompt was chosen on
    those clips, so its test score would not be held out."""
    dev_files = {str(Path(c.path).resolve()) for c in dev_clips}
    shared = [c.path for c in test_clips if str(Path(c.path).resolve()) in dev_files]
    if shared:
        raise ValueError(f"test data {test_data}: {len(shared)} of its {len(test_clips)} clips are also in the dev "
                         f"set (e.g. {shared[0]}); the best prompt must be tested on clips it was not chosen on")


def load_dev_set(dev_data: str, label_words: Sequence[str], audio) -> DevSet:
    from engine.data.manifests import load_clips

    clips, report = load_clips(dev_data, label_words=label_words, skip_bad=True)
    for bad in report.bad_files:
        log.warning("dev data: skipped unreadable clip %s: %s", bad["path"], bad["reason"])
    if not clips:
        raise ValueError(f"dev data {dev_data}: no readable clips")
    if len({c.label for c in clips}) < 2:
        raise ValueError(f"dev data {dev_data}: needs clips of both classes for balanced accuracy")
    return DevSet(clips, [audio.load(c) for c in clips])


def optimise(settings: OproSettings, run_dir: Path, runs_root: Path,
             stop: StopSignal | None = None) -> dict | None:
    """Run one OPRO search into `run_dir`; returns opro.json's content, or None when cancelled.

    The terminal state (succeeded, cancelled, failed with the error) is always written.
    """
    from engine.data.manifests import AudioCache, load_clips
    from engine.models import family_for

    settings.check()
    resolved = resolve_target(settings, runs_root)
    search_seed = settings.seed if settings.seed is not None else int(resolved["target"]["seed"] or 0)
    config = run_config(settings, resolved, search_seed)
    if stop is None:
        stop = StopSignal("finishing this candidate, keeping the history, then stopping")
    stop.install()
    try:
        with run_lifecycle(run_dir, rf.KIND_OPRO, config=config, stop=stop) as run:
            run.progress(step=0, total_steps=1 + settings.iterations * settings.candidates, force=True)
            audio = AudioCache()
            dev = load_dev_set(settings.dev_data, resolved["label_words"], audio)
            test = None
            if settings.test_data:
                clips, report = load_clips(settings.test_data, label_words=resolved["label_words"], skip_bad=True)
                if not clips:
                    raise ValueError(f"test data {settings.test_data}: no readable clips")
                check_held_out(dev.clips, clips, settings.test_data)
                test = (clips, report, audio)
            log.info("OPRO on %s: %d dev clips, %d iterations x %d candidates, proposer %s, seed %d",
                     config["label"], len(dev.clips), settings.iterations, settings.candidates,
                     config["proposer"]["model"] or "edit search", search_seed)
            m = family_for(resolved["model"]).runtime()
            loaded = m.load_model(resolved["model"], resolved["quantization"], settings.device, settings.dtype)
            if resolved["adapter"] is not None:
                m.load_adapter(loaded, resolved["adapter"])
            m.seed_everything(search_seed)
            proposer = make_proposer(settings.proposer, loaded, resolved["label_words"], search_seed,
                                     settings.max_prompt_chars, settings.top_k)
            result = Search(settings, run.run_dir, resolved, stop, run.progress).run(loaded, dev, proposer, test)
            if result is None:
                run.set_result(rf.CANCELLED)
        return result
    finally:
        stop.restore()


# ----------------------------------------------------------------------------- CLI

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
