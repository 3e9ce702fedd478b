"""CPU the dashboard's server uses while idle with a browser tab open, page by page.

    python benchmarks/idle_cpu.py [--repo .] [--seconds 30] [-- extra streamlit flags]

Starts `streamlit run app.py` on a free port (the repo's .venv), opens each page in headless
Chromium (/usr/bin/chromium), waits for it to settle, then reads the server's CPU seconds over
`--seconds`. Prints one line per page: CPU seconds and cores.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

PAGES = ["", "results", "compare", "grid", "train", "evaluate", "opro", "try_clip", "disk", "cluster"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", default=".", help="checkout with its .venv")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("extra", nargs="*", help="extra streamlit flags (after --)")
    args = parser.parse_args()
    repo, port = Path(args.repo).resolve(), free_port()
    server = subprocess.Popen([str(repo / ".venv/bin/streamlit"), "run", "app.py", "--server.port", str(port),
                               *args.extra], cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(6)
        proc = psutil.Process(server.pid)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            for name in PAGES:
                page.goto(f"http://127.0.0.1:{port}/{name}")
                time.sleep(8)
                before = sum(proc.cpu_times()[:2]) + sum(sum(c.cpu_times()[:2]) for c in proc.children(recursive=True))
                time.sleep(args.seconds)
                after = sum(proc.cpu_times()[:2]) + sum(sum(c.cpu_times()[:2]) for c in proc.children(recursive=True))
                used = after - before
                print(f"{name or 'overview':10s} {used:6.2f} CPU-s over {args.seconds:.0f} s = {used / args.seconds:.3f} core")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
