"""What every dashboard page shares: the workspace picker, the disk banner, cached readers, the
target and data pickers of the pages that queue jobs (Evaluate, Prompt optimisation, Train), and the
upload of a labelled data set into the workspace.

Pages import it as `pages._ui` (Streamlit puts app.py's folder on sys.path). Only light engine
modules are used here: the dashboard process never imports torch.
"""

from __future__ import annotations

from collections import Counter
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st

from engine import jobs
from engine.dashboard import launch
from engine.data import datasets
from engine.data.audio import AUDIO_EXTENSIONS
from engine.labels import CLASSES
from engine.runs import folder as rf
from engine.config import DEFAULT_MODEL, QUANTIZATIONS
from engine.ops.disk import low_space_warning
from engine.runs.predictions import read_predictions
from engine.dashboard.review import workspace_signature

_WORKSPACE_VALUE = "_workspace"  # survives page switches; the widget below is re-created per page
WORKSPACE_INPUT = "workspace_input"
WORKSPACE_PARAM = "ws"
LIVE_JOBS_EVERY = "2s"  # how often an active job list is re-read


# (script, title, icon) per section; the file name is the URL (/compare), Overview is /.
PAGES = {
    "Review": [
        ("overview.py", "Overview", ":material/table_view:"),
        ("results.py", "Results", ":material/bar_chart:"),
        ("compare.py", "Compare", ":material/compare_arrows:"),
        ("grid.py", "Grid", ":material/grid_on:"),
    ],
    "Run": [
        ("train.py", "Train", ":material/model_training:"),
        ("evaluate.py", "Evaluate", ":material/fact_check:"),
        ("opro.py", "Prompt optimisation", ":material/auto_fix_high:"),
        ("try_clip.py", "Try a clip", ":material/graphic_eq:"),
        ("disk.py", "Disk", ":material/hard_drive:"),
        ("cluster.py", "Cluster", ":material/lan:"),
    ],
}
DEFAULT_PAGE = "overview.py"
PAGES_DIR = Path(__file__).resolve().parent
_RUN_BY_APP: ContextVar[bool] = ContextVar("run_by_app", default=False)  # True while app.py runs a page
_RERUN_THROUGH_APP = "_rerun_through_app"  # session: a page run alone asked for a rerun since app.py last ran


def navigation() -> st.Page:
    """Declare the sidebar's sections and pages; returns the page the URL asks for."""
    st.set_page_config(page_title="QLoRA audio dashboard", page_icon="🎧", layout="wide")
    return st.navigation({
        section: [st.Page(PAGES_DIR / script, title=title, icon=icon, default=script == DEFAULT_PAGE)
                  for script, title, icon in pages]
        for section, pages in PAGES.items()
    })


def run_app() -> None:
    """app.py: declare the navigation and run the chosen page."""
    page = navigation()
    st.session_state[_RERUN_THROUGH_APP] = False
    token = _RUN_BY_APP.set(True)
    try:
        page.run()
    finally:
        _RUN_BY_APP.reset(token)


def _run_through_app() -> None:
    """Make a page that Streamlit ran without app.py run again through app.py.

    Streamlit runs a folder named pages/ as a classic multipage app until a script calls
    st.navigation; so on a freshly started server the first visit to a deep link (/compare?...)
    runs pages/compare.py alone, without app.py's sidebar. Declaring the navigation here ends
    that mode, and the rerun then goes through app.py with the same page and query string.
    A page that runs alone again before app.py has run (an AppTest of that one file) just renders,
    so it cannot loop.
    """
    if _RUN_BY_APP.get():
        return
    navigation()
    if not st.session_state.get(_RERUN_THROUGH_APP):
        st.session_state[_RERUN_THROUGH_APP] = True
        st.rerun()


def workspace() -> Path:
    """The workspace (runs root) chosen in the sidebar; call it once per page run.

    Defaults to $QLORA_DASH_RUNS (else ./runs); a different choice is kept in the session and
    in the URL (?ws=...), so a reload or a shared link opens the same workspace.
    """
    _run_through_app()
    default = str(rf.runs_root())
    if _WORKSPACE_VALUE not in st.session_state:
        st.session_state[_WORKSPACE_VALUE] = st.query_params.get(WORKSPACE_PARAM) or default

    def remember() -> None:
        st.session_state[_WORKSPACE_VALUE] = st.session_state[WORKSPACE_INPUT].strip() or default

    st.sidebar.text_input("Workspace (runs folder)", value=st.session_state[_WORKSPACE_VALUE],
                          key=WORKSPACE_INPUT, on_change=remember,
                          help="Folder holding one sub-folder per run. Default: $QLORA_DASH_RUNS or ./runs.")
    root = rf.runs_root(st.session_state[_WORKSPACE_VALUE])
    try:
        rf.check_workspace(root)
    except rf.RunFolderError as exc:
        st.error(f"Not a workspace: {exc}")
        st.stop()
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


def job_queue_health(root: Path) -> None:
    """On the pages that show the queue: restart the worker when jobs wait and none runs (it died,
    or the machine restarted), and list job files that cannot be read."""
    try:
        jobs.ensure_worker_if_needed(root)
    except (jobs.JobError, OSError) as exc:
        st.error(f"Jobs are queued but no worker could be started: {exc}")
    broken = jobs.broken_jobs(root)
    if broken:
        st.warning(f"{len(broken)} job file(s) could not be read and are skipped (the other jobs run): "
                   + "; ".join(job["error"] for job in broken))


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


# ---------------------------------------------------------------- what a job runs on (Evaluate, Prompt optimisation)

ONE_RUN, CONFIGURATION, BASE = "One run", "Every seed of a configuration", "Base model"
OTHER_PATH = "Another path ..."


@dataclass
class Target:
    """What the target picker chose: runs with an adapter, or the base model (and its quantization)."""

    choice: str  # ONE_RUN, CONFIGURATION or BASE
    runs: list[rf.RunInfo]
    base_model: str | None = None
    quantization: str | None = None


def pick_target(prefix: str, scorable: list[rf.RunInfo], label: str) -> Target:
    """One run / every seed of a configuration / the base model, as radio + pickers keyed
    <prefix>_target, <prefix>_run, <prefix>_config, <prefix>_base_model and <prefix>_quantization.

    scorable: launch.scorable_runs (succeeded training runs with an adapter). The base model
    defaults to the model most of those runs were trained on.
    """
    choice = st.radio(label, [ONE_RUN, CONFIGURATION, BASE], key=f"{prefix}_target", horizontal=True)
    if choice == BASE:
        used = Counter(str(info.config.get("model")) for info in scorable if info.config.get("model"))
        left, right = st.columns([3, 1])
        model = left.text_input("Base model", value=used.most_common(1)[0][0] if used else DEFAULT_MODEL,
                                key=f"{prefix}_base_model",
                                help="Hub id (from the local cache; nothing is downloaded), a model folder, or tiny.")
        quantization = right.selectbox("Quantization", QUANTIZATIONS, key=f"{prefix}_quantization")
        return Target(choice, [], model, quantization)
    if not scorable:
        st.info("No finished training runs with an adapter in this workspace yet.")
        return Target(choice, [])
    if choice == ONE_RUN:
        run_id = st.selectbox("Run", [info.run_id for info in scorable], key=f"{prefix}_run",
                              help="Succeeded training runs with a saved adapter.")
        return Target(choice, [info for info in scorable if info.run_id == run_id])
    config = st.selectbox("Configuration", sorted({info.config_label for info in scorable}), key=f"{prefix}_config",
                          help="Runs sharing a configuration label: usually the seeds of one recipe.")
    chosen = [info for info in scorable if info.config_label == config]
    st.caption(f"{len(chosen)} run(s): " + ", ".join(f"{info.run_id} (seed {info.seed})" for info in chosen))
    return Target(choice, chosen)


def known_data_sets(root: Path, signature: str) -> list[str]:
    """Data sets the workspace's evaluations used and the demo manifests (re-read when a run changed),
    then the uploaded data sets of <workspace>/_datasets (newest first)."""
    found = list(_known_data_sets(str(root), signature))
    uploaded = [str(dataset.manifest) for dataset in datasets.list_datasets(root)]
    return [path for path in found if path not in uploaded] + uploaded


@st.cache_data(show_spinner=False, max_entries=4)
def _known_data_sets(root: str, signature: str) -> list[str]:
    return launch.known_test_sets(cached_runs(Path(root), signature), Path(root))


def data_set_text(path: str) -> str:
    """How a data set is shown in pickers: an uploaded one by its name, anything else by its path."""
    where = Path(path)
    if where.name == datasets.MANIFEST and where.parent.parent.name == datasets.DATASETS_DIR:
        return f"{where.parent.name} (uploaded)"
    return path


def pick_data(label: str, key: str, known: list[str], index: int = 0, none_option: str | None = None,
              help: str | None = None, on_change: Callable[[], None] | None = None) -> str:
    """A data set from `known`, or any path typed in (selectbox <key>_choice, text input <key>_path).

    With `none_option` the first choice means "no data" and gives "". on_change runs when the
    choice changes.
    """
    options = ([none_option] if none_option else []) + known + [OTHER_PATH]
    choice = st.selectbox(label, options, index=min(index, len(options) - 1), key=f"{key}_choice", help=help,
                          format_func=data_set_text, on_change=on_change)
    if choice == OTHER_PATH:
        return st.text_input(f"{label} path", key=f"{key}_path", placeholder="/data/test.csv")
    return "" if choice == none_option else choice


TYPED = "(as typed above)"


def data_set_shortcut(label: str, text_key: str, known: list[str]) -> None:
    """A picker under a data path text input (key `text_key`): choosing a known data set, an uploaded
    one included, fills the text input. Keyed <text_key>_pick."""
    def fill() -> None:
        picked = st.session_state[f"{text_key}_pick"]
        if picked != TYPED:
            st.session_state[text_key] = picked

    st.selectbox(f"{label}: a data set of this workspace", [TYPED, *known], key=f"{text_key}_pick",
                 format_func=data_set_text, on_change=fill,
                 help="Fills the path above: data this workspace's evaluations used, the demo data, and the "
                      "data sets uploaded on the Evaluate page.")


ZIP_UPLOAD, FILES_UPLOAD = "A zip", "Audio files with a label each"
PER_FILE = "A label per file"
AUDIO_TYPES = sorted(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)  # what the engine decodes


def upload_data_set(root: Path, key: str, on_stored: Callable[[datasets.Dataset], None] | None = None) -> None:
    """Upload a labelled data set into <workspace>/_datasets (widgets keyed <key>_...); on_stored(dataset)
    runs after a successful upload, before the page reruns (it may set other widgets' values).

    The outcome (stored or reused, with every refused file and its reason) stays shown until the
    next upload.
    """
    outcome_key = f"{key}_outcome"

    def store() -> None:
        state = st.session_state
        try:
            if state[f"{key}_mode"] == ZIP_UPLOAD:
                upload = state.get(f"{key}_zip")
                if upload is None:
                    raise datasets.DatasetError("choose a zip file first")
                dataset = datasets.ingest_zip(root, state.get(f"{key}_name", ""), upload.getvalue())
            else:
                files = state.get(f"{key}_files") or []
                if not files:
                    raise datasets.DatasetError("choose audio files first")
                batch = state.get(f"{key}_label", CLASSES[0])
                labelled = [(f.name, f.getvalue(), state.get(f"{key}_label_{i}", CLASSES[0]) if batch == PER_FILE
                             else batch) for i, f in enumerate(files)]
                dataset = datasets.ingest_files(root, state.get(f"{key}_name", ""), labelled)
        except (datasets.DatasetError, OSError) as exc:
            state[outcome_key] = {"error": f"Nothing stored: {exc}"}
            return
        state[outcome_key] = {"dataset": dataset}
        if on_stored:
            on_stored(dataset)

    with st.expander("Upload a labelled data set", expanded=outcome_key in st.session_state):
        st.caption("A zip with speech/ and nonspeech/ folders, an audiofolder (metadata.csv with file_name,label), "
                   "or a manifest (CSV/JSONL with path,label and any metadata columns) beside its clips; or audio "
                   f"files with a label each. Stored in {root / datasets.DATASETS_DIR}/<name>-<hash>/ and offered "
                   "like any other test set on Evaluate, Train and Prompt optimisation; the same content uploaded "
                   "again reuses the stored copy.")
        mode = st.radio("Upload", [ZIP_UPLOAD, FILES_UPLOAD], key=f"{key}_mode", horizontal=True)
        st.text_input("Name", key=f"{key}_name", placeholder="heldout-march",
                      help="Letters, digits, '.', '_', '+' or '-'; the folder adds the content hash. Evaluations of "
                           "the data set are named after it.")
        if mode == ZIP_UPLOAD:
            ready = st.file_uploader("Zip file", type=["zip"], key=f"{key}_zip") is not None
        else:
            files = st.file_uploader("Audio files", type=AUDIO_TYPES, accept_multiple_files=True,
                                     key=f"{key}_files") or []
            ready = bool(files)
            batch = st.selectbox("Label", [*CLASSES, PER_FILE], key=f"{key}_label",
                                 help="One label for every file, or one per file.")
            if batch == PER_FILE:
                columns = st.columns(3)
                for i, upload in enumerate(files):
                    columns[i % 3].selectbox(upload.name, CLASSES, key=f"{key}_label_{i}")
        st.button("Store the data set", key=f"{key}_store", on_click=store, disabled=not ready)
        outcome = st.session_state.get(outcome_key)
        if outcome and "error" in outcome:
            st.error(outcome["error"], icon=":material/error:")
        elif outcome:
            dataset = outcome["dataset"]
            if dataset.reused:
                st.info(f"The same clips are already stored as {dataset.describe()}; that data set is used.")
            else:
                st.success(f"Stored {dataset.describe()} in {dataset.folder}.")
            if dataset.refused:
                st.warning(f"{len(dataset.refused)} file(s) of the upload are not in the data set:")
                st.dataframe([{"file": r.file, "reason": r.reason} for r in dataset.refused], hide_index=True,
                             width="stretch")


def cancel_callback(root: Path, message_key: str) -> Callable[[str], None]:
    """A Cancel button's on_click: cancels the job and leaves the outcome in st.session_state[message_key]."""
    def cancel(job_id: str) -> None:
        try:
            st.session_state[message_key] = f"Job {job_id}: {jobs.cancel(root, job_id)['outcome']}"
        except jobs.JobError as exc:
            st.session_state[message_key] = f"Job {job_id}: {exc}"

    return cancel


def job_name(job: dict) -> str:
    return Path(job["run_dir"]).name if job.get("run_dir") else job["job_id"]


def live_job_list(root: Path, command: str | tuple[str, ...] | None, cancel: Callable[[str], None],
                  cancel_help: str, empty_text: str, columns: Callable[[dict], dict] | None = None,
                  progress_text: Callable[[dict], tuple[float, str] | None] = launch.progress_line) -> list[dict]:
    """The queue's jobs of one engine command or several (every job when None): a table (newest
    first, plus `columns(job)`), then for each active job a Cancel button and its progress bar (progress_text:
    steps, clips scored or prompts scored) or state, and the log of a running one. While a job is active all of it is re-read every 2 s
    (a fragment); when one ends the whole page reruns, which stops the polling. Returns the jobs
    as first read."""
    import pandas as pd

    commands = (command,) if isinstance(command, str) else command

    def read() -> list[dict]:
        listed = [job for job in jobs.read_jobs(root) if commands is None or (job.get("argv") or [None])[0] in commands]
        return sorted(listed, key=lambda job: job.get("job_id", ""), reverse=True)

    def active_ids(job_list: list[dict]) -> set[str]:
        return {job["job_id"] for job in job_list if job.get("state") in rf.ACTIVE_STATES}

    def show(job_list: list[dict]) -> None:
        if not job_list:
            st.info(empty_text)
            return
        rows = launch.job_rows(job_list)
        if columns is not None:  # right after the run's name, where they are read without scrolling
            rows = [dict([*list(row.items())[:3], *columns(job).items(), *list(row.items())[3:]])
                    for row, job in zip(rows, job_list)]  # both newest first; job, command, run come first
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        for job in (job for job in job_list if job.get("state") in rf.ACTIVE_STATES):
            left, right = st.columns([5, 1], vertical_alignment="center")
            with left:
                shown = progress_text(job) if job.get("state") == rf.RUNNING else None
                if shown:
                    st.progress(shown[0], text=shown[1])
                else:
                    st.markdown(f"`{job['job_id']}` **{job_name(job)}**: {job['state']}" + launch.job_wait_note(job))
            right.button("Cancel", key=f"cancel_{job['job_id']}", on_click=cancel, args=(job["job_id"],),
                         help=cancel_help)
            if job.get("state") == rf.RUNNING:
                with st.expander(f"Log of {job_name(job)}"):
                    st.code(jobs.job_log_tail(root, job["job_id"], 4000) or "(no output yet)", language="text")

    first = read()
    watched = active_ids(first)
    if not watched:
        show(first)
        return first

    @st.fragment(run_every=LIVE_JOBS_EVERY)
    def live() -> None:
        current = read()
        if active_ids(current) != watched:
            st.rerun()  # a job ended or a new one was queued: the whole page changes
        show(current)

    live()
    return first
