"""The architecture rule: the dashboard never imports model libraries; the engine never imports
streamlit. Checked by importing, not by grepping, so indirect imports are caught too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module in ("engine", "pages"):  # `from engine import jobs` imports engine.jobs.queue
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def dashboard_files() -> list[Path]:
    return [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]


def test_engine_never_imports_streamlit():
    offenders = [p.name for p in (REPO / "engine").glob("*.py")
                 if any(n == "streamlit" or n.startswith("streamlit.") for n in imported_modules(p))]
    assert offenders == []


def test_dashboard_imports_pull_in_no_model_library():
    files = [p for p in dashboard_files() if p.exists()]
    assert files, "no dashboard files found"
    modules = sorted({n for p in files for n in imported_modules(p)
                      if n.split(".")[0] in ("engine", "pages") or n.split(".")[0] in MODEL_LIBRARIES})
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + f"bad = [m for m in {MODEL_LIBRARIES!r} if m in sys.modules]\nprint(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"dashboard imports pull in {result.stdout.strip()} via {modules}"
