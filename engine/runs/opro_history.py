"""The ranking rule of an OPRO history (history.jsonl): which scored prompt is the best.

Shared by the search (engine/tasks/opro/), `eval --prompt-from` (engine/tasks/evaluate.py) and
the dashboard (engine/dashboard/opro_review.py); it lives apart from the search so that
evaluation can read an OPRO run without importing the search, which itself imports evaluation.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def _score(value: Any) -> float:
    """A score for ordering: a missing or non-finite score ranks below every real one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return number if math.isfinite(number) else -math.inf


def rank_key(entry: dict) -> tuple:
    """Sort key, best first: balanced accuracy, then log-likelihood, then the earlier prompt.

    The one ranking rule of the search, also used to read a history back (engine.dashboard.opro_review,
    `eval --prompt-from`); no torch here, so the dashboard may use it.
    """
    return (-_score(entry.get("balanced_accuracy")), -_score(entry.get("log_likelihood")), int(entry["id"]))


def best_entry(history: Iterable[dict]) -> dict | None:
    """The best prompt record by rank_key, or None for an empty history."""
    return min(history, key=rank_key, default=None)


def top_entries(history: Sequence[dict], k: int) -> list[dict]:
    return sorted(history, key=rank_key)[:k]
