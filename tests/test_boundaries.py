"""The architecture rule: the dashboard never imports model libraries; the engine never imports
streamlit. The dashboard side is checked by importing, not by grepping, so indirect imports are
caught too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")


def import_statements(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every absolute import in the file, top level or inside a function;
    name is None for `import module`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.module, alias.name) for alias in node.names)
    return found


def engine_files() -> list[Path]:
    return sorted((REPO / "engine").rglob("*.py"))


def dashboard_files() -> list[Path]:
    return [REPO / "app.py", *sorted((REPO / "pages").glob("*.py"))]


def test_engine_never_imports_streamlit():
    files = engine_files()
    assert REPO / "engine" / "dashboard" / "review.py" in files, "sub-packages are walked"
    offenders = [str(p.relative_to(REPO)) for p in files
                 if any(module.split(".")[0] == "streamlit" for module, _ in import_statements(p))]
    assert offenders == []


def test_dashboard_imports_pull_in_no_model_library():
    files = [p for p in dashboard_files() if p.exists()]
    assert files, "no dashboard files found"
    # The dashboard's own imports of engine/pages modules (and any model library), replayed
    # verbatim: `from engine.jobs import queue` must import engine.jobs.queue, not only engine.jobs.
    lines = sorted({f"import {module}" if name is None else f"from {module} import {name}"
                    for p in files for module, name in import_statements(p)
                    if module.split(".")[0] in ("engine", "pages", *MODEL_LIBRARIES)})
    code = ("import sys\n" + "".join(f"{line}\n" for line in lines)
            + f"bad = [m for m in {MODEL_LIBRARIES!r} if m in sys.modules]\nprint(','.join(bad))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"dashboard imports pull in {result.stdout.strip()} via {lines}"
