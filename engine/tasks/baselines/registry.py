"""The baseline detectors, one module each, registered by name.

A detector module builds one `Detector` and passes it to `register`; the run, the CLI and the
config keys are generated from that description, so adding a detector is one new module (plus
its import line in engine/tasks/baselines/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any, Callable, Mapping

import numpy as np

# config.json keys every baseline run writes; a detector's option or constant may not reuse them
COMMON_SETTINGS = ("schema_version", "kind", "label", "method", "threshold", "reduction", "test_data",
                   "max_clip_seconds", "backend", "skipped", "data", "rule", "rule_choice", "val_data",
                   "rule_candidates")


@dataclass(frozen=True)
class ClipRule:
    """One way to turn a detector's frame scores into a clip score in [0, 1]."""

    name: str
    """short name recorded as config.json "rule", such as max or fraction>=0.5"""
    description: str
    """what the clip score is, recorded as config.json "reduction" """
    reduce: Callable[[np.ndarray], float]
    """frame scores of one clip -> clip score"""


def max_rule(what: str) -> ClipRule:
    return ClipRule("max", f"max over {what}", lambda frames: float(np.max(frames)))


def mean_rule(what: str) -> ClipRule:
    return ClipRule("mean", f"mean over {what}", lambda frames: float(np.mean(frames)))


def fraction_rule(what: str, frame_threshold: float) -> ClipRule:
    return ClipRule(f"fraction>={frame_threshold:g}", f"fraction of frames whose {what} >= {frame_threshold:g}",
                    lambda frames: float(np.mean(np.asarray(frames) >= frame_threshold)))


@dataclass(frozen=True)
class Option:
    """A setting of one detector: a CLI flag `--<name with dashes>` and a config.json key `name`."""

    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    choices: tuple | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """The value as stored in config.json; a ValueError naming the option when it is not allowed."""
        try:
            parsed = self.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be of type {getattr(self.type, '__name__', self.type)} "
                             f"(got {value!r})") from None
        if self.choices is not None and parsed not in self.choices:
            allowed = ", ".join(str(c) for c in self.choices[:-1]) + f" or {self.choices[-1]}"
            raise ValueError(f"{self.name} must be {allowed} (got {value})")
        return parsed


@dataclass(frozen=True)
class Detector:
    """One classic detector as a baseline: how it scores a clip and what it records about itself."""

    name: str
    """the --method value (config.json "method")"""
    label: str
    """display name (config.json "label")"""
    reduction: str
    """how frame decisions become one clip score (config.json and evaluation.json "reduction")"""
    clip_score: Callable[[np.ndarray, Mapping[str, Any]], float]
    """score in [0, 1] of one 16 kHz mono clip, given the detector's parsed option values"""
    backend: Callable[[], str | None]
    """backend and version for environment.json and the evaluation's meta, asked after scoring"""
    options: tuple[Option, ...] = ()
    """detector-specific settings, each a CLI flag and a config.json key"""
    constants: Mapping[str, Any] = field(default_factory=dict)
    """fixed facts written into config.json after the options (frame sizes)"""
    packages: tuple[str, ...] = ()
    """distributions whose versions environment.json records"""
    frame_scores: Callable[[np.ndarray, Mapping[str, Any]], np.ndarray] | None = None
    """per-frame speech scores in [0, 1] of one clip; with `rules`, lets a validation split choose the rule"""
    rules: tuple[ClipRule, ...] = ()
    """candidate clip rules over frame_scores; the first is clip_score's (the rule used without validation)"""


_DETECTORS: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    """Add `detector` to the registry; a name or settings key already taken is refused."""
    if detector.name in _DETECTORS:
        raise ValueError(f"baseline detector {detector.name!r} is already registered")
    taken = {option.name: name for name, other in _DETECTORS.items() for option in other.options}
    for key in [option.name for option in detector.options] + list(detector.constants):
        if key in COMMON_SETTINGS:
            raise ValueError(f"baseline detector {detector.name!r}: setting {key!r} is a key every baseline writes")
        if key in taken:
            raise ValueError(f"baseline detector {detector.name!r}: option {key!r} is already declared by "
                             f"{taken[key]!r}")
    rule_names = [rule.name for rule in detector.rules]
    if detector.rules and detector.frame_scores is None:
        raise ValueError(f"baseline detector {detector.name!r}: rules need frame_scores to apply to")
    if len(set(rule_names)) != len(rule_names):
        raise ValueError(f"baseline detector {detector.name!r}: rule names repeat ({', '.join(rule_names)})")
    _DETECTORS[detector.name] = detector
    return detector


def detectors() -> dict[str, Detector]:
    """The registered detectors by name, in registration order."""
    return dict(_DETECTORS)


def detector(name: str) -> Detector:
    try:
        return _DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown baseline method {name!r}; use one of {', '.join(_DETECTORS)}") from None


def version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return None
