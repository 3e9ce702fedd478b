"""The label set: which classes a run predicts, in which order, and which one is "positive".

Every record, statistic, chart and score array speaks of these classes; they are named here once.
Index i of `names` is column i of every (N, n_classes) score array, and the probability the
records store is that of the positive class (`p_speech` for the default set, the documented name
of the column). The binary SPEECH / NONSPEECH task is the default and the only one trained today.

A leaf module (no engine imports): the record format, the statistics and the data readers all need
it, and none of them may import another back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class LabelSet:
    """Class names in score-column order, the positive class, and spellings read as each class."""

    names: tuple[str, ...]
    """Canonical class names, upper case; index i is score column i."""
    positive: str
    """The class whose probability the records store (as `p_speech` for the default set)."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Other spellings (compared after upper-casing and dropping spaces, - and _) -> canonical name."""

    def __post_init__(self) -> None:
        if len(self.names) < 2 or len(set(self.names)) != len(self.names):
            raise ValueError(f"a label set needs two or more distinct class names (got {self.names})")
        if self.positive not in self.names:
            raise ValueError(f"positive class {self.positive!r} is not one of {self.names}")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    @property
    def negative(self) -> str:
        """The other class of a binary set (the one predicted when the positive is not)."""
        if len(self.names) != 2:
            raise ValueError("only a binary label set has one negative class")
        return next(name for name in self.names if name != self.positive)

    @property
    def binary(self) -> bool:
        return len(self.names) == 2

    def index(self, name: str) -> int:
        """Score column of a canonical class name."""
        return self.names.index(name)

    def canonical(self, value: Any, extra: Mapping[str, str] | None = None) -> str | None:
        """The canonical class for an accepted spelling (any case; spaces, '-' and '_' ignored;
        the aliases; `extra`, matched case-insensitively first), else None."""
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, float):
            if value != value:  # NaN: a blank cell
                return None
            if value.is_integer():
                value = int(value)
        text = str(value).strip()
        if not text:
            return None
        if extra and text.casefold() in extra:
            return extra[text.casefold()]
        word = _SEPARATORS.sub("", text).upper()
        if word in self.names:
            return word
        return self.aliases.get(word)

    def describe_spellings(self) -> str:
        """The accepted spellings, for error messages."""
        others = ", ".join(sorted(self.aliases, key=lambda a: (self.aliases[a], a)))
        return f"{', '.join(self.names)} (also {others}; any case, '-', '_' and spaces ignored)"


_SEPARATORS = re.compile(r"[\s_-]")

SPEECH_LABELS = LabelSet(("SPEECH", "NONSPEECH"), positive="SPEECH", aliases={"1": "SPEECH", "0": "NONSPEECH"})
"""The default task: SPEECH (positive, index 0) vs NONSPEECH (index 1)."""

DEFAULT_LABEL_SET = SPEECH_LABELS
SPEECH, NONSPEECH = DEFAULT_LABEL_SET.positive, DEFAULT_LABEL_SET.negative
CLASSES = DEFAULT_LABEL_SET.names
