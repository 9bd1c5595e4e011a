"""The drift report page (GET /drift/report): one self-contained HTML document a person can read. No Flask.

`render_report(status, reference, window)` turns the very dict /drift/status answers (the statistics
are computed once, by serving/drift.py; nothing here tests anything) and the arrays it was computed
from into the page: a header with the verdict and its settings, then per feature one figure with an
inline SVG chart (the reference and the current window's distributions overlaid), the KS statistic,
the raw and corrected p-values and the decision.

The page works offline and under a CSP without scripts or network (`CSP` below): styles are inline,
charts are inline SVG, nothing is fetched. Every name in it comes from the model (feature names,
model name) and is escaped. matplotlib is imported inside `feature_charts` only, so a worker that
never renders a report never loads it (/predict pays nothing).

`PageCache` keeps the last pages by a key that names the rows tested (see serving/blueprints/drift.py),
so reloading the page does not draw the charts again.
"""

from __future__ import annotations

import html
import io
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from serving.schemas import DriftStatus
from serving.timestamps import iso_utc

#: The page needs nothing but itself: no script, no fetch, no external style or image.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
BINS = 30
REFERENCE_COLOR = "#7b8794"
WINDOW_COLOR = "#d9480f"
CORRECTIONS = {
    "acat": (
        "acat: the features' KS tests, Hotelling's T² of the mean (values and normal scores) and the "
        "Mahalanobis-distance test combined "
        "into one p-value (Cauchy combination), drift when it is below the threshold; a feature is flagged "
        "when its own KS p-value is below the per-feature threshold (Bonferroni)"
    ),
    "bonferroni": "Bonferroni: the chance of any false alarm is at most the threshold",
    "bh": "Benjamini-Hochberg: the expected share of false alarms among alarms is at most the threshold",
    "none": "none: each feature is tested at the threshold on its own",
}
# rcParams are process-wide: one render at a time per process sets and restores them (a gthread worker)
_RENDER_LOCK = threading.Lock()

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2933;
       background: #f5f7fa; }
header { background: #fff; border-bottom: 1px solid #d9e2ec; padding: 18px 28px 10px; }
h1 { font-size: 22px; margin: 0 0 10px; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.verdict { font-size: 14px; padding: 3px 10px; border-radius: 12px; color: #fff; }
.verdict.drift { background: #c92a2a; } .verdict.ok { background: #2b8a3e; }
.verdict.collecting { background: #5c7080; }
dl.summary { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 4px 24px; margin: 0; }
dl.summary div { display: flex; gap: 8px; min-width: 0; } dt { color: #52606d; white-space: nowrap; }
dd { margin: 0; font-weight: 600; overflow-wrap: anywhere; min-width: 0; }
p.note { margin: 10px 0 0; color: #52606d; }
main { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 16px; padding: 16px 28px; }
figure.feature-chart { background: #fff; border: 1px solid #d9e2ec; border-radius: 6px; margin: 0; padding: 10px 12px; }
figure.feature-chart.drift { border-color: #c92a2a; box-shadow: inset 4px 0 0 #c92a2a; }
figcaption { display: flex; justify-content: space-between; align-items: baseline; gap: 12px; flex-wrap: wrap; }
figcaption h2 { font-size: 17px; margin: 0; overflow-wrap: anywhere; }
table.stats { border-collapse: collapse; font-size: 13px; }
table.stats th { font-weight: normal; color: #52606d; text-align: left; padding: 0 6px 0 0; }
table.stats td { font-variant-numeric: tabular-nums; padding: 0 12px 0 0; }
.decision.drift { color: #c92a2a; font-weight: 700; } .decision.ok { color: #2b8a3e; }
figure.feature-chart svg { width: 100%; height: auto; display: block; }
.swatch { display: inline-block; width: 22px; height: 10px; margin: 0 6px 0 4px; vertical-align: middle; }
.swatch.reference { background: #7b8794; opacity: 0.6; } .swatch.window { border-top: 3px solid #d9480f; height: 0; }
footer { padding: 0 28px 24px; color: #52606d; font-size: 13px; }
"""


class PageCache:
    """The last `size` rendered pages by key, for every thread of one worker."""

    def __init__(self, size: int = 4):
        self.size = size
        self._pages: OrderedDict[Hashable, str] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key: Hashable, page: str) -> None:
        with self._lock:
            self._pages[key] = page
            self._pages.move_to_end(key)
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)


def render_report(status: DriftStatus, reference: np.ndarray, window: np.ndarray) -> str:
    """The HTML page for `status` (a /drift/status answer) and the arrays it was computed from:
    `reference` (the model's reference rows) and `window` (the rows tested, oldest first; it may be
    empty or shorter than min_samples while collecting)."""
    names = list(status["feature_names"])
    charts = feature_charts(reference, window, len(names))
    figures = [_figure(i, name, status, charts[i]) for i, name in enumerate(names)]
    model = f"{status.get('model_name', '?')} v{status.get('model_version', '?')}"
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request: the page asks for nothing
        f"<title>Drift report: {_e(model)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"{_header(status, model)}\n<main>\n{''.join(figures)}</main>\n"
        "<footer>Per feature a two-sample Kolmogorov-Smirnov test of the window against the model's reference "
        "rows; the corrected p-value is compared with the per-feature threshold."
        + (" The overall decision is the combined p-value's (header)." if "multivariate" in status else "")
        + f" Rendered {_e(iso_utc(time.time()))}.</footer>\n"
        "</body></html>\n"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _p(value: float) -> str:
    return f"{value:.3g}"


def _verdict(status: DriftStatus) -> tuple[str, str]:
    if "reason" in status:
        return "collecting", "Collecting samples"
    return ("drift", "Drift detected") if status["drift_detected"] else ("ok", "No drift")


def _header(status: DriftStatus, model: str) -> str:
    css, verdict = _verdict(status)
    first, last = status.get("window_first_row"), status.get("window_last_row")
    rows = f"{first}-{last}" if first is not None else "none"
    threshold = f"{_p(status['threshold'])} (per feature: {_p(status['adjusted_threshold'])})"
    items = [
        ("Model", model),
        ("Run", status.get("run_id", "?")),
        ("Samples", f"{status['samples']} of a {status['window_size']}-row window"),
        ("Window start", status.get("window_started_at", "?")),
        ("Epoch.resets", f"{status.get('window_epoch', '?')}.{status.get('window_resets', '?')}"),
        ("Rows tested (ids)", rows),
        ("Correction", status["correction"]),
        ("Threshold", threshold),
        ("Reference rows", status["reference_samples"]),
        (
            "Labelled rows",
            f"{status.get('labelled_rows', '?')}, {status.get('labelled_rows_since_served', '?')} since this version",
        ),
        ("Checked at", status.get("checked_at", "?")),
    ]
    multivariate = status.get("multivariate")
    if multivariate is not None:
        t2, ranks, dist = multivariate["hotelling_t2"], multivariate["hotelling_t2_scores"], multivariate["mahalanobis"]
        items[8:8] = [
            ("Combined p-value", _p(status.get("combined_p_value", 1.0))),
            ("Hotelling T² (mean)", f"{t2['statistic']:.3g}, p {_p(t2['p_value'])}, {t2['distribution']}"),
            ("T² on normal scores", f"{ranks['statistic']:.3g}, p {_p(ranks['p_value'])}, {ranks['distribution']}"),
            (
                "Mahalanobis distances",
                f"median {dist['window_median']:.3g} vs reference {dist['reference_median']:.3g}, "
                f"p {_p(dist['p_value'])}",
            ),
        ]
    summary = "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in items)
    notes = [CORRECTIONS.get(status["correction"], status["correction"]) + "."]
    if "reason" in status:
        notes.insert(
            0,
            f"{status['reason']}: the window is tested once it holds {status['min_samples']} rows; "
            "the charts show what has arrived so far.",
        )
    elif status["drift_detected"]:
        drifted = ", ".join(status.get("drifted_features", []))
        notes.insert(
            0,
            f"Drifted: {drifted}."
            if drifted
            else "Drifted as a whole: no feature moved enough on its own; the multivariate tests say how.",
        )
    note_html = "".join(f'<p class="note">{_e(n)}</p>' for n in notes)
    legend = (
        f'<p class="note legend"><span class="swatch reference"></span>reference ({status["reference_samples"]} rows) '
        f'<span class="swatch window"></span>window ({status["samples"]} rows), as densities over the same bins</p>'
    )
    return (
        f'<header><h1>Drift report <span class="verdict {css}">{_e(verdict)}</span></h1>'
        f'<dl class="summary">{summary}</dl>{note_html}{legend}</header>'
    )


def _figure(i: int, name: str, status: DriftStatus, svg: str) -> str:
    drift = status["features"].get(f"feature_{i}")
    if drift is None:
        css, decision = "", "not tested yet"
        cells = [("KS", "-"), ("p", "-"), ("p corrected", "-")]
    else:
        css, decision = ("drift", "drift") if drift["drift"] else ("ok", "no drift")
        cells = [
            ("KS", f"{drift['ks_stat']:.3f}"),
            ("p", _p(drift["p_value"])),
            ("p corrected", _p(drift["p_adjusted"])),
        ]
    row = "".join(f"<th>{_e(k)}</th><td>{_e(v)}</td>" for k, v in cells)
    return (
        f'<figure class="feature-chart {css}" data-feature="{_e(name)}">'
        f'<figcaption><h2>{_e(name)}</h2><table class="stats"><tr>{row}'
        f'<th>decision</th><td class="decision {css}">{_e(decision)}</td></tr></table></figcaption>'
        f"{svg}</figure>\n"
    )


def feature_charts(reference: np.ndarray, window: np.ndarray, n_features: int) -> list[str]:
    """One inline `<svg>` per feature: the reference (bars) and the window (line) as densities over
    shared bins. Drawn by matplotlib's SVG backend on a plain Figure (no pyplot, so no GUI backend and
    no global figure registry); text stays text (`svg.fonttype: none`), element ids are salted per
    feature so that several charts can share one page, and no date or creator is written."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    reference = np.asarray(reference, dtype=np.float64)
    window = np.asarray(window, dtype=np.float64)
    charts = []
    with _RENDER_LOCK, matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False}):
        matplotlib.rcParams["axes.spines.right"] = False
        for i in range(n_features):
            matplotlib.rcParams["svg.hashsalt"] = f"drift-feature-{i}"
            fig = Figure(figsize=(5.6, 2.4))  # fixed margins: a layout engine would double the drawing time
            FigureCanvasSVG(fig)
            fig.subplots_adjust(left=0.11, right=0.98, top=0.95, bottom=0.2)
            ax = fig.add_subplot()
            ref = reference[:, i] if reference.size else np.empty(0)
            cur = window[:, i] if window.size else np.empty(0)
            edges = _bins(ref, cur)
            if len(ref):  # one filled outline, not a bar per bin: a third of the SVG and the time
                ax.hist(ref, bins=edges, density=True, histtype="stepfilled", color=REFERENCE_COLOR, alpha=0.45)
            if len(cur):
                ax.hist(cur, bins=edges, density=True, histtype="step", linewidth=1.8, color=WINDOW_COLOR)
            ax.set_xlabel("value")
            ax.set_ylabel("density")
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
            charts.append(_inline(buf.getvalue()))
    return charts


def _bins(*columns: Sequence[float] | np.ndarray) -> list[float]:
    """BINS equal bins over the range of every value (a constant column gets a unit-wide range)."""
    values = np.concatenate([np.asarray(c, dtype=np.float64) for c in columns])
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return [float(v) for v in np.linspace(lo, hi, BINS + 1)]


_ID = re.compile(r' id="([^"]*)"')
_REFERENCE = re.compile(r'(?:url\(#|href="#)([^)"]*)')


def _inline(svg: str) -> str:
    """The `<svg>` element alone, for a page with several of them: no XML declaration or DOCTYPE
    (they do not belong inside HTML) and only the element ids something refers to (clip paths,
    markers: salted per chart); matplotlib's other ids (`axes_1`, ...) would repeat in every chart."""
    start = svg.find("<svg")
    svg = svg[start:].strip() if start >= 0 else svg
    used = set(_REFERENCE.findall(svg))
    return _ID.sub(lambda m: m.group(0) if m.group(1) in used else "", svg)
