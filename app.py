"""The dashboard's entry point: `streamlit run app.py` (workspace from $QLORA_DASH_RUNS, else ./runs).

Only navigation lives here; each page is a script under pages/. Pages written by other
work streams are listed once their file exists.
"""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="QLoRA audio dashboard", page_icon="🎧", layout="wide")

SECTIONS = {
    "Review": [
        ("pages/overview.py", "Overview", ":material/table_view:"),
        ("pages/results.py", "Results", ":material/bar_chart:"),
        ("pages/compare.py", "Compare", ":material/compare_arrows:"),
    ],
    "Run": [
        ("pages/train.py", "Train", ":material/model_training:"),
        ("pages/evaluate.py", "Evaluate", ":material/fact_check:"),
        ("pages/opro.py", "Prompt optimisation", ":material/auto_fix_high:"),
        ("pages/try_clip.py", "Try a clip", ":material/graphic_eq:"),
        ("pages/disk.py", "Disk", ":material/hard_drive:"),
        ("pages/cluster.py", "Cluster", ":material/lan:"),
    ],
}

navigation = {
    section: [st.Page(path, title=title, icon=icon, default=path == "pages/overview.py")
              for path, title, icon in pages if (HERE / path).exists()]
    for section, pages in SECTIONS.items()
}
st.navigation({section: pages for section, pages in navigation.items() if pages}).run()
