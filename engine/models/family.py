"""What the engine knows about one family of audio LLMs, without importing torch.

A `ModelFamily` states once what every other module would otherwise repeat: the model names it
answers to, the audio front end (sample rate, longest clip, mel hop), the chat template with its
audio placeholder, the label-token end marker, the LoRA target presets and the architecture
numbers behind the disk and parameter estimates. The torch side (loading, quantization, LoRA,
forward passes) is the module named by `runtime_module`, imported only when `runtime()` is
called, so the dashboard can read a family without pulling in a model library.

A family subclasses `ModelFamily` for the parts that differ by architecture (chat text, audio
token arithmetic, layer sizes) and is registered in `engine.models`.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence


class ModelError(RuntimeError):
    """The model could not be found, recognised or loaded; the message says where we looked."""


@dataclass(frozen=True, eq=False)  # one instance per family: compared and hashed by identity
class ModelFamily:
    """One architecture family; subclasses fill in the methods that depend on the architecture."""

    name: str
    """Registry key, e.g. "qwen2_audio"."""
    display_name: str
    """Name shown in messages, e.g. "Qwen2-Audio"."""
    default_model: str
    """Hub id used when no model is given."""
    runtime_module: str
    """Dotted name of the torch module with load_model, attach_lora, make_batch, class_scores, ..."""
    model_types: tuple[str, ...]
    """`model_type` values in a model folder's config.json that belong to this family."""
    hub_name_patterns: tuple[str, ...] = ()
    """Lower-case fragments of hub ids of this family (recognised without the hub cache)."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Short names (lower case) -> hub id."""
    tiny_model: str | None = None
    """Name of the locally built test model of this family (random weights), if it has one."""
    demo_model: str | None = None
    """Name of the locally built demo model (the tiny one with learned audio features), if any."""
    sample_rate: int = 16000
    """Samples per second the feature extractor expects; every clip is resampled to it."""
    max_audio_seconds: float = 30.0
    """Longest clip the audio encoder sees; longer clips are truncated."""
    hop_length: int = 160
    """Mel frame hop in samples."""
    num_mel_bins: int = 128
    """Mel bins of the feature extractor."""
    n_fft: int = 400
    """STFT window of the feature extractor."""
    default_system_prompt: str = "You are a helpful assistant."
    """System turn used when none is given."""
    turn_end_token: str = "<|im_end|>"
    """Token that ends an assistant answer (appended to each label word when tokenized)."""
    target_presets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """LoRA target presets: name -> module names."""
    preset_labels: Mapping[str, str] = field(default_factory=dict)
    """Preset name -> the configuration's human label."""
    linear_names: frozenset[str] = frozenset()
    """Every linear-layer name a LoRA may target in this family (others match nothing)."""
    quantization_skip_modules: tuple[str, ...] = ()
    """Full module names kept out of bitsandbytes quantization."""
    reference_config: Mapping[str, Any] = field(default_factory=dict)
    """Public config (Hugging Face kwargs) of the default model: meta-device builds and estimates."""

    # ------------------------------------------------------------------ audio front end
    @property
    def max_audio_samples(self) -> int:
        return int(round(self.max_audio_seconds * self.sample_rate))

    @property
    def full_mel_frames(self) -> int:
        """Mel frames of a clip padded to the longest length (3000 for 30 s at hop 160)."""
        return self.max_audio_samples // self.hop_length

    def mel_frames(self, n_samples: int) -> int:
        """Mel frames the feature extractor marks valid for a clip of n_samples (at least 1)."""
        return min(self.full_mel_frames, math.ceil(n_samples / self.hop_length)) if n_samples else 1

    def audio_tokens(self, n_samples: int) -> int:
        """Audio tokens the processor inserts into the prompt for a clip of n_samples."""
        return self.audio_tokens_for_frames(self.mel_frames(n_samples))

    def audio_tokens_for_frames(self, mel_frames: int) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ chat template
    def prompt_text(self, system_prompt: str, prompt: str) -> str:
        """The chat text before the answer, with one audio placeholder before the prompt."""
        raise NotImplementedError

    def chat_text(self, system_prompt: str, user: str) -> str:
        """The chat text before the answer for a text-only user turn (the OPRO proposer)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ LoRA targets and sizes
    def target_modules(self, targets: str | Sequence[str]) -> list[str]:
        """A preset name, a comma-separated string or a list -> module names (order kept, no repeats)."""
        if isinstance(targets, str):
            if targets in self.target_presets:
                return list(self.target_presets[targets])
            targets = targets.split(",")
        return list(dict.fromkeys(t.strip() for t in targets if t.strip()))

    def layer_sizes(self, config: Mapping[str, Any]) -> dict[str, int]:
        """The numbers `lora_parameter_count` needs, read from a Hugging Face config dict."""
        raise NotImplementedError

    def lora_parameters_per_rank(self, modules: Sequence[str], sizes: Mapping[str, int]) -> int:
        """Trainable LoRA parameters per unit of rank for these target modules."""
        raise NotImplementedError

    def lora_parameter_count(self, targets: str | Sequence[str], lora_r: int,
                             config: Mapping[str, Any] | None = None) -> int:
        """Trainable LoRA parameters, r * (in + out) per matched linear layer, without weights.

        `config` is a model folder's config.json; without one (or when it lacks the sizes) the
        default model's public config is used, a safe overestimate for smaller models.
        """
        sizes = None
        if config is not None:
            try:
                sizes = self.layer_sizes(config)
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                sizes = None
        if sizes is None:
            sizes = self.layer_sizes(self.reference_config)
        return int(lora_r) * self.lora_parameters_per_rank(self.target_modules(targets), sizes)

    # ------------------------------------------------------------------ names
    def recognises(self, model: str) -> bool:
        """True when `model` (a name, hub id or model folder) belongs to this family."""
        key = str(model).strip().lower()
        if key in self.aliases or key == self.default_model.lower() or key in (self.tiny_model, self.demo_model):
            return True
        model_type = folder_model_type(model)
        if model_type is not None:
            return model_type in self.model_types
        return any(pattern in key for pattern in self.hub_name_patterns)

    def canonical_name(self, model: str) -> str:
        """An alias -> its hub id; anything else unchanged."""
        return self.aliases.get(str(model).strip().lower(), model)

    def is_reference_model(self, model: str) -> bool:
        """True for the default model (or one of its aliases), whose public config is known here."""
        return self.canonical_name(model) == self.default_model

    def runtime(self) -> ModuleType:
        """The torch module of this family (imported on first use)."""
        return importlib.import_module(self.runtime_module)


def read_folder_config(model: str) -> dict | None:
    """A model folder's config.json as a dict; None when `model` is no folder with a readable one
    (an unreadable file is left for the loader to report)."""
    try:
        config_path = Path(str(model)).expanduser() / "config.json"
        if not config_path.is_file():
            return None
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def folder_model_type(model: str) -> str | None:
    """`model_type` named by a model folder's config.json, or None."""
    value = (read_folder_config(model) or {}).get("model_type")
    return value if isinstance(value, str) and value else None
