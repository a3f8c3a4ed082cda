"""`recsys report`: an evaluation or benchmark JSON -> one self-contained HTML page with charts.

    recsys report out/eval-taobao.json -o out/eval-taobao.html
    recsys report out/tune_scoring.json -o out/tune_scoring.html

Charts are inline SVG drawn by matplotlib (text kept as text); no script, style sheet, font or
image is fetched from anywhere. What the page shows depends on the JSON's shape:

  * an evaluation report (`recsys evaluate --output`: {"methods": {method: {metric: value}}, ...}):
    the facts, every ranking metric per method (grouped bars), catalogue coverage, the table;
  * a streaming evaluation (`recsys stream-eval --output`: {"methods": {method: {segment:
    {metric: value, "n": count}}}, ...}): one chart per segment with the methods side by side,
    HR@10 and MRR@10 each on its own axis (the segment's event count in the title, not on an
    axis), then every result, the lifts, the retrains and the configuration as tables;
  * a list of result rows (a benchmark grid such as `python -m bench.tune_scoring`): each measure
    against the parameter that varies most, one line per combination of the others, plus the
    table; rows with a time column (t, ts, time, elapsed_s, ...) become series over time
    (throughput over time);
  * {name: number}: one bar chart;  {name: {metric: number}}: grouped bars;
  * {name: [numbers]} or a list of numbers: a distribution (histogram, p50/p95/p99) - latencies;
  * any other object: each part that fits one of the shapes above gets its own section, plain
    values go into a facts table.

A one-line script at the end of the page counts the charts the browser laid out and writes the
count on <body data-charts-rendered>, which is what tests/unit/test_report.py reads from Chromium.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from itertools import count
from pathlib import Path
from types import ModuleType
from typing import Any

from recsys.errors import RecsysError
from recsys.evaluation.plotting import pyplot

TIME_KEYS = ("t", "ts", "time", "timestamp", "elapsed_s", "elapsed", "t_s")
MIN_SAMPLES = 10  # a shorter list of numbers is a parameter (sizes, factors), not a distribution
MAX_SERIES = 12
_chart_ids = count(1)


# -- shapes ---------------------------------------------------------------------------------------
def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_table(v: Any) -> bool:  # {name: number}
    return isinstance(v, dict) and len(v) > 0 and all(_num(x) for x in v.values())


def _is_grouped(v: Any) -> bool:  # {name: {metric: number}}
    return isinstance(v, dict) and len(v) > 0 and all(_is_table(x) for x in v.values())


def _is_numbers(v: Any) -> bool:  # [number, ...], enough of them to be a distribution
    return isinstance(v, list) and len(v) >= MIN_SAMPLES and all(_num(x) for x in v)


def _is_distributions(v: Any) -> bool:  # {name: [number, ...]}
    return isinstance(v, dict) and len(v) > 0 and all(_is_numbers(x) for x in v.values())


def _is_records(v: Any) -> bool:  # [{column: value}, ...] with numbers in them
    return (
        isinstance(v, list)
        and len(v) > 0
        and all(isinstance(r, dict) for r in v)
        and any(_num(x) for r in v for x in r.values())
    )


def _metric_like(name: str) -> bool:
    n = name.lower()
    return (
        "@" in n
        or n in ("coverage", "hit_rate", "throughput", "eps", "events_per_s", "rate")
        or any(n.endswith(s) for s in ("_ms", "_s", "_seconds", "_per_s", "_rate", "_p50", "_p95", "_p99"))
        or n.startswith(("map", "ndcg", "recall", "hr", "latency", "p50", "p95", "p99"))
    )


# -- charts (matplotlib -> inline SVG) ------------------------------------------------------------
def _plt() -> ModuleType:
    plt = pyplot("the HTML report's charts")
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _svg(fig: Any, name: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    _plt().close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # drop the XML declaration and DOCTYPE: the SVG is inline
    return (
        f'<figure class="chart" id="chart-{next(_chart_ids)}" data-chart="{html.escape(name)}">'
        f"{text}<figcaption>{html.escape(name)}</figcaption></figure>"
    )


def bar_chart(title: str, values: dict[str, float], ylabel: str = "") -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(values) + 2), 3.2))
    names = list(values)
    ax.bar(range(len(names)), [values[n] for n in names], color="#4c72b0")
    ax.set_xticks(
        range(len(names)), names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    for i, n in enumerate(names):
        ax.annotate(_fmt(values[n]), (i, values[n]), ha="center", va="bottom", fontsize=7)
    return _svg(fig, title)


def grouped_bar_chart(title: str, groups: dict[str, dict[str, float]], metrics: Sequence[str], ylabel: str = "") -> str:
    import numpy as np

    plt = _plt()
    names = list(groups)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(metrics) + 3), 3.6))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        ax.bar(np.arange(len(metrics)) + j * width, [groups[name].get(m, 0.0) for m in metrics], width, label=name)
    ax.set_xticks(np.arange(len(metrics)) + 0.4 - width / 2, list(metrics))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2, frameon=False)
    return _svg(fig, title)


def line_chart(
    title: str, x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str, ylabel: str = ""
) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name, ys in list(series.items())[:MAX_SERIES]:
        ax.plot(x[: len(ys)], ys, marker="o" if len(ys) <= 30 else None, markersize=3, label=name)
    xs = [v for v in x if _num(v)]
    if xs and min(xs) > 0 and max(xs) / min(xs) >= 100:
        ax.set_xscale("log")  # catalogue sizes, rates: orders of magnitude apart
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    return _svg(fig, title)


def histogram(title: str, values: Sequence[float]) -> str:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    v = np.asarray(values, float)
    ax.hist(v, bins=min(50, max(5, int(math.sqrt(len(v))))), color="#55a868")
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        p = float(np.percentile(v, q))
        ax.axvline(p, color="#c44e52", linestyle=style, linewidth=1)
        ax.annotate(f"p{q} {_fmt(p)}", (p, ax.get_ylim()[1] * (0.95 - q / 400)), fontsize=7, color="#c44e52")
    ax.set_ylabel("count")
    ax.set_title(title)
    return _svg(fig, title)


# -- HTML pieces ----------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.3e}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if not v.is_integer() else f"{v:.0f}"
    return str(v)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    columns = list(columns or dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if _num(r.get(c)) else ""}">{html.escape(_fmt(r.get(c, "")))}</td>' for c in columns
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def facts(d: dict[str, Any]) -> str:
    plain = {
        k: (", ".join(_fmt(x) for x in v) if isinstance(v, list) else v)
        for k, v in d.items()
        if not isinstance(v, dict)
        and not (isinstance(v, list) and (len(v) >= MIN_SAMPLES or any(isinstance(x, (dict, list)) for x in v)))
    }
    if not plain:
        return ""
    return (
        '<dl class="facts">'
        + "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_fmt(v))}</dd>" for k, v in plain.items())
        + "</dl>"
    )


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{''.join(p for p in parts if p)}</section>"


# -- the shapes, as sections ----------------------------------------------------------------------
def evaluation_sections(rep: dict[str, Any]) -> list[str]:
    methods: dict[str, dict[str, float]] = rep["methods"]
    metrics = list(dict.fromkeys(m for vals in methods.values() for m in vals))
    ranking = [m for m in metrics if m != "coverage" and not m.endswith("_se")]
    out = [
        section("Evaluation", facts(rep)),
        section(
            "Ranking metrics per method",
            grouped_bar_chart("Ranking metrics per method (higher is better)", methods, ranking, "score"),
        ),
    ]
    if "coverage" in metrics:
        out.append(
            section(
                "Catalogue coverage",
                bar_chart(
                    "Catalogue coverage of top-10 lists",
                    {k: v.get("coverage", 0.0) for k, v in methods.items()},
                    "share",
                ),
            )
        )
    out.append(section("All results", table([{"method": k, **v} for k, v in methods.items()], ["method", *metrics])))
    models = rep.get("models")
    if isinstance(models, dict) and models and all(isinstance(v, dict) for v in models.values()):
        out.append(section("Models", table([{"model": k, **v} for k, v in models.items()])))
        secs = {k: v["train_seconds"] for k, v in models.items() if _num(v.get("train_seconds"))}
        if secs:
            out.append(section("Training time", bar_chart("Training time per model", secs, "seconds")))
    if isinstance(rep.get("scoring"), dict):
        out.append(section("Scoring settings", facts(rep["scoring"])))
    return out


STREAM_METRICS = ("HR@10", "MRR@10")
METHOD_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974")


def _is_stream_eval(rep: Any) -> bool:  # {"methods": {method: {segment: {metric: number}}}}
    methods = rep.get("methods") if isinstance(rep, dict) else None
    return isinstance(methods, dict) and len(methods) > 0 and all(_is_grouped(v) for v in methods.values())


def _gid(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9_]+", "_", p) for p in parts)


def segment_chart(segment: str, n: Any, by_method: dict[str, dict[str, float]]) -> str:
    """The methods side by side in one segment: one axis per metric, one bar per method (each
    bar's SVG id is bar-<segment>-<method>-<metric>)."""
    plt = _plt()
    methods = list(by_method)
    fig, axes = plt.subplots(1, len(STREAM_METRICS), figsize=(max(7.0, 0.9 * len(methods) + 3), 3.4))
    for ax, metric in zip(axes, STREAM_METRICS, strict=True):
        vals = [by_method[m].get(metric, 0.0) for m in methods]
        bars = ax.bar(
            range(len(methods)), vals, color=[METHOD_COLORS[i % len(METHOD_COLORS)] for i in range(len(methods))]
        )
        for bar, m in zip(bars, methods, strict=True):
            bar.set_gid(_gid("bar", segment, m, metric))
        ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        for i, v in enumerate(vals):
            ax.annotate(_fmt(float(v)), (i, v), ha="center", va="bottom", fontsize=7)
    title = f"{segment}: {n} scored events" if _num(n) else segment
    fig.suptitle(title, y=1.03)
    return _svg(fig, f"segment {segment}")


def _cell(v: Any) -> str:
    if v is None or v == "" or v == [] or v == {}:
        return "none"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return _fmt(v)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as dotted keys -> text (every value shown, none left empty)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = _cell(v)
    return out


def _filled_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    return table([{c: _cell(r.get(c)) if not _num(r.get(c)) else r[c] for c in columns} for r in rows], columns)


def stream_eval_sections(rep: dict[str, Any]) -> list[str]:
    methods: dict[str, dict[str, dict[str, float]]] = rep["methods"]
    segments = list(dict.fromkeys(seg for segs in methods.values() for seg in segs))
    plain = {k: _cell(v) for k, v in rep.items() if not isinstance(v, dict) and k not in ("retrains", "events")}
    plain["retrains"] = str(len(rep.get("retrains") or []))
    if "events" in rep:
        plain["events"] = f"{len(rep['events'])} per-event lists (not shown)"
    out = [section("Streaming evaluation", facts(plain))]
    for seg in segments:
        by_method = {m: segs[seg] for m, segs in methods.items() if seg in segs}
        n = next((v.get("n") for v in by_method.values() if "n" in v), None)
        out.append(section(f"Segment: {seg}", segment_chart(seg, n, by_method)))
    metrics = list(dict.fromkeys(k for segs in methods.values() for v in segs.values() for k in v if k != "n"))
    rows = [
        {"segment": seg, "method": m, "n": segs[seg].get("n"), **segs[seg]}
        for seg in segments
        for m, segs in methods.items()
        if seg in segs
    ]
    out.append(section("All results", _filled_table(rows, ["segment", "method", "n", *metrics])))
    for key, of in (("lifts", "system"), ("ranker_lifts", "ranker")):
        lifts = rep.get(key)
        if isinstance(lifts, dict) and lifts:
            lift_rows = [
                {"method": m, "segment": seg, **{f"{of} lift {k}": v for k, v in vals.items()}}
                for m, segs in lifts.items()
                for seg, vals in segs.items()
            ]
            cols = list(dict.fromkeys(k for r in lift_rows for k in r))
            out.append(
                section(
                    f"Lift of {of} over each method (relative; none: the method scored 0)",
                    _filled_table(lift_rows, cols),
                )
            )
    retrains = rep.get("retrains")
    if isinstance(retrains, list) and retrains and all(isinstance(r, dict) for r in retrains):
        cols = list(dict.fromkeys(k for r in retrains for k in r))
        out.append(section("Retrains (system+retrain)", _filled_table(retrains, cols)))
    if isinstance(rep.get("config"), dict):
        out.append(section("Configuration", facts(_flat(rep["config"]))))
    return out


def records_sections(title: str, rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [c for c in columns if all(_num(r.get(c)) for r in rows if c in r) and any(c in r for r in rows)]
    time_key = next((c for c in numeric if c.lower() in TIME_KEYS), None)
    out = []
    if time_key:
        rows = sorted(rows, key=lambda r: r.get(time_key, 0))
        x = [r[time_key] for r in rows if time_key in r]
        for c in [c for c in numeric if c != time_key][:6]:
            out.append(line_chart(f"{title}: {c} over time", x, {c: [r.get(c, math.nan) for r in rows]}, time_key, c))
    else:
        distinct = {c: len({json.dumps(r.get(c), sort_keys=True) for r in rows}) for c in columns}
        params = [c for c in numeric if not _metric_like(c) and 1 < distinct[c] <= 12]
        labels = [c for c in columns if c not in numeric and 1 < distinct[c] <= MAX_SERIES]
        measures = [c for c in numeric if c not in params and distinct[c] > 1]
        measures = sorted(measures, key=lambda c: (not _metric_like(c), columns.index(c)))[:4]
        if params and measures:
            xkey = max(params, key=lambda c: distinct[c])
            others = labels + [p for p in params if p != xkey]
            for m in measures:
                series: dict[str, dict[float, float]] = {}
                for r in rows:
                    if xkey in r and m in r:
                        name = ", ".join(f"{o}={_fmt(r.get(o))}" for o in others) or m
                        series.setdefault(name, {})[r[xkey]] = r[m]
                xs = sorted({r[xkey] for r in rows if xkey in r})
                out.append(
                    line_chart(
                        f"{title}: {m} by {xkey}",
                        xs,
                        {k: [v.get(x, math.nan) for x in xs] for k, v in series.items()},
                        xkey,
                        m,
                    )
                )
        elif measures:
            name_col = labels[0] if labels else None
            for m in measures:
                vals = {(str(r.get(name_col)) if name_col else str(i)): r[m] for i, r in enumerate(rows) if m in r}
                out.append(bar_chart(f"{title}: {m}", vals, m))
    return [section(title, *out, table(rows, columns))]


def _is_results(v: Any) -> bool:  # {name: {field: number | {k: number} | [...]}} (benchmark runs)
    return (
        isinstance(v, dict)
        and len(v) > 0
        and all(isinstance(x, dict) for x in v.values())
        and all(any(_num(y) for y in x.values()) for x in v.values())
    )


def results_sections(title: str, runs: dict[str, dict[str, Any]]) -> list[str]:
    """Named runs (e.g. bench.e2e's pipelines): their numbers compared, their nested tables as
    grouped bars (latency percentiles), their histograms as curves."""
    rows = [{"name": k, **{f: v for f, v in r.items() if _num(v)}} for k, r in runs.items()]
    out = records_sections(title, rows)
    nested = dict.fromkeys(f for r in runs.values() for f, v in r.items() if _is_table(v))
    for f in nested:
        groups = {k: r[f] for k, r in runs.items() if _is_table(r.get(f))}
        metrics = list(dict.fromkeys(m for g in groups.values() for m in g))
        out.append(section(f"{title}: {f}", grouped_bar_chart(f"{title}: {f}", groups, metrics, f)))
    hists = dict.fromkeys(f for r in runs.values() for f, v in r.items() if "hist" in f and _is_numbers(v))
    for f in hists:
        series = {k: r[f] for k, r in runs.items() if _is_numbers(r.get(f))}
        n = max(len(v) for v in series.values())
        if f == "latency_hist_ms" and n == 50:
            import numpy as np

            edges = np.logspace(0, 5, 51)  # bench/e2e.py's bins: 1 ms .. 100 s, log-spaced
            x = list(np.sqrt(edges[:-1] * edges[1:]))
            xlabel = "latency (ms)"
        else:
            x, xlabel = list(range(n)), "bin"
        out.append(section(f"{title}: {f}", line_chart(f"{title}: {f}", x, series, xlabel, "count")))
    return out


def distribution_section(title: str, values: Sequence[float]) -> str:
    import numpy as np

    v = np.asarray(values, float)
    stats = {
        "n": len(v),
        "mean": float(v.mean()),
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
    }
    return section(title, histogram(f"{title}: distribution", values), table([stats]))


def generic_sections(title: str, data: Any, depth: int = 0) -> list[str]:
    if depth == 0 and _is_stream_eval(data):
        return stream_eval_sections(data)
    if isinstance(data, dict) and "methods" in data and _is_grouped(data["methods"]):
        return evaluation_sections(data)
    if _is_grouped(data):
        metrics = list(dict.fromkeys(m for vals in data.values() for m in vals))
        return [
            section(
                title,
                grouped_bar_chart(title, data, metrics),
                table([{"name": k, **v} for k, v in data.items()], ["name", *metrics]),
            )
        ]
    if _is_table(data):
        return [section(title, bar_chart(title, data), table([data]))]
    if _is_numbers(data):
        return [distribution_section(title, data)]
    if _is_distributions(data):
        return [distribution_section(f"{title}: {k}" if depth else k, v) for k, v in data.items()]
    if _is_records(data):
        return records_sections(title, data)
    if _is_results(data):
        return results_sections(title, data)
    if isinstance(data, dict) and depth < 3:
        out = [section(title, facts(data))] if facts(data) else []
        for k, v in data.items():
            if isinstance(v, (dict, list)):
                out.extend(generic_sections(k if not depth else f"{title} / {k}", v, depth + 1))
        return out
    return []


# -- the page -------------------------------------------------------------------------------------
CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
     color:#222;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.sub{color:#666} figure.chart{margin:1em 0} figure.chart svg{max-width:100%;height:auto}
figcaption{color:#666;font-size:.85em} table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:2px 14px} dt{color:#666} dd{margin:0}
"""

CHECK_SCRIPT = """<script>
(function(){var n=0,s=document.querySelectorAll('figure.chart svg');
for(var i=0;i<s.length;i++){var b=s[i].getBoundingClientRect();
if(b.width>50&&b.height>50&&s[i].querySelectorAll('path,rect,use').length>0)n++;}
document.body.setAttribute('data-charts-rendered',String(n));})();
</script>"""


def render(data: Any, title: str, source: str = "") -> str:
    sections = generic_sections(title, data)
    n_charts = sum(s.count('<figure class="chart"') for s in sections)
    if not n_charts:
        raise RecsysError(
            f"{source or 'input'}: nothing to chart (expected an evaluation report, result rows, "
            "{name: number} or lists of numbers)"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}</title>'
        f'<style>{CSS}</style></head>\n<body data-charts="{n_charts}">'
        f'<h1>{html.escape(title)}</h1><p class="sub">{html.escape(source)}</p>\n'
        + "\n".join(sections)
        + "\n"
        + CHECK_SCRIPT
        + "\n</body></html>\n"
    )


def build_report(input_path: str | Path, output: str | Path, title: str | None = None) -> Path:
    src = Path(input_path)
    try:
        data = json.loads(src.read_text())
    except FileNotFoundError:
        raise RecsysError(f"{src}: no such file") from None
    except (OSError, ValueError) as e:
        raise RecsysError(f"{src}: not readable JSON: {e}") from None
    title = title or (
        f"{'Streaming evaluation' if _is_stream_eval(data) else 'Evaluation'}: {Path(str(data.get('data', src.stem))).name}"
        if isinstance(data, dict) and "methods" in data
        else src.stem.replace("_", " ")
    )
    page = render(data, title, str(src))
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def iter_chart_names(page: str) -> Iterable[str]:
    return re.findall(r'<figure class="chart"[^>]*data-chart="([^"]*)"', page)
