"""Where the demo model lives and how it is recognised: torch-free, so the dashboard and the
runtime's model-name resolution need not import the builder (engine.models.qwen2_audio.demo_model,
which trains with the runtime)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.models.qwen2_audio import QWEN2_AUDIO as FAMILY

DEMO_MODEL_VERSION = 1  # bump when the pre-training recipe changes: cached folders are rebuilt
DEMO_MODEL_MARKER = "demo_model.json"
BUILD_HINT = "`python -m engine demo --model-only` builds it once (about 50 s on 2 cores)"


def default_demo_model_dir() -> Path:
    """$QLORA_DASH_DEMO_MODEL, else ~/.cache/qlora-dash/demo-qwen2-audio-vN."""
    env = os.environ.get("QLORA_DASH_DEMO_MODEL")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "qlora-dash" / f"demo-qwen2-audio-v{DEMO_MODEL_VERSION}"


def is_built(path: Path) -> bool:
    return (Path(path) / DEMO_MODEL_MARKER).is_file()


def is_demo_model(model: Any) -> bool:
    """True for the demo model's name or a demo model folder (a run config's `model`)."""
    if isinstance(model, str) and model.strip().lower() == FAMILY.demo_model:
        return True
    try:
        return bool(model) and is_built(Path(str(model)).expanduser())
    except OSError:
        return False
