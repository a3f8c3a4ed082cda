"""`recsys report` on a `recsys stream-eval` JSON: one comparison chart per segment (methods side by
side, HR@10 and MRR@10 on their own axes), every field filled, checked in headless Chromium."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest

from recsys.data.datasets import time_split
from recsys.evaluation.report import METHOD_COLORS, build_report, iter_chart_names
from recsys.evaluation.streaming import StreamEvalConfig, stream_evaluate
from recsys.model.train import TrainConfig
from tests.helpers import clustered_events
from tests.unit.test_report import chromium

METHODS = ("popularity", "own-items", "static", "system", "system+retrain")


@pytest.fixture(scope="module")
def stream_eval_json(tmp_path_factory):
    """A real streaming evaluation report, from the real protocol, on small clustered data."""
    train, test = time_split(clustered_events(n_users=60, seed=7), test_fraction=0.3)
    rep = stream_evaluate(
        train,
        test,
        tcfg=TrainConfig(factors=8, iterations=5),
        ecfg=StreamEvalConfig(methods=METHODS, retrain_hours=1e-3),
    )
    rep["data"] = "clustered.csv"
    path = tmp_path_factory.mktemp("stream-report") / "stream.json"
    path.write_text(json.dumps(rep))
    return path, rep


def test_one_chart_per_segment_with_a_bar_per_method_and_metric(stream_eval_json, tmp_path):
    path, rep = stream_eval_json
    page = build_report(path, tmp_path / "s.html").read_text()
    segments = list(rep["methods"]["system"])
    assert list(iter_chart_names(page)) == [f"segment {s}" for s in segments]
    for seg in segments:
        n = rep["methods"]["system"][seg]["n"]
        assert f"{seg}: {n} scored events" in html.unescape(page)  # the count is in the title, not on an axis
        for m in METHODS:
            for metric in ("HR_10", "MRR_10"):
                gid = "-".join(re.sub(r"[^A-Za-z0-9_]+", "_", p) for p in ("bar", seg, m, metric))
                assert page.count(f'id="{gid}"') == 1, gid
    # every cell and every fact has a value, and every top-level field is on the page
    assert not re.findall(r"<td[^>]*>\s*</td>", page) and not re.findall(r"<dd>\s*</dd>", page)
    for field in rep:
        assert f">{html.escape(field)}<" in page or field in ("methods", "lifts", "config"), field
    assert "Lift of system over each method" in page and "confidence.weights.transaction" in page


def test_chromium_shows_the_method_comparison(stream_eval_json, tmp_path):
    from matplotlib.image import imread

    path, rep = stream_eval_json
    page = build_report(path, tmp_path / "s.html")
    r = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    body = re.search(r"<body[^>]*>", r.stdout).group(0)
    expected = int(re.search(r'data-charts="(\d+)"', body).group(1))
    assert expected == len(rep["methods"]["system"])
    assert re.search(r'data-charts-rendered="(\d+)"', body).group(1) == str(expected)  # all laid out
    assert len(re.findall(r'id="bar-', r.stdout)) == expected * len(METHODS) * 2

    shot = tmp_path / "s.png"
    r = chromium(tmp_path, "--window-size=1200,1400", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri())
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    img = (imread(shot)[..., :3] * 255).astype(int)
    assert (img.max(axis=2) - img.min(axis=2) > 80).mean() > 0.01  # coloured bars, not a blank page
    # each method's own colour is on screen (its bars in the first charts): the methods side by side
    for i, _ in enumerate(METHODS):
        rgb = np.array([int(METHOD_COLORS[i][k : k + 2], 16) for k in (1, 3, 5)])
        assert (np.abs(img - rgb).max(axis=2) <= 6).sum() > 50, METHOD_COLORS[i]
