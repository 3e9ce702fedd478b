"""Where OPRO's candidate prompts come from, and the rule every candidate passes.

- `sanitise_prompt`: the answer words stay exactly the label words; one line; length bounded.
- `EditSearch` (the "edit" kind, no model): deterministic edits of the best prompts so far.
- `ModelProposer` (the "self" and "model" kinds): a causal LM sampled on the OPRO meta-prompt.

`make_proposer(spec, ...)` builds the proposer a --proposer value asks for; each kind is one
builder in PROPOSER_BUILDERS.
"""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from engine.runs.opro_history import best_entry, top_entries

log = logging.getLogger("engine.tasks.opro")  # one logger name for the whole search, as before the split

DEFAULT_MAX_PROMPT_CHARS = 300
MIN_PROMPT_CHARS = 10
DEFAULT_TOP_K = 10  # prompts shown to the proposer, as in the OPRO paper's meta-prompt
PROPOSER_ROUNDS = 3  # generate calls per iteration before the edit search fills the gaps
PROPOSER_EDIT, PROPOSER_SELF, PROPOSER_MODEL = "edit", "self", "model"


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


# ----------------------------------------------------------------------------- the proposer kinds

ProposerBuilder = Callable[..., Any]  # (spec, loaded, label_words, seed, max_chars, top_k) -> a proposer
PROPOSER_BUILDERS: dict[str, ProposerBuilder] = {}


def proposer_builder(kind: str) -> Callable[[ProposerBuilder], ProposerBuilder]:
    """Register the function that builds the proposer of `kind`."""
    def register(build: ProposerBuilder) -> ProposerBuilder:
        PROPOSER_BUILDERS[kind] = build
        return build
    return register


def proposer_kind(spec: str | None) -> str:
    """The kind a --proposer value names: none or "edit", "self", else "model" (a causal LM folder or hub id)."""
    if not spec or spec == PROPOSER_EDIT:
        return PROPOSER_EDIT
    return PROPOSER_SELF if spec == PROPOSER_SELF else PROPOSER_MODEL


def make_proposer(spec: str | None, loaded, label_words: Sequence[str], seed: int, max_chars: int, top_k: int):
    """EditSearch for no spec; the scored model's own LM for "self"; else a causal LM folder/hub id."""
    return PROPOSER_BUILDERS[proposer_kind(spec)](spec, loaded, label_words, seed, max_chars, top_k)


def _max_new_tokens(max_chars: int) -> int:
    return max(32, max_chars // 2)


@proposer_builder(PROPOSER_EDIT)
def edit_proposer(spec, loaded, label_words: Sequence[str], seed: int, max_chars: int, top_k: int) -> EditSearch:
    return EditSearch(label_words, seed, max_chars)


@proposer_builder(PROPOSER_SELF)
def self_proposer(spec, loaded, label_words: Sequence[str], seed: int, max_chars: int, top_k: int) -> ModelProposer:
    """The scored audio model's own language model, text only, with its adapter switched off."""
    from peft import PeftModel

    adapter = isinstance(loaded.model, PeftModel)
    generate = sampler(loaded.model if adapter else loaded.hf, loaded.processor.tokenizer, loaded.device,
                       _max_new_tokens(max_chars), disable_adapter=adapter)
    return ModelProposer(PROPOSER_SELF, str(loaded.model_path), generate, family_chat(loaded.family),
                         label_words, seed, max_chars, top_k)


@proposer_builder(PROPOSER_MODEL)
def model_proposer(spec: str, loaded, label_words: Sequence[str], seed: int, max_chars: int,
                   top_k: int) -> ModelProposer:
    """A separate causal LM (a local folder or a cached hub id), quantized like the scored model on GPU."""
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
    return ModelProposer(PROPOSER_MODEL, spec, sampler(model, tokenizer, loaded.device, _max_new_tokens(max_chars)),
                         tokenizer_chat(tokenizer), label_words, seed, max_chars, top_k)


PROPOSERS = tuple(PROPOSER_BUILDERS)  # the kinds: edit, self, model
