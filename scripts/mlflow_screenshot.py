"""Screenshot a tune study's comparison view in the MLflow UI with headless Chromium (for the README).

Starts ``mlflow server`` on 127.0.0.1 against the given tracking database (bounded lifetime, stopped by
its PID), opens the compare-runs page of the study's trial runs, and writes a PNG.

    .venv/bin/python scripts/mlflow_screenshot.py --db .kdflow/mlflow.db --out docs/mlflow-tune-compare.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", default=".kdflow/mlflow.db")
    p.add_argument("--experiment", default="kdflow")
    p.add_argument("--out", default="docs/mlflow-tune-compare.png")
    p.add_argument("--wait", type=int, default=20000, help="ms of page time before the screenshot")
    a = p.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("error: chromium not found; fix: apt-get install chromium")
    uri = f"sqlite:///{Path(a.db).resolve()}"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(a.experiment)
    trials = client.search_runs([exp.experiment_id], "tags.`kdflow.step` = 'tune_trial'", max_results=200)
    if not trials:
        raise SystemExit(f"error: --db: no tune trial runs in '{a.db}'; fix: run `make tune` first")
    latest = max(trials, key=lambda r: r.info.start_time).data.tags["mlflow.parentRunId"]  # the last study
    trials = [r for r in trials if r.data.tags.get("mlflow.parentRunId") == latest and "distill" in r.info.run_name]
    from kdflow.infra.localstack import free_port, stop_pid

    port = free_port()
    server = subprocess.Popen(  # bounded lifetime: killed after 10 minutes whatever happens
        [
            "timeout",
            "-s",
            "KILL",
            "600",
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        ids = json.dumps([r.info.run_id for r in trials])
        # MLflow 3.17's UI keeps a GenAI / Model training switch in the browser; the URL parameter sets it
        view = "workflowType=machine_learning"
        exps = urllib.parse.quote(json.dumps([exp.experiment_id]))
        url = f"{base}/#/compare-runs?runs={urllib.parse.quote(ids)}&experiments={exps}&{view}"
        out = Path(a.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        pages = {
            out: url,
            out.with_name(out.stem + "-experiment.png"): f"{base}/#/experiments/{exp.experiment_id}/runs?{view}",
        }
        for path, page in pages.items():
            shot = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
            shot += [f"--virtual-time-budget={a.wait}", "--window-size=1600,1400", f"--screenshot={path}", page]
            subprocess.run(shot, check=True, timeout=180, capture_output=True)
            print(f"{path} ({path.stat().st_size:,} bytes)")
    finally:
        stop_pid(server.pid)
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
