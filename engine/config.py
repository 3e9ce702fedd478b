"""Typed, validated configuration of a training run and of an evaluation.

`TrainConfig` is the single source of truth for training: the CLI, the YAML loader and the
dashboard's Train form all build one and call `validate()`, so every front end shows the same
messages. `EvalConfig` is the same for `python -m engine eval`. Both declare their command-line
flags on their fields (engine/cliargs.py generates the parsers and argument lists from them).
Every problem raises `ConfigError` naming the field. No heavy imports here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.cliargs import cli_field, field_choices, field_docs
from engine.labels import DEFAULT_LABEL_SET
from engine.models import DEFAULT_FAMILY

# The model family states these; they are re-exported for the form and the validator.
DEFAULT_MODEL = DEFAULT_FAMILY.default_model
TINY_MODEL = DEFAULT_FAMILY.tiny_model
TARGET_PRESETS = DEFAULT_FAMILY.target_presets
PRESET_LABELS = DEFAULT_FAMILY.preset_labels
# Linear layers a LoRA may target (LM, audio encoder, projector). A name outside this set
# matches nothing in the model; peft would fail late, so we fail early.
MODEL_LINEAR_NAMES = DEFAULT_FAMILY.linear_names
MAX_CLIP_SECONDS = DEFAULT_FAMILY.max_audio_seconds

QUANTIZATIONS = ("4bit", "8bit", "none")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
CHECKPOINT_POLICIES = ("final", "epoch")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bfloat16", "float32")
GRAD_CHECKPOINTING = ("auto", "on", "off")
BASE_CACHE_MODES = ("auto", "on", "off")
COMPILE_MODES = ("auto", "graphs", "on", "off")

DEFAULT_LABELS = DEFAULT_LABEL_SET.names  # the answer words default to the class names
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four"}
DEFAULT_SYSTEM_PROMPT = DEFAULT_FAMILY.default_system_prompt
DEFAULT_PROMPT = "Is this short clip speech or non-speech? Answer with one word: SPEECH or NONSPEECH."

_FILTER_SPEC = re.compile(r"^\s*(?:(-?[\d.]+)?\s*:\s*(-?[\d.]+)?|-?[\d.]+(?:\s*,\s*-?[\d.]+)*)\s*$")


class ConfigError(ValueError):
    """An invalid configuration value; `field` names the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass
class TrainConfig:
    """One QLoRA training run of Qwen2-Audio for SPEECH / NONSPEECH clip classification."""

    label: str = ""
    """Human name of the configuration, e.g. "Attention-Only" (default: from the target preset)."""
    model: str = DEFAULT_MODEL
    """Hub id (loaded from the local hub cache only), a local model folder, "tiny" or "tiny-demo" (built locally)."""
    quantization: str = cli_field("4bit", choices=QUANTIZATIONS)
    """"4bit" (NF4, double quantization, bf16 compute), "8bit", or "none"."""
    targets: str | list[str] = "attention"
    """Preset "attention" (q,k,v,o_proj), "attention+mlp" (adds gate,up,down_proj), or a list."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: float = 32
    """LoRA alpha (scaling = alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    seed: int = 42
    """Seed for initialisation, data order and dropout."""
    epochs: float = cli_field(3, "--num-epochs", "--epochs")
    """Passes over the training set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    per_device_batch: int = cli_field(2, "--per-device-train-batch-size")
    """Clips per micro-batch."""
    grad_accum: int = cli_field(8, "--gradient-accumulation-steps")
    """Micro-batches per optimizer step (effective batch = per_device_batch * grad_accum)."""
    learning_rate: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = cli_field(0.0, cli=False)
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Fraction of optimizer steps spent warming up linearly."""
    scheduler: str = cli_field("linear", choices=SCHEDULERS)
    """Learning-rate schedule after warm-up: linear, cosine, constant, constant_with_warmup."""
    max_grad_norm: float = cli_field(1.0, cli=False)
    """Gradient clipping norm (0 disables)."""
    system_prompt: str = cli_field(DEFAULT_SYSTEM_PROMPT, cli=False)
    """System turn of the chat."""
    prompt: str = DEFAULT_PROMPT
    """Question asked after the audio in the user turn."""
    label_words: list[str] = field(default_factory=lambda: list(DEFAULT_LABELS))
    """Answer words, positive class first: [SPEECH word, NONSPEECH word]."""
    max_clip_seconds: float = cli_field(MAX_CLIP_SECONDS, cli=False)
    """Longer clips are truncated (and counted in the summary); 30 s is the encoder's limit."""
    train_data: str = cli_field("", "--train-data", "--train-csv")
    """Training manifest (CSV/JSONL with path,label), class folders, or an audiofolder."""
    val_data: str = cli_field("", "--val-data", "--val-csv")
    """Optional validation data, same formats; scored at the end of training."""
    filters: dict[str, str] = cli_field(default_factory=dict, cli=False)
    """Manifest filters, column -> "min:max" range or "v1,v2" values (e.g. duration_ms, snr_db)."""
    skip_bad_audio: bool = False
    """Skip unreadable clips (listed in the summary) instead of refusing to start."""
    checkpoints: str = cli_field("final", choices=CHECKPOINT_POLICIES)
    """"final": only the final adapter; "epoch": also one adapter per epoch. Never optimizer state."""
    device: str = cli_field("auto", choices=DEVICES)
    """"auto" (cuda when available), "cpu" or "cuda"."""
    dtype: str = cli_field("auto", choices=DTYPES)
    """Compute dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16 or float32."""
    gradient_checkpointing: str = cli_field("auto", choices=GRAD_CHECKPOINTING)
    """"auto" (only when memory requires it, GPU), "on" or "off". Always non-reentrant."""
    offload_embeddings: str = cli_field("auto", choices=GRAD_CHECKPOINTING, cli=False)
    """Keep the input embedding table (1.3 GB on the 7B) on the CPU: "auto" (GPUs under 12 GB), "on", "off".
    Exact: only the rows of the batch's tokens are looked up and moved."""
    base_cache: str = cli_field("auto", choices=BASE_CACHE_MODES)
    """Keep the 4-bit base's dequantized weights instead of re-deriving them every pass: "auto" (on a
    GPU with room for the copy, 14 GB on the 7B), "on", "off". Same values, so the same QLoRA model."""
    compile: str = cli_field("auto", choices=COMPILE_MODES)
    """torch.compile the decoder and encoder layers: "graphs" (fused kernels replayed as CUDA
    graphs), "on" (fused kernels only), "off", or "auto" (graphs on a GPU with at least 20 GB for
    this run when LoRA dropout is 0, else off: with dropout the graphs ran 70x slower). The first
    steps pay the compilation (about 30 s on the 7B)."""
    auto_micro_batch: bool = cli_field(True, cli=False)
    """On a GPU, pick the largest micro-batch that fits (a divisor of the effective batch) and
    accumulate the rest, so per_device_batch x grad_accum and the optimisation stay the same."""
    num_processes: int = cli_field(1, "--num-gpus", "--num-processes")
    """Data-parallel processes (one per GPU); effective batch = per_device_batch x grad_accum x processes."""

    # ------------------------------------------------------------------ derived
    @property
    def target_modules(self) -> list[str]:
        if isinstance(self.targets, str):
            return list(TARGET_PRESETS[self.targets])
        return list(self.targets)

    @property
    def target_preset(self) -> str | None:
        if isinstance(self.targets, str):
            return self.targets
        for name, modules in TARGET_PRESETS.items():
            if sorted(modules) == sorted(self.targets):
                return name
        return None

    @property
    def effective_batch(self) -> int:
        return self.per_device_batch * self.grad_accum * self.num_processes

    def display_label(self) -> str:
        if self.label:
            return self.label
        preset = self.target_preset
        return PRESET_LABELS.get(preset, "+".join(self.target_modules)) if preset else "+".join(self.target_modules)

    # ------------------------------------------------------------------ validation
    def validate(self, check_paths: bool = True) -> "TrainConfig":
        """Normalise and check every field; raises ConfigError naming the first bad one."""
        _require(isinstance(self.model, str) and self.model.strip(), "model", "must not be empty")
        for name, options in field_choices(TrainConfig).items():  # the choices the CLI offers
            _choice(self, name, options)

        self.lora_r = _int(self, "lora_r", minimum=1)
        self.lora_alpha = _number(self, "lora_alpha")
        _require(self.lora_alpha > 0, "lora_alpha", f"must be > 0 (got {self.lora_alpha:g})")
        self.lora_dropout = _number(self, "lora_dropout")
        _require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1) (got {self.lora_dropout:g})")
        self.seed = _int(self, "seed", minimum=0)
        self.epochs = _number(self, "epochs")
        _require(self.epochs > 0, "epochs", f"must be > 0 (got {self.epochs:g})")
        if self.max_steps is not None:
            self.max_steps = _int(self, "max_steps", minimum=1)
        self.per_device_batch = _int(self, "per_device_batch", minimum=1)
        self.grad_accum = _int(self, "grad_accum", minimum=1)
        self.num_processes = _int(self, "num_processes", minimum=1)
        self.learning_rate = _number(self, "learning_rate")
        _require(0 < self.learning_rate < 1, "learning_rate", f"must be in (0, 1) (got {self.learning_rate:g})")
        self.weight_decay = _number(self, "weight_decay")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self.warmup_ratio = _number(self, "warmup_ratio")
        _require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1) (got {self.warmup_ratio:g})")
        self.max_grad_norm = _number(self, "max_grad_norm")
        _require(self.max_grad_norm >= 0, "max_grad_norm", "must be >= 0 (0 disables clipping)")
        self.max_clip_seconds = _number(self, "max_clip_seconds")
        _require(0 < self.max_clip_seconds <= MAX_CLIP_SECONDS, "max_clip_seconds",
                 f"must be in (0, {MAX_CLIP_SECONDS:g}]: the audio encoder sees at most {MAX_CLIP_SECONDS:g} s "
                 f"(got {self.max_clip_seconds:g})")

        self._validate_targets()
        self._validate_labels()
        _require(isinstance(self.prompt, str) and self.prompt.strip(), "prompt", "must not be empty")
        self._validate_filters()
        if self.quantization != "none" and self.device == "cpu" and self.dtype == "bfloat16":
            pass  # allowed: bitsandbytes runs bf16 compute on CPU, only slower
        if check_paths:
            _require(bool(self.train_data), "train_data", "is required (a manifest CSV/JSONL or a folder)")
            _path_exists("train_data", self.train_data)
            if self.val_data:
                _path_exists("val_data", self.val_data)
        return self

    def _validate_targets(self) -> None:
        targets = self.targets
        if isinstance(targets, str):
            if "," in targets or targets.strip() in MODEL_LINEAR_NAMES:  # "q_proj" is a list of one
                targets = [t.strip() for t in targets.split(",") if t.strip()]
            elif targets not in TARGET_PRESETS:
                raise ConfigError("targets", f"unknown preset {targets!r}; use one of "
                                  f"{', '.join(TARGET_PRESETS)} or a list of module names")
        if isinstance(targets, (list, tuple)):
            targets = [str(t).strip() for t in targets]
            _require(len(targets) > 0, "targets", "must name at least one module")
            unknown = sorted(set(targets) - MODEL_LINEAR_NAMES)
            _require(not unknown, "targets",
                     f"{DEFAULT_FAMILY.display_name} has no module named {', '.join(unknown)}; "
                     f"known linear layers: {', '.join(sorted(MODEL_LINEAR_NAMES))}")
            targets = list(dict.fromkeys(targets))
        self.targets = targets

    def _validate_labels(self) -> None:
        self.label_words = _label_words(self.label_words)

    def _validate_filters(self) -> None:
        _require(isinstance(self.filters, dict), "filters", "must map column -> spec")
        for column, spec in self.filters.items():
            spec = str(spec)
            _require(bool(_FILTER_SPEC.match(spec)), f"filters.{column}",
                     f"{spec!r} is not 'min:max' or 'v1,v2,...'")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["target_modules"] = self.target_modules
        data["effective_batch"] = self.effective_batch
        data["label"] = self.display_label()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"target_modules", "effective_batch", "kind", "schema_version"})
        if unknown:
            raise ConfigError(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError("config", f"file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("config", f"{path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("config", f"{path} must hold a mapping of field: value")
        return cls.from_dict(data)


CONTROLS = ("silence", "shuffle")  # audio-is-used controls: every clip silenced, or clips shuffled
PADDING_SIDES = ("left", "right")
PREFIX_CACHE_MODES = ("on", "off")
SCORING_COMPILE_MODES = ("auto", "on", "off")


@dataclass
class EvalConfig:
    """What `python -m engine eval` scores: a run's adapter, any PEFT adapter folder or the base model."""

    run: str | None = cli_field(None, group="target", required=True)
    """a training run (folder, or its name in the workspace)"""
    checkpoint: Path | None = cli_field(None, group="target", required=True)
    """any PEFT adapter folder"""
    base: bool = cli_field(False, group="target", required=True)
    """the base model without adapter"""
    model: str | None = None
    """base model (default: the run's model, or the adapter's base)"""
    runs_dir: Path | None = None
    """workspace (default: ./runs or $QLORA_DASH_RUNS)"""
    run_name: str | None = None
    """for --base/--checkpoint: name of the evaluation run to create"""
    quantization: str | None = cli_field(None, choices=QUANTIZATIONS)
    """4bit, 8bit or none (default: the run's, else 4bit)"""
    test_data: str = cli_field("", "--test-data", "--test-csv", required=True)
    """test manifest (CSV/JSONL) or folder"""
    name: str = "test"
    """evaluation name inside the run (default: test)"""
    batch_size: int = 8
    """clips per forward pass (default 8)"""
    control: str | None = cli_field(None, choices=CONTROLS)
    """audio-is-used control: replace clips with silence or shuffle"""
    threshold_from: str | None = None
    """choose the threshold on this evaluation of the run (e.g. val)"""
    prompt: str | None = cli_field(None, group="prompt")
    """question (default: the run's prompt)"""
    prompt_from: str | None = cli_field(None, group="prompt")
    """use the best prompt of this OPRO run (folder or name; its best so far when the search did not finish)"""
    label_words: list[str] | None = None
    """SPEECH,NONSPEECH answer words (default: the run's)"""
    threshold: float | None = None
    """p(SPEECH) cut (default 0.5 = arg-max)"""
    device: str = cli_field("auto", choices=DEVICES)
    """auto (cuda when available), cpu or cuda"""
    dtype: str = cli_field("auto", choices=DTYPES)
    """compute dtype: auto (bf16 on GPU, fp32 on CPU), bfloat16 or float32"""
    padding_side: str = cli_field("left", choices=PADDING_SIDES)
    """side the batch's shorter prompts are padded on (default left)"""
    base_cache: str = cli_field("auto", choices=BASE_CACHE_MODES)
    """keep the 4-bit base's dequantized weights: auto (GPU with room), on, off"""
    prefix_cache: str = cli_field("on", choices=PREFIX_CACHE_MODES)
    """compute the system turn's keys and values once for all clips (on; off: every clip's whole sequence)"""
    compile: str = cli_field("auto", choices=SCORING_COMPILE_MODES)
    """torch.compile the scoring forward (fused kernels, no CUDA graphs): on, off, or auto (off until
    its GPU speed is measured; then on a GPU for evaluations long enough to repay the compilation)"""
    save_predictions: Path | None = None
    """also write the records to FILE (.jsonl or .csv)"""

    def validate(self) -> "EvalConfig":
        """Check every field; raises ConfigError naming the first bad one."""
        targets = [self.run is not None, self.checkpoint is not None, bool(self.base)]
        _require(sum(targets) == 1, "target", "give exactly one of --run RUN, --checkpoint FOLDER and --base")
        _require(bool(str(self.test_data or "").strip()), "test_data", "is required (a manifest CSV/JSONL or a folder)")
        for name, options in field_choices(EvalConfig).items():
            if getattr(self, name) is not None:
                _choice(self, name, options)
        self.batch_size = _int(self, "batch_size", minimum=1)
        if self.threshold is not None:
            self.threshold = _number(self, "threshold")
            _require(0 <= self.threshold <= 1, "threshold", f"must be in [0, 1] (got {self.threshold:g})")
        if self.label_words is not None:
            self.label_words = _label_words(self.label_words)
        return self


def config_fields() -> list[tuple[str, Any, str]]:
    """(name, default, docstring) of every TrainConfig field, for forms and docs."""
    docs = field_docs(TrainConfig)
    out = []
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        out.append((f.name, getattr(defaults, f.name), docs.get(f.name, "")))
    return out


def parse_filter(spec: str):
    """A predicate for one filter spec: "min:max" (inclusive, either side open) or "v1,v2"."""
    spec = str(spec).strip()
    if ":" in spec:
        lo_s, hi_s = (s.strip() for s in spec.split(":", 1))
        lo = float(lo_s) if lo_s else -math.inf
        hi = float(hi_s) if hi_s else math.inf
        return lambda v: v is not None and lo <= float(v) <= hi
    values = {float(v) for v in spec.split(",")}
    return lambda v: v is not None and float(v) in values


# ---------------------------------------------------------------------- helpers

def _require(ok: Any, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_name, message)


def _label_words(words: Any) -> list[str]:
    words = [str(w).strip() for w in (words or [])]
    n_classes = len(DEFAULT_LABEL_SET)
    _require(len(words) == n_classes, "label_words",
             f"needs exactly {_NUMBER_WORDS.get(n_classes, n_classes)} words, {DEFAULT_LABEL_SET.positive} first (got {words})")
    _require(all(words), "label_words", "must not be empty")
    _require(words[0] != words[1], "label_words", "the two words must differ")
    return words


def _choice(cfg: Any, name: str, options: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    _require(value in options, name, f"{value!r} is not one of {', '.join(options)}")


def _number(cfg: Any, name: str) -> float:
    value = getattr(cfg, name)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"must be a number (got {value!r})") from None
    _require(math.isfinite(number), name, f"must be finite (got {value!r})")
    return int(number) if isinstance(value, int) and not isinstance(value, bool) else number


def _int(cfg: Any, name: str, minimum: int) -> int:
    value = getattr(cfg, name)
    try:
        number = int(value)
        if float(value) != number:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(name, f"must be a whole number (got {value!r})") from None
    _require(number >= minimum, name, f"must be >= {minimum} (got {number})")
    return number


def _path_exists(name: str, value: str) -> None:
    path = Path(value).expanduser()
    _require(path.exists(), name, f"not found: {path}")
