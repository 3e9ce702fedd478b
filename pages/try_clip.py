"""Try a clip: upload audio and score it with finished adapters and the base model, as a clips x
adapters matrix grouped by configuration."""

import pandas as pd
import streamlit as st

from engine.ops import clip_worker
from engine.dashboard import clip_matrix
from engine.data.audio import AudioError, decode_bytes
from engine.config import QUANTIZATIONS
from pages._ui import AUDIO_TYPES, banner, cached_runs, workspace

BASE = "base model"

root = workspace()
st.title("Try a clip")
banner(root)
st.caption("Clips are decoded here (any sample rate, mono or stereo; the model hears 16 kHz mono, at most 30 s) "
           "and scored by a scoring worker that loads the base model once and switches adapters in place. "
           "It stops by itself after 15 idle minutes.")

uploads = st.file_uploader("Audio clips", type=AUDIO_TYPES, accept_multiple_files=True,
                           key="clip_upload", on_change=lambda: st.session_state.pop("clip_results", None))
choices = {choice.label: choice for choice in clip_worker.adapter_choices(root)}
selected = st.multiselect("Score with", [*choices, BASE], default=list(choices)[:1], key="clip_adapters",
                          help="Adapters of the workspace's succeeded training runs, and the base model alone.")
picked = [choices[label] for label in selected if label in choices]
if BASE in selected:
    models = sorted({choice.model for choice in choices.values()})
    left, right = st.columns([3, 1])
    base_model = left.text_input("Base model", value=models[0] if models else "tiny", key="clip_base_model",
                                 help="Hub id (local cache only), a model folder, or tiny.")
    base_quantization = right.selectbox("Quantization", QUANTIZATIONS, key="clip_base_quantization")
    picked.append(clip_worker.base_choice(base_model.strip(), base_quantization))

# ---------------------------------------------------------------- the clips, each with its own outcome
decoded: list[tuple[str, object]] = []
results = st.session_state.get("clip_results")
seen: dict[str, int] = {}
for upload in uploads or []:
    seen[upload.name] = seen.get(upload.name, 0) + 1
    name = upload.name if seen[upload.name] == 1 else f"{upload.name} ({seen[upload.name]})"
    data = upload.getvalue()
    left, right = st.columns([2, 3])
    left.markdown(f"**{name}**")
    left.audio(data, format=upload.type or "audio/wav")
    try:
        audio, info = decode_bytes(data, name)
    except AudioError as exc:
        right.error(f"{name}: {exc.reason}. This file is not scored; the others are.", icon=":material/error:")
        continue
    decoded.append((name, audio))
    right.caption(f"{info.original_seconds:.2f} s, {info.original_sr} Hz, {info.channels} channel(s)"
                  + (" (the model hears the first 30 s)" if info.truncated else ""))

if st.button("Score", key="clip_score", type="primary", disabled=not (decoded and picked)):
    with st.spinner("Scoring (the first request starts a scoring worker, which loads the model once) ..."):
        rows, errors = clip_worker.score_clips(root, decoded, picked)
    st.session_state["clip_results"] = {"rows": rows, "errors": errors, "clips": [name for name, _ in decoded],
                                        "adapters": [choice.label for choice in picked]}
    st.rerun()

if results:
    for error in results["errors"]:
        st.error(error, icon=":material/error:")
    if results["rows"]:
        st.subheader("Scores")
        columns = clip_matrix.matrix_columns(results["adapters"], cached_runs(root))
        matrix = clip_matrix.clip_matrix(results["rows"], columns, results["clips"])
        # st.table, not st.dataframe: a few clips x adapters, every cell readable at once (and in the page text)
        st.table(matrix.texts.style.apply(lambda _texts: clip_matrix.cell_colours(matrix), axis=None))
        st.caption("One row per clip, one column per adapter, grouped by configuration; a configuration with several "
                   "seeds ends with the mean p(SPEECH) over them (label at 0.5). Cells: p(SPEECH), the softmax "
                   "over the log-probabilities of the two answer words, and the prediction at 0.5; blue SPEECH, "
                   "orange NONSPEECH, stronger the surer.")
        with st.expander("Every score (margin, time)"):
            table = pd.DataFrame([{"clip": row["clip"], "adapter": row["adapter"],
                                   "p(SPEECH)": f"{row['p_speech']:.3f}", "prediction": row["pred"],
                                   "margin": f"{row['margin']:+.3f}", "ms": f"{row['ms']:.0f}"}
                                  for row in results["rows"]])
            st.table(table.set_index(["clip", "adapter"]))
            st.caption("margin: log-probability of SPEECH minus NONSPEECH.")

workers = clip_worker.live_workers(root)
if workers:
    with st.expander(f"Scoring workers ({len(workers)} running)"):
        for worker in workers:
            st.caption(f"pid {worker.pid}: {worker.info.get('model')} ({worker.info.get('quantization')}) on "
                       f"{worker.info.get('loaded_device')}, since {worker.info.get('started_at')}")
        if st.button("Stop the scoring workers", key="clip_stop_workers",
                     help="Frees the memory they hold; the next Score starts one again."):
            for worker in workers:
                try:
                    worker.shutdown()
                except clip_worker.ClipWorkerError as exc:
                    st.error(str(exc))
            st.rerun()
