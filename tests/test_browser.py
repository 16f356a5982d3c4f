"""The MLflow UI over a store made by a tiny sweep and two tiny runs, driven in headless Chromium (Playwright).

The sweep is the session fixture ``tiny_sweep`` (shared with ``test_sweep.py``, run once); the two
runs are added to its store in their own experiment.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package (no
browser download: Playwright is pointed at the system Chromium). Skipped when either is
missing; CI installs both. Screenshots are saved under ``tests/artifacts/``.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.core import config
from pipeline.running import runner
from tests.conftest import tiny_overrides

CHROMIUM = os.environ.get("ASC_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
SWEEP_EXPERIMENT = "tiny"  # tiny_sweep's experiment
SWEEP_SEEDS = (0, 1)  # tiny_sweep's seeds (conftest.SWEEP_GRID)
RUNS_EXPERIMENT = "tiny-runs"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


# conftest's xdist grouping: mlflow_server asks for tiny_sweep at run time
SHARED_FIXTURES_USED = ("tiny_sweep",)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, tiny_dataset, request):
    missing = None
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        missing = "Chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("ASC_REQUIRE_BROWSER"):
            pytest.fail(missing + "; ASC_REQUIRE_BROWSER is set (CI)")
        pytest.skip(missing)
    tiny_sweep = request.getfixturevalue("tiny_sweep")  # only when the browser test runs
    workdir = tiny_sweep["workdir"]  # the sweep's store; the runs go to their own experiment there
    assert tiny_sweep["codes"] == (0, 0)
    runs = tmp_path_factory.mktemp("ui")
    for seed in (1, 2):
        params = config.load(
            None,
            tiny_overrides(
                runs / f"run{seed}",
                tiny_dataset,
                **{
                    "seed": seed,
                    "train.epochs": 1,
                    "augment.tta.enabled": "false",
                    "tracking.experiment": RUNS_EXPERIMENT,
                    "tracking.uri": f"sqlite:///{workdir}/mlflow.db",
                    "tracking.artifact_root": f"{workdir}/mlruns",
                },
            ),
        )
        runner.run_stages(params, runs / f"run{seed}", ["prepare", "train", "evaluate"])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{workdir}/mlflow.db",
            "--default-artifact-root",
            str(workdir / "mlruns"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not start")
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture()
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        pg = browser.new_page(viewport={"width": 1600, "height": 1100})
        yield pg
        browser.close()


def test_runs_listed_and_compared(mlflow_server, page):
    base = mlflow_server
    ARTIFACTS.mkdir(exist_ok=True)
    (exp,) = [
        e
        for e in _api(base, "/api/2.0/mlflow/experiments/search?max_results=50")["experiments"]
        if e["name"] == RUNS_EXPERIMENT
    ]
    eid = exp["experiment_id"]
    found = _api(
        base,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [eid], "filter": "tags.stages = 'prepare,train,evaluate'", "max_results": 10},
    )
    parents = sorted(found["runs"], key=lambda r: r["data"]["tags"] and r["info"]["run_name"])
    assert [r["info"]["run_name"] for r in parents] == ["asc-default-synthetic-seed1", "asc-default-synthetic-seed2"]
    accuracies = {
        r["info"]["run_name"]: {m["key"]: m["value"] for m in r["data"]["metrics"]}["macro_accuracy"] for r in parents
    }

    # The experiment's training runs: both invocations are listed by name.
    page.goto(f"{base}/#/experiments/{eid}/runs")
    for name in accuracies:
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "mlflow_runs.png"), full_page=True)

    # Each run's page shows its metrics with their values.
    for run in parents:
        page.goto(f"{base}/#/experiments/{eid}/runs/{run['info']['run_id']}")
        page.get_by_text("macro_accuracy", exact=True).first.wait_for(timeout=30_000)
        body = page.inner_text("body")
        assert "model_macs" in body and "log_loss" in body
        value = accuracies[run["info"]["run_name"]]
        shown = {f"{value:.{d}f}".rstrip("0").rstrip(".") for d in range(1, 7)} | {str(value)}
        row = body[body.index("macro_accuracy") :][:80]  # the metric's row in the metrics table
        assert any(text in row for text in shown), (value, row)
    page.screenshot(path=str(ARTIFACTS / "mlflow_run.png"), full_page=True)

    # The compare view of the two runs lists the metrics side by side.
    ids = json.dumps([r["info"]["run_id"] for r in parents])
    page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([eid])}")
    page.get_by_text("Comparing 2 Runs").first.wait_for(timeout=30_000)
    page.get_by_text("macro_accuracy", exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    for name in accuracies:
        assert name in body
    for key in ("macro_accuracy", "log_loss", "model_params", "train.epochs"):
        assert key in body, key
    page.screenshot(path=str(ARTIFACTS / "mlflow_compare.png"), full_page=True)


def test_sweep_runs_compared(mlflow_server, page):
    """The sweep's four parent runs side by side in the compare view; its summary run holds the files."""
    base = mlflow_server
    ARTIFACTS.mkdir(exist_ok=True)
    (exp,) = [
        e
        for e in _api(base, "/api/2.0/mlflow/experiments/search?max_results=50")["experiments"]
        if e["name"] == SWEEP_EXPERIMENT
    ]
    eid = exp["experiment_id"]
    cells = _api(
        base,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [eid], "filter": "tags.sweep_role = 'run'", "max_results": 10},
    )["runs"]
    assert len(cells) == 4 and {r["info"]["status"] for r in cells} == {"FINISHED"}
    sweep_ids = {next(t["value"] for t in r["data"]["tags"] if t["key"] == "sweep_id") for r in cells}
    assert len(sweep_ids) == 1
    (sweep_id,) = sweep_ids
    names = sorted(r["info"]["run_name"] for r in cells)
    assert names == [f"sweep-{sweep_id[:6]}-c{c}-seed{s}" for c in (0, 1) for s in SWEEP_SEEDS]

    ids = json.dumps([r["info"]["run_id"] for r in cells])
    page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([eid])}")
    page.get_by_text("Comparing 4 Runs").first.wait_for(timeout=30_000)
    page.get_by_text("macro_accuracy", exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    for name in names:
        assert name in body, name
    for key in ("macro_accuracy", "log_loss", "group_unseen_macro_accuracy", "evaluate.batch_size", "seed"):
        assert key in body, key
    page.screenshot(path=str(ARTIFACTS / "mlflow_sweep_compare.png"), full_page=True)

    (summary,) = _api(
        base,
        "/api/2.0/mlflow/runs/search",
        {"experiment_ids": [eid], "filter": f"tags.sweep_id = '{sweep_id}' and tags.sweep_scope = 'grid'"},
    )["runs"]
    page.goto(f"{base}/#/experiments/{eid}/runs/{summary['info']['run_id']}/artifacts")
    page.get_by_text("summary.csv", exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "runs.csv" in body and "summary.png" in body
    page.screenshot(path=str(ARTIFACTS / "mlflow_sweep_summary.png"), full_page=True)
