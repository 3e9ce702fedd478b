"""The dashboard's entry point: `streamlit run app.py` (workspace from $QLORA_DASH_RUNS, else ./runs).

Only navigation lives here; the page table (pages/_ui.py) and each page's script are under pages/.
"""

from pages import _ui

_ui.run_app()
