"""`recsys report` pages, rendered by a real browser (headless Chromium, Debian's package)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.data.datasets import time_split
from recsys.evaluation.offline import evaluate
from recsys.evaluation.report import build_report, iter_chart_names, render
from recsys.model.train import TrainConfig
from tests.helpers import clustered_events
from tests.integration.test_deploy import require_tool

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
]


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    exe = require_tool("chromium", "chromium")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run(
        [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def evaluation_json(tmp_path_factory) -> Path:
    """A real evaluation report, from the real protocol, on small clustered data."""
    train, test = time_split(clustered_events(n_users=80, seed=5), test_fraction=0.3)
    rep = evaluate(
        train,
        test,
        kinds={"als": TrainConfig(factors=8, iterations=5), "bpr": TrainConfig(kind="bpr", factors=8, iterations=20)},
    )
    rep["data"] = "clustered.csv"
    path = tmp_path_factory.mktemp("report") / "eval.json"
    path.write_text(json.dumps(rep))
    return path


def benchmark_inputs(d: Path) -> dict[str, Path]:
    rng = random.Random(1)
    grid = [
        {
            "dataset": ds,
            "item_norm_power": p,
            "user_weight": w,
            "cases": 500,
            "MAP@10": 0.03 + 0.01 * w - 0.005 * p + rng.random() * 0.001,
            "HR@10": 0.3 + 0.05 * w,
        }
        for ds in ("taobao", "yoochoose")
        for p in (0.0, 0.5, 1.0)
        for w in (0.0, 0.5, 0.9, 1.0)
    ]
    latency = {
        "latency_ms": [rng.lognormvariate(3, 0.5) for _ in range(400)],
        "throughput": [{"elapsed_s": t, "events_per_s": 200 + rng.random() * 30} for t in range(60)],
        "summary": {"events": 12000, "workers": 2},
    }
    table = {"MAP@10": 0.047, "HR@10": 0.345, "coverage": 0.14}

    def run(eps: float) -> dict:  # the shape of bench/e2e.py's results (one entry per pipeline)
        return {
            "events": 1000,
            "answered": 990,
            "events_per_s": eps,
            "recs_per_s": eps * 0.8,
            "target_rate": None,
            "latency_ms": {"p50": 20.0, "p95": 80.0, "p99": 120.0},
            "latency_hist_ms": [rng.randint(0, 50) for _ in range(50)],
        }

    e2e = {
        "bench": "e2e",
        "machine": {"cpus": 2},
        "results": {"passthrough": run(5000.0), "worker": run(3000.0), "naive": run(100.0)},
        "ratios": {"worker_vs_naive_throughput": 30.0},
    }
    compute = {
        "bench": "compute",
        "config": {"sizes": [1000, 100000], "factors": [32, 64]},  # bench/compute.py
        "results": [
            {"items": n, "factors": f, "batched_users_per_s": 1e7 / n, "naive_users_per_s": 1e4 / n}
            for n in (1000, 10000, 100000)
            for f in (32, 64)
        ],
    }
    out = {}
    for name, data in (("grid", grid), ("latency", latency), ("table", table), ("e2e", e2e), ("compute", compute)):
        out[name] = d / f"{name}.json"
        out[name].write_text(json.dumps(data))
    return out


def test_evaluation_report_has_its_charts_and_tables(evaluation_json, tmp_path):
    out = build_report(evaluation_json, tmp_path / "eval.html")
    page = out.read_text()
    names = list(iter_chart_names(page))
    assert "Ranking metrics per method (higher is better)" in names and "Catalogue coverage of top-10 lists" in names
    rep = json.loads(evaluation_json.read_text())
    for method in rep["methods"]:
        assert f">{method}<" in page  # in the table and the legend
    for metric in ("MAP@10", "HR@10", "NDCG@10"):
        assert f">{metric}<" in page


def test_pages_are_self_contained(evaluation_json, tmp_path):
    pages = [build_report(evaluation_json, tmp_path / "eval.html").read_text()]
    pages += [build_report(p, tmp_path / f"{n}.html").read_text() for n, p in benchmark_inputs(tmp_path).items()]
    for page in pages:
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "fetches something"
        assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
        assert "<link" not in page and "@import" not in page
        assert re.findall(r"https?://[^\s\"'<>]+", page) == [
            u
            for u in re.findall(r"https?://[^\s\"'<>]+", page)
            if u.startswith(
                ("http://www.w3.org/", "http://purl.org/", "http://creativecommons.org/", "https://matplotlib.org")
            )
        ]


@pytest.mark.parametrize(
    "kind,expected",
    [
        ("grid", ["grid: MAP@10 by user_weight", "grid: HR@10 by user_weight"]),
        ("latency", ["latency_ms: distribution", "throughput: events_per_s over time"]),
        ("table", ["table"]),
        ("e2e", ["results: events_per_s", "results: latency_ms", "results: latency_hist_ms", "ratios"]),
        ("compute", ["results: batched_users_per_s by items", "results: naive_users_per_s by items"]),
    ],
)
def test_benchmark_shapes_get_the_right_charts(tmp_path, kind, expected):
    path = benchmark_inputs(tmp_path)[kind]
    names = list(iter_chart_names(build_report(path, tmp_path / "out.html").read_text()))
    for e in expected:
        assert e in names, names


def test_chromium_lays_out_every_chart(evaluation_json, tmp_path):
    inputs = {"eval": evaluation_json, **benchmark_inputs(tmp_path)}
    for name, path in inputs.items():
        page = build_report(path, tmp_path / f"{name}.html")
        r = chromium(tmp_path, "--dump-dom", page.as_uri())
        assert r.returncode == 0, r.stderr[-2000:]
        body = re.search(r"<body[^>]*>", r.stdout).group(0)
        expected = int(re.search(r'data-charts="(\d+)"', body).group(1))
        rendered = re.search(r'data-charts-rendered="(\d+)"', body)
        assert expected >= 1 and rendered, f"{name}: the page's check did not run in the browser"
        assert int(rendered.group(1)) == expected, f"{name}: {rendered.group(1)} of {expected} charts laid out"
        assert r.stdout.count("<svg") == expected


def test_chromium_screenshot_shows_the_charts(evaluation_json, tmp_path):
    from matplotlib.image import imread

    page = build_report(evaluation_json, tmp_path / "eval.html")
    shot = tmp_path / "eval.png"
    r = chromium(tmp_path, "--window-size=1200,1600", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = imread(shot)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    # Coloured bars, not a blank page: many saturated pixels (text alone is grey).
    saturation = img.max(axis=2) - img.min(axis=2)
    assert (saturation > 0.3).mean() > 0.01


def test_report_command_and_its_errors(evaluation_json, tmp_path):
    out = tmp_path / "r.html"
    r = subprocess.run(
        [sys.executable, "-m", "streaming.cli.main", "report", str(evaluation_json), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 0 and r.stdout.strip() == str(out) and out.read_text().startswith("<!DOCTYPE html>")
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    for arg in (str(bad), str(tmp_path / "missing.json")):
        r = subprocess.run(
            [sys.executable, "-m", "streaming.cli.main", "report", arg],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert r.returncode == 2 and arg in r.stderr and "Traceback" not in r.stderr


def test_nothing_to_chart_is_an_error():
    from recsys.errors import RecsysError

    with pytest.raises(RecsysError, match="nothing to chart"):
        render({"name": "x"}, "t")
