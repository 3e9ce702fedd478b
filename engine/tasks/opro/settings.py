"""OproSettings: what `python -m engine opro` searches, one flag per field (engine.cliargs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.cliargs import cli_field, field_choices
from engine.config import DEVICES, DTYPES, QUANTIZATIONS, ConfigError
from engine.tasks.opro.proposers import DEFAULT_MAX_PROMPT_CHARS, DEFAULT_TOP_K


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
