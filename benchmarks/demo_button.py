"""The demo made from the Overview button (a browser tab open all along) against the CLI demo.

    python benchmarks/demo_button.py [--repo .]

Starts `streamlit run app.py` on an empty temporary workspace, opens the Overview in headless
Chromium (/usr/bin/chromium), clicks "Make the demo workspace" and waits, tab open, until the
queued demo job has ended; then runs `python -m engine demo` into another empty folder. Prints
both wall times and their ratio (the dashboard's target: within 1.5x of the CLI).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_job_state(root: Path) -> str | None:
    for job_file in (root / ".jobs").glob("*/job.json"):
        job = json.loads(job_file.read_text())
        if job.get("argv", [None])[0] == "demo":
            return job.get("state")
    return None


def button_demo(repo: Path, root: Path, timeout_s: float) -> float:
    port = free_port()
    env = dict(os.environ, QLORA_DASH_RUNS=str(root))
    server = subprocess.Popen([str(repo / ".venv/bin/streamlit"), "run", "app.py", "--server.port", str(port),
                               "--server.headless", "true"], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(6)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_role("button", name="Make the demo workspace").click(timeout=60_000)
            started = time.monotonic()
            while demo_job_state(root) not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() - started > timeout_s:
                    raise TimeoutError(f"the demo job did not end within {timeout_s:.0f} s")
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            state = demo_job_state(root)
            browser.close()
        if state != "succeeded":
            raise RuntimeError(f"the demo job ended {state}")
        return elapsed
    finally:
        server.terminate()
        server.wait(timeout=30)


def cli_demo(repo: Path, root: Path) -> float:
    started = time.monotonic()
    subprocess.run([str(repo / ".venv/bin/python"), "-m", "engine", "demo", "--runs-dir", str(root)], cwd=repo,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="checkout with its .venv")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        button = button_demo(repo, Path(tmp) / "button", args.timeout)
        cli = cli_demo(repo, Path(tmp) / "cli")
    print(f"demo from the Overview button (tab open): {button:.1f} s")
    print(f"demo from the CLI:                        {cli:.1f} s")
    print(f"ratio: {button / cli:.2f}x (load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
