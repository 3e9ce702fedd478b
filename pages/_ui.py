"""What every dashboard page shares: the workspace picker, the disk banner, cached readers.

Pages import it as `pages._ui` (Streamlit puts app.py's folder on sys.path). Only light engine
modules are used here: the dashboard process never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine import runfolder as rf
from engine.disk import low_space_warning
from engine.predictions import read_predictions
from engine.review import workspace_signature

_WORKSPACE_VALUE = "_workspace"  # survives page switches; the widget below is re-created per page
WORKSPACE_INPUT = "workspace_input"
WORKSPACE_PARAM = "ws"


def _use_app_navigation() -> None:
    """Make a deep link on a freshly started server go through app.py's st.navigation.

    Streamlit treats a folder named pages/ as an old-style multipage app until the entry point
    has called st.navigation once; so the first visit to /compare after a restart would run
    the page alone, with an auto-generated menu (the "copied link" case). Flag that mode off
    and rerun: app.py then runs and resolves the same page and query string.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def workspace() -> Path:
    """The workspace (runs root) chosen in the sidebar; call it once per page run.

    Defaults to $QLORA_DASH_RUNS (else ./runs); a different choice is kept in the session and
    in the URL (?ws=...), so a reload or a shared link opens the same workspace.
    """
    _use_app_navigation()
    default = str(rf.runs_root())
    if _WORKSPACE_VALUE not in st.session_state:
        st.session_state[_WORKSPACE_VALUE] = st.query_params.get(WORKSPACE_PARAM) or default

    def remember() -> None:
        st.session_state[_WORKSPACE_VALUE] = st.session_state[WORKSPACE_INPUT].strip() or default

    st.sidebar.text_input("Workspace (runs folder)", value=st.session_state[_WORKSPACE_VALUE],
                          key=WORKSPACE_INPUT, on_change=remember,
                          help="Folder holding one sub-folder per run. Default: $QLORA_DASH_RUNS or ./runs.")
    root = rf.runs_root(st.session_state[_WORKSPACE_VALUE])
    if str(root) != default:
        st.query_params[WORKSPACE_PARAM] = str(root)
    elif WORKSPACE_PARAM in st.query_params:
        del st.query_params[WORKSPACE_PARAM]
    return root


def banner(root: Path) -> None:
    """Warn on every page when the workspace's disk is nearly full."""
    try:
        message = low_space_warning(root)
    except OSError as exc:
        message = f"Cannot read free space for {root}: {exc}"
    if message:
        st.warning(message, icon="⚠️")


def cached_runs(root: Path, signature: str | None = None) -> list[rf.RunInfo]:
    """Every run of the workspace, re-read only when a run folder changed (mtime signature).

    The list is shared between sessions, not copied (1,000 RunInfo take 0.1 s to unpickle):
    treat it as read-only.
    """
    return _runs(str(root), signature or workspace_signature(root))


@st.cache_resource(show_spinner=False, max_entries=8)
def _runs(root: str, signature: str) -> list[rf.RunInfo]:
    return rf.list_runs(Path(root))


def cached_predictions(path: str | Path, mtime: float) -> list[dict]:
    """Records of one predictions file; finished evaluations never change, so mtime is the key."""
    return _predictions(str(path), mtime)


@st.cache_data(show_spinner=False, max_entries=256)
def _predictions(path: str, mtime: float) -> list[dict]:
    return read_predictions(Path(path))


def load_predictions(path: Path) -> list[dict]:
    """cached_predictions keyed by the file's current mtime."""
    return cached_predictions(path, Path(path).stat().st_mtime)
