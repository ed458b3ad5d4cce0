"""Jobs on a real cluster: every job's ``--help``; ``ray job submit`` of the MeDS sweep to a
head started with ``ray start``, stopped with ``ray job stop`` mid-sweep and submitted again
(it resumes, to the results of the same sweep run without a stop), tracked on a real
``mlflow server`` and read back through its REST API; the HTML comparison report of those
runs rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from ops_support import ROOT, auth_headers, cli_env, mlflow_server, ray_head
from support_meds import assert_rows_match_local_run, metrics_by_row

pytestmark = pytest.mark.ops

JOBS = sorted((ROOT / "jobs").glob("*.py"))
STANDARD_OPTIONS = ("--dataset", "--data-root", "--config", "--seeds", "--quick", "--summary-json")


def _option_help(text: str) -> dict[str, str]:
    """``--option`` -> its description, parsed from argparse's help output."""
    body = text.split("options:", 1)[-1]
    found: dict[str, str] = {}
    current = None
    for line in body.splitlines():
        match = re.match(r"^\s{2}(-\S+(?:[ ,]+\S+)*?)(?:\s{2,}(.*))?$", line)
        if match and line.lstrip().startswith("-"):
            names = re.findall(r"--[\w-]+", match.group(1))
            current = names[-1] if names else None
            if current:
                found[current] = (match.group(2) or "").strip()
        elif current and line.strip():
            found[current] = (found[current] + " " + line.strip()).strip()
        elif not line.strip():
            current = None
    return found


@pytest.mark.parametrize("script", JOBS, ids=[p.stem for p in JOBS])
def test_every_job_explains_every_option(script, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    options = _option_help(text)
    missing = [o for o in STANDARD_OPTIONS if o not in options]
    assert not missing, f"{script.name} --help lacks {missing}"
    unexplained = [o for o, description in options.items() if len(description) < 10 and o != "--help"]
    assert not unexplained, f"{script.name}: options without an explanation: {unexplained}"


SMOKE = "configs/meds/smoke.yaml"
SWEEP = "smoke-restart"
NOISE_RATIOS = "0,0.2"
# The trial the stop cuts (trials run one at a time, in the order given). Its reference is the
# session's own uninterrupted run of the same setting (``meds_smoke_runs["changed"]``): the
# submitted jobs use the session's cache, so both read the very same cached features, and
# from there every step is deterministic on any 2-CPU Ray.
CUT_NOISE_RATIO = NOISE_RATIOS.split(",")[-1]
RAY = str(Path(sys.executable).parent / "ray")


def _submit(head, tracking: str, cache: Path, summary: Path) -> str:
    """``ray job submit --working-dir . -- python jobs/meds_sweep.py --quick ...`` (no wait)."""
    runtime_env = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": tracking,
            "RAYLAB_CACHE_DIR": str(cache),
            "HF_HUB_OFFLINE": "1",
            "RAYLAB_PROGRESS": "0",
        }
    }
    submission_id = f"raylab-test-{uuid.uuid4().hex[:8]}"
    submit = subprocess.run(
        [
            RAY,
            "job",
            "submit",
            "--address",
            head.dashboard_url,
            "--submission-id",
            submission_id,
            "--no-wait",
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "jobs/meds_sweep.py",
            "--quick",
            "--config",
            SMOKE,
            "--noise-ratios",
            NOISE_RATIOS,
            "--name",
            SWEEP,
            "--summary-json",
            str(summary),
        ],
        cwd=ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    return submission_id


def _tune_trials(experiment: Path) -> dict[str, str]:
    """Trial tag -> status, from the Tune experiment state a restarted sweep restores from."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except (OSError, json.JSONDecodeError):  # being rewritten right now
        return {}
    trials = (json.loads(t[0]) for t in data["trial_data"])
    return {t["experiment_tag"]: t["status"] for t in trials}


@pytest.fixture(scope="module")
def restarted_sweep(tmp_path_factory, meds_smoke_runs):
    """Submit the quick MeDS sweep (two noise ratios, one trial at a time) to a fresh head that
    logs to a fresh MLflow server; stop the job with ``ray job stop`` once the first trial
    has finished; submit the same command again, which must resume and succeed. The jobs use
    the session's cache (after the session's own smoke runs), so the corpus and features
    (inputs, not results) are the very ones those runs read: what a resumed sweep must
    reproduce is the session's uninterrupted run of each setting."""
    from ray.job_submission import JobSubmissionClient

    from raylab.data.store import cache_root

    root = tmp_path_factory.mktemp("submit")
    cache = cache_root()
    summary = root / "summary.json"
    experiment = cache / "ray_results" / SWEEP
    timings: dict[str, float] = {}
    started = time.monotonic()
    with ray_head(num_cpus=2) as head, mlflow_server(root / "mlflow") as tracking:
        timings["services_up_s"] = time.monotonic() - started
        client = JobSubmissionClient(head.dashboard_url, headers=auth_headers())
        first = _submit(head, tracking, cache, summary)
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not client.get_job_status(first).is_terminal():
            if "TERMINATED" in _tune_trials(experiment).values():
                break
            time.sleep(2)
        first_status_before_stop = client.get_job_status(first).value
        stop = subprocess.run(
            [RAY, "job", "stop", "--address", head.dashboard_url, first],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        stopped_at = time.time()
        first_status, first_logs = _wait_for_job(client, first, timeout=120)
        trials_at_stop = _tune_trials(experiment)
        timings["first_job_s"] = time.monotonic() - started - timings["services_up_s"]
        second = _submit(head, tracking, cache, summary)
        second_status, second_logs = _wait_for_job(client, second, timeout=900)
        timings["second_job_s"] = time.monotonic() - started - timings["services_up_s"] - timings["first_job_s"]
        yield {
            "tracking": tracking,
            "summary": summary,
            "cache": cache,
            "timings": timings,
            "first": {
                "status": first_status,
                "before_stop": first_status_before_stop,
                "logs": first_logs,
                "stop": stop.stdout + stop.stderr,
            },
            "trials_at_stop": trials_at_stop,
            "stopped_at_ms": int(stopped_at * 1000),
            "second": {"status": second_status, "logs": second_logs},
        }
    print(f"submit/stop/resubmit timings: {timings}")


def _wait_for_job(client, submission_id: str, timeout: float) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    status = client.get_job_status(submission_id)
    while not status.is_terminal() and time.monotonic() < deadline:
        time.sleep(3)
        status = client.get_job_status(submission_id)
    if not status.is_terminal():
        client.stop_job(submission_id)
    return str(status.value), client.get_job_logs(submission_id)


def test_stopped_sweep_resumes_when_submitted_again(restarted_sweep):
    first, second = restarted_sweep["first"], restarted_sweep["second"]
    assert first["before_stop"] == "RUNNING", first["logs"][-6000:]
    assert first["status"] == "STOPPED", first["stop"]
    # The stop fell between the two trials' ends: one finished, one not.
    assert sorted(restarted_sweep["trials_at_stop"].values()).count("TERMINATED") == 1, restarted_sweep[
        "trials_at_stop"
    ]
    assert second["status"] == "SUCCEEDED", second["logs"][-6000:]
    rows = json.loads(restarted_sweep["summary"].read_text())["rows"]
    assert {(r["method"], r["noise_ratio"]) for r in rows} == {
        (m, nr) for m in ("meds", "patchcore", "partial_memory", "distilled") for nr in (0.0, 0.2)
    }
    assert all(0.0 <= r["metrics"]["image_auroc"] <= 1.0 for r in rows)
    # Both attempts connected to the submitted-to cluster rather than starting their own Ray.
    assert "Started a local Ray instance" not in first["logs"] + second["logs"]


def _same(a, b, where: str = "") -> list[str]:
    """Where two saved states differ (tensors and arrays bit for bit), as readable paths."""
    import torch

    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys {sorted(map(str, a))} != {sorted(map(str, b))}"]
        return [d for key in a for d in _same(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _same(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return [] if a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b) else [f"{where}: tensors differ"]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return [] if a.shape == b.shape and np.array_equal(a, b) else [f"{where}: arrays differ"]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def _trained(state: dict) -> dict:
    """What training determines in a saved state: all but wall times (``*_seconds``) and
    numpy's and Python's global generators. Nothing seeds those two in a Train worker, so
    they differ between any two runs, stopped or not; the MeDS loops draw only from torch's
    generator, which is compared."""
    kept = {k: v for k, v in state.items() if not str(k).endswith("_seconds")}
    if "rng_states" in kept:
        kept["rng_states"] = [
            {k: v for k, v in rank.items() if k not in ("numpy", "python")} for rank in kept["rng_states"]
        ]
    return kept


def _trial_of(tracking: str, noise_ratio: str) -> str:
    """The id of the stopped sweep's trial at ``noise_ratio`` (a tag of its nested runs)."""
    tags = [_kv(run, "tags") for run in _runs(tracking, "raylab/meds_sweep")]
    (trial,) = {t["raylab.trial"] for t in tags if t.get("raylab.noise_ratio") == noise_ratio}
    return trial


def _stages(run: Path, sweep: str) -> str:
    """``<class>-<stage>`` of a Train run named ``<sweep>-<trial id>-<class>-<stage>``."""
    return run.name.removeprefix(f"{sweep}-").split("-", 1)[1]


def test_resumed_sweep_equals_the_same_sweep_run_without_a_stop(restarted_sweep, meds_smoke_runs):
    """Stopping and resubmitting must not change a result: the cut trial's rows, and the
    final checkpoint of each of its Train runs (weights, optimizer, torch's generator states),
    equal those of the same setting (same config, same seed, the same cached features) run in
    one go, on the session's Ray. Training on CPU here is deterministic, so the checkpoints
    are equal bit for bit; the rows' metrics, summed in another order on another cluster, to
    float rounding. The trial that finished before the stop is restored from Tune's state:
    its rows equal the session's run of that setting in the same way."""
    from raylab.train.harness import STATE_FILE, load_state

    rows = json.loads(restarted_sweep["summary"].read_text())["rows"]
    assert len(metrics_by_row(rows)) == 8
    cut = float(CUT_NOISE_RATIO)
    assert_rows_match_local_run([r for r in rows if r["noise_ratio"] == cut], meds_smoke_runs["changed"]["rows"])
    assert_rows_match_local_run([r for r in rows if r["noise_ratio"] != cut], meds_smoke_runs["first"]["rows"])

    # Train run names are <sweep>-<trial id>-<network>-<stage>: the same setting's runs have the
    # same <network>-<stage> part in either sweep (the trial ids differ).
    results = restarted_sweep["cache"] / "ray_results"
    trial = _trial_of(restarted_sweep["tracking"], CUT_NOISE_RATIO)
    resumed_runs = sorted(p for p in results.glob(f"{SWEEP}-{trial}-*") if p.is_dir())
    session_sweep = meds_smoke_runs["changed"]["name"]
    uninterrupted = {_stages(p, session_sweep): p for p in results.glob(f"{session_sweep}-*") if p.is_dir()}
    assert resumed_runs, sorted(p.name for p in results.iterdir())
    assert sorted(uninterrupted) == sorted(_stages(run, SWEEP) for run in resumed_runs)
    for run in resumed_runs:
        twin = uninterrupted[_stages(run, SWEEP)]
        finals = [sorted(c for c in r.glob("checkpoint_*") if c.is_dir())[-1] / STATE_FILE for r in (run, twin)]
        differences = _same(*(_trained(load_state(f)) for f in finals))
        assert not differences, (run.name, differences[:10])


def _rest(tracking: str, path: str, payload: dict | None = None) -> dict:
    import requests

    url = f"{tracking}/api/2.0/mlflow/{path}"
    response = requests.post(url, json=payload, timeout=30) if payload is not None else requests.get(url, timeout=30)
    assert response.status_code == 200, (url, response.status_code, response.text[:500])
    return response.json()


def _runs(tracking: str, experiment_name: str) -> list[dict]:
    experiment = _rest(tracking, f"experiments/get-by-name?experiment_name={experiment_name}")["experiment"]
    runs, token = [], None
    while True:
        page = _rest(
            tracking,
            "runs/search",
            {
                "experiment_ids": [experiment["experiment_id"]],
                "max_results": 500,
                **({"page_token": token} if token else {}),
            },
        )
        runs.extend(page.get("runs", []))
        token = page.get("next_page_token")
        if not token:
            return runs


def _kv(run: dict, kind: str) -> dict[str, str]:
    return {item["key"]: item["value"] for item in run["data"].get(kind, [])}


def test_mlflow_server_has_one_parent_with_nested_trial_runs(restarted_sweep):
    """Through the MLflow server's REST API: one parent run for the sweep, resumed once; one
    finished nested run per method and noise ratio, with params, metrics and artifacts; the
    trial that finished before the stop was not run again; no run left RUNNING."""
    import requests

    tracking = restarted_sweep["tracking"]
    runs = _runs(tracking, "raylab/meds_sweep")
    assert not [r["info"]["run_name"] for r in runs if r["info"]["status"] == "RUNNING"]
    parents = [r for r in runs if "mlflow.parentRunId" not in _kv(r, "tags")]
    assert [p["info"]["run_name"] for p in parents] == [SWEEP]
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED"
    assert _kv(parent, "tags")["raylab.restarts"] == "1"
    nested = [r for r in runs if _kv(r, "tags").get("mlflow.parentRunId") == parent["info"]["run_id"]]
    assert len(nested) == len(runs) - 1
    finished: dict[tuple[str, str], list[dict]] = {}
    for run in nested:
        if run["info"]["status"] == "FINISHED":
            tags = _kv(run, "tags")
            finished.setdefault((tags["raylab.method"], tags["raylab.noise_ratio"]), []).append(run)
    methods = ("meds", "patchcore", "partial_memory", "distilled")
    assert {k: len(v) for k, v in finished.items()} == {(m, nr): 1 for m in methods for nr in ("0.0", "0.2")}
    stopped = restarted_sweep["stopped_at_ms"]
    for (method, ratio), (run,) in finished.items():
        # noise 0 finished in the first submission and was kept; noise 0.2 ran in the second.
        assert (int(run["info"]["start_time"]) < stopped) == (ratio == "0.0"), (method, ratio)
        params, metrics = _kv(run, "params"), _kv(run, "metrics")
        assert params["noise_ratio"] == ratio and params["seed"] == "0"
        assert params["config.meds.stage1.bootstraps"] == "2"
        assert 0.0 <= float(metrics["image_auroc"]) <= 1.0
        listed = _rest(tracking, f"artifacts/list?run_id={run['info']['run_id']}")
        assert {"per_class_metrics.csv", "roc_image.png"} <= {f["path"] for f in listed.get("files", [])}
    run_id = finished[("meds", "0.2")][0]["info"]["run_id"]
    png = requests.get(f"{tracking}/get-artifact", params={"path": "roc_image.png", "run_uuid": run_id}, timeout=30)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    parent_files = {
        f["path"] for f in _rest(tracking, f"artifacts/list?run_id={parent['info']['run_id']}").get("files", [])
    }
    assert {"results_table.csv", "image_auroc_vs_noise.png"} <= parent_files


def _chromium() -> str:
    import os
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "headless Chromium not found (Debian: apt-get install chromium)"
        if os.environ.get("RAYLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(message + "; RAYLAB_REQUIRE_BROWSER=1 makes its absence an error")
        pytest.skip(message)
    return found


# Appended to a copy of the report only: records, after load, the size each image decoded to.
PROBE = """<script>window.addEventListener('load', () => { for (const img of document.images)
  img.setAttribute('data-natural', img.naturalWidth + 'x' + img.naturalHeight); });</script>"""


def test_report_renders_in_headless_chromium(restarted_sweep, tmp_path):
    import base64
    import io

    from PIL import Image

    from raylab.cli import main as raylab

    browser = _chromium()
    report = tmp_path / "report.html"
    assert raylab(["report", "meds_sweep", "--tracking-uri", restarted_sweep["tracking"], "-o", str(report)]) == 0
    text = report.read_text()
    assert "<script" not in text and "http://" not in text.replace(restarted_sweep["tracking"], "")  # self-contained
    sections = re.findall(r"<h2>(.*?)</h2>", text)
    assert sections[:4] == [
        "Results (mean ± std over seeds)",
        "Metrics vs noise ratio",
        "Per class (image_auroc)",
        "Trials over hyperparameters (image_auroc)",
    ]
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    sizes = [Image.open(io.BytesIO(base64.b64decode(data))).size for data in embedded]
    assert len(sizes) >= 4  # three plots of this report + the figure the sweep logged
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    rendered = re.findall(r'data-natural="(\d+)x(\d+)"', dom.stdout)
    assert [(int(w), int(h)) for w, h in rendered] == sizes, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1600",
            f"--screenshot={shot}",
            report.as_uri(),
        ],
        capture_output=True,
        timeout=180,
    )
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # plots and tables on the page, not a blank one
