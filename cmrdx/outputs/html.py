"""A self-contained HTML report: one file, no external assets (images are data URIs, styles and the chart inline).

Shows, in this order: the "not for clinical use" notice (prominent for the bundled demonstration model), the
findings as an inline-SVG chart of scores against thresholds with calls and as a ranked table, a preview per view
(cine: an animated image of the slice the model used, or the middle one; LGE: the stack as a strip of slices),
the series used and skipped with reasons, warnings, and the model's and banks' identity.

No patient identifiers: nothing from the patient module is read, and the source path (which may name a patient)
is left out. Previews are encoded with Pillow: animated WebP (a fifth the size of GIF/APNG on noisy MR frames;
every current browser shows it), still PNG for LGE strips.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmrdx import __version__
from cmrdx.errors import CmrdxError
from cmrdx.outputs.common import (
    DEMO_NOTICE,
    RESEARCH_NOTICE,
    StudySource,
    as_source,
    check_target,
    is_demo_model,
    write_atomic,
)

if TYPE_CHECKING:  # pragma: no cover
    from cmrdx.pipeline.classify import ClassifyResult
    from cmrdx.study.types import StudyView

PREVIEW_PX = 160  # longest edge of a preview frame; larger matrices are downsampled
STRIP_PX = 112  # edge of one LGE slice in the strip
VIEW_ORDER = ("SAX", "2CH", "3CH", "4CH", "LVOT", "LAX")
CALL_COLOUR = {"present": "#c62828", "absent": "#2e7d32", "uncertain": "#ef8f00", "no threshold": "#757575",
               "not assessable": "#757575"}
KIND_AXIS = {"mean-cosine": "mean cosine similarity with the finding's prompts",
             "softmax": "softmax probability, positive vs negative prompts"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;
color:#1b1b1b;background:#fff}
h1{font-size:22px;margin:8px 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.notice{background:#fff3cd;border:2px solid #d39e00;padding:10px 14px;font-weight:600;border-radius:6px}
.atypical{background:#fdecea;border:2px solid #c62828;color:#8e0000;padding:10px 14px;font-weight:700;border-radius:6px}
.muted{color:#666;font-size:13px}table{border-collapse:collapse;width:100%;font-size:14px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eee;vertical-align:top}th{background:#f6f6f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}.call{font-weight:700}
.views{display:flex;flex-wrap:wrap;gap:14px}.view{margin:0;width:200px}.view.strip{width:100%}.view img{width:200px;height:auto;image-rendering:auto;
background:#000;display:block}.view figcaption{font-size:13px;margin-top:3px}
.strip{overflow-x:auto;max-width:100%}.view.strip img{width:auto;height:140px}
.used{color:#1565c0;font-weight:600}code{font-size:12px;word-break:break-all}
ul.warn li{color:#8a5300}
"""

# Marks each preview that the browser decoded (data-loaded) so a headless check can read it from the DOM.
SCRIPT = """
window.addEventListener('load',function(){var n=0;document.querySelectorAll('img.preview').forEach(function(i){
if(i.complete&&i.naturalWidth>0){i.dataset.loaded='1';n++;}});document.body.dataset.previewsLoaded=String(n);});
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


# --------------------------------------------------------------------------------------------------------------
# Previews


def _to_u8(a: np.ndarray) -> np.ndarray:
    """float frames -> uint8 with a robust window (1st..99.5th percentile of the frames shown)."""
    lo, hi = np.percentile(a, [1.0, 99.5]) if a.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    return (np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _image(u8: np.ndarray, edge: int):
    from PIL import Image

    im = Image.fromarray(u8)
    h, w = u8.shape
    scale = min(1.0, edge / max(h, w))
    if scale < 1.0:
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return im


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def cine_preview(view: StudyView, slice_index: int | None = None) -> str:
    """An animated preview (data URI) of one slice of a cine view over all its phases."""
    from PIL import features

    s = view.n_slices // 2 if slice_index is None else int(slice_index)
    frames = _to_u8(view.pixels([s])[0])  # (P, H, W)
    imgs = [_image(f, PREVIEW_PX) for f in frames]
    step = (view.rr_interval / view.n_phases) if view.rr_interval and view.n_phases else 40.0
    ms = int(min(120.0, max(20.0, step)))  # real time where the RR is known, kept watchable
    buf = BytesIO()
    if features.check("webp"):
        imgs[0].save(buf, format="WEBP", save_all=True, append_images=imgs[1:], duration=ms, loop=0, quality=80)
        return _data_uri("image/webp", buf.getvalue())
    imgs[0].save(buf, format="PNG", save_all=True, append_images=imgs[1:], duration=ms, loop=0)  # APNG
    return _data_uri("image/png", buf.getvalue())


def strip_preview(view: StudyView) -> str:
    """A still strip (data URI, PNG) of every slice of a view side by side, apex to base as stored."""
    from PIL import Image

    a = view.pixels(None, [0])[:, 0]  # (S, H, W)
    tiles = [_image(f, STRIP_PX if len(a) > 1 else PREVIEW_PX) for f in _to_u8(a)]
    w = sum(t.width for t in tiles) + 2 * (len(tiles) - 1)
    strip = Image.new("L", (w, max(t.height for t in tiles)), 0)
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 2
    buf = BytesIO()
    strip.save(buf, format="PNG", optimize=True)
    return _data_uri("image/png", buf.getvalue())


# --------------------------------------------------------------------------------------------------------------
# Chart


def findings_chart(findings: list, kind: str) -> str:
    """Inline SVG: one row per finding (in the given, ranked order), a bar for the score, a tick for the threshold,
    the call at the right. Scores of one kind only (different kinds have different scales)."""
    rows = [f for f in findings if f.kind == kind]
    if not rows:
        return ""
    vals = [0.0] + [f.score for f in rows] + [f.threshold for f in rows if f.threshold is not None]
    if kind == "softmax":
        lo, hi = 0.0, 1.0
    else:
        lo, hi = min(vals), max(vals)
        pad = max(0.02, 0.08 * (hi - lo))
        lo, hi = np.floor((lo - pad) * 20) / 20, np.ceil((hi + pad) * 20) / 20
    label_w, bar_w, call_w, row_h, top = 230, 520, 170, 26, 26
    width, height = label_w + bar_w + call_w, top + row_h * len(rows) + 40

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * bar_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="system-ui,sans-serif" font-size="13">',
           f'<title>{_e(KIND_AXIS.get(kind, kind))}: score per finding, threshold as a black tick</title>']
    step = next(st for st in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0) if (hi - lo) / st <= 8)
    ticks = np.arange(np.ceil(lo / step - 1e-9) * step, hi + 1e-9, step)  # round numbers, not linspace's 0.17
    ticks = np.round(ticks, 6) + 0.0  # + 0.0: no "-0.00" label
    for t in ticks:
        out.append(f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{height - 36}" stroke="#e3e3e3"/>'
                   f'<text x="{x(t):.1f}" y="{height - 22}" text-anchor="middle" fill="#555">{t:.2f}</text>')
    out.append(f'<text x="{label_w + bar_w / 2:.0f}" y="{height - 6}" text-anchor="middle" fill="#333">'
               f'{_e(KIND_AXIS.get(kind, kind))}</text>')
    x0 = x(0.0)
    for i, f in enumerate(rows):
        y = top + i * row_h
        colour = CALL_COLOUR.get(f.call, "#757575")
        xa, xb = sorted((x0, x(f.score)))
        call = f.call + (f" ({f.severity})" if f.severity else "")
        out.append(f'<g class="finding" data-id="{_e(f.id)}" data-call="{_e(f.call)}">'
                   f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_e(f.label)}</text>'
                   f'<rect x="{xa:.1f}" y="{y + 5}" width="{max(1.0, xb - xa):.1f}" height="{row_h - 10}" fill="{colour}" '
                   f'opacity="0.85"><title>{_e(f.label)}: score {f.score:.3f}</title></rect>')
        if f.threshold is not None:
            xt = x(f.threshold)
            out.append(f'<line x1="{xt:.1f}" y1="{y + 1}" x2="{xt:.1f}" y2="{y + row_h - 1}" stroke="#000" stroke-width="2">'
                       f'<title>threshold {f.threshold:.3f}</title></line>')
        out.append(f'<text x="{label_w + bar_w + 10}" y="{y + 17}" fill="{colour}" font-weight="700">{_e(call)}</text></g>')
    out.append(f'<line x1="{x0:.1f}" y1="{top - 4}" x2="{x0:.1f}" y2="{height - 36}" stroke="#999"/></svg>')
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# Page


def _typicality_banner(typ: dict[str, Any]) -> str:
    """A banner when the study is unlike the model's training studies (or when nobody can tell)."""
    if typ.get("status") == "atypical":
        return (f'<p class="atypical" id="typicality" data-status="atypical">Atypical study: {_e(typ.get("reason"))} '
                "Calls are shown as uncertain: the model has not seen studies like this one.</p>")
    if typ.get("status") == "unknown":
        return f'<p class="muted" id="typicality" data-status="unknown">Typicality unknown: {_e(typ.get("reason"))}</p>'
    return ""


def _findings_table(findings: list) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("#", "finding", "score", "kind", "threshold", "margin", "probability", "call",
                                             "why"))
    rows = []
    for i, f in enumerate(findings, 1):
        call = f.call + (f" ({f.severity})" if f.severity else "")
        why = "; ".join(([f.reason] if f.reason else []) + list(f.notes))
        rows.append(
            f'<tr class="finding-row" data-id="{_e(f.id)}" data-call="{_e(f.call)}"><td class="num">{i}</td>'
            f'<td class="label">{_e(f.label)}</td>'
            f'<td class="num">{f.score:.3f}</td><td>{_e(f.kind)}</td><td class="num">{_fmt(f.threshold)}</td>'
            f'<td class="num">{"-" if f.margin is None else f"{f.margin:+.3f}"}</td>'
            f'<td class="num">{_fmt(f.probability, 2)}</td>'
            f'<td class="call" style="color:{CALL_COLOUR.get(f.call, "#757575")}">{_e(call)}</td>'
            f'<td class="why">{_e(why)}</td></tr>')
    return f'<table id="findings"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _previews(result: ClassifyResult, src: StudySource) -> str:
    used_views = {rec.get("view"): (seg, rec) for seg, rec in result.views_used.items()}

    def order(k: str) -> tuple:
        role, view = k.split(":")
        return (0 if role == "cine" else 1, VIEW_ORDER.index(view) if view in VIEW_ORDER else 99)

    figs = []
    for key in sorted(src.study.views, key=order):
        v = src.study.views[key]
        seg, rec = used_views.get(key, (None, {}))
        mark = f' <span class="used">model input ({_e(seg)})</span>' if seg else ""
        try:
            if v.role == "cine":
                sl = rec.get("slices") or [v.n_slices // 2]
                uri, what = cine_preview(v, sl[len(sl) // 2]), f"slice {sl[len(sl) // 2] + 1}/{v.n_slices}, {v.n_phases} phases"
                cls = "view"
            else:
                uri, what = strip_preview(v), f"{v.n_slices} slice{'s' if v.n_slices != 1 else ''}"
                cls = "view strip" if v.n_slices > 1 else "view"
        except CmrdxError as exc:  # e.g. a view the model did not use, in a codec this install cannot decode
            figs.append(f'<figure class="view" data-view="{_e(key)}"><figcaption><b>{_e(key)}</b> preview unavailable: '
                        f'{_e(exc.message)}{mark}</figcaption></figure>')
            continue
        alt = f"{key} preview"
        figs.append(f'<figure class="{cls}" data-view="{_e(key)}"><img class="preview" alt="{_e(alt)}" src="{uri}">'
                    f'<figcaption><b>{_e(key)}</b> {_e(what)}{mark}</figcaption></figure>')
    return f'<div class="views">{"".join(figs)}</div>'


def _series_table(result: ClassifyResult, src: StudySource) -> str:
    model_input = set(result.series_used)
    rows = []
    for d in src.study.manifest.decisions:
        status = ("model input" if d.series_uid in model_input else f"in {d.used_as}") if d.used_as else "skipped"
        rows.append(f'<tr class="{"used" if d.used_as else "skipped"}-series"><td class="num">{_e(d.series_number or "")}</td>'
                    f'<td>{_e(d.description)}</td><td>{_e(d.role)}{(" " + _e(d.view)) if d.view else ""}</td>'
                    f'<td>{_e(status)}</td><td>{_e(d.reason)}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("#", "description", "role / view", "status", "reason"))
    return f'<table id="series"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_report(result: ClassifyResult, source: StudySource | str | os.PathLike[str], *,
                  now: dt.datetime | None = None) -> str:
    """The report as one HTML string (UTF-8, self-contained)."""
    src = as_source(source, result)
    demo = is_demo_model(result)
    when = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    kinds = list(dict.fromkeys(f.kind for f in result.findings))
    charts = "".join(f"<figure>{findings_chart(result.findings, k)}</figure>" for k in kinds)
    m = result.model
    banks = "".join(f"<li>{_e(b['name'])} {_e(b['version'])} <code>sha256 {_e(b['sha256'])}</code></li>" for b in result.banks)
    warnings = "".join(f"<li>{_e(w)}</li>" for w in result.warnings) or "<li>none</li>"
    uncalled = any(f.call == "no threshold" for f in result.findings)
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        # Nothing may be fetched: the report must open the same offline and years later.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>cmrdx report - study {_e(result.study_uid)}</title><style>{CSS}</style></head><body>",
        "<h1>cmrdx zero-shot CMR findings</h1>",
        f'<p class="muted">study <code>{_e(result.study_uid)}</code> &middot; generated {_e(when)} by cmrdx {_e(__version__)}</p>',
        f'<p class="notice" id="notice">{_e(DEMO_NOTICE + " " if demo else "")}{_e(RESEARCH_NOTICE)}</p>',
        _typicality_banner(result.typicality),
        "<h2>Findings</h2>",
        '<p class="muted">Ranked by calibrated probability, else by margin over the threshold, else by score. '
        "Bars: score; black tick: this model's threshold; colour: the call.</p>",
        charts,
        _findings_table(result.findings),
    ]
    if uncalled:
        parts.append('<p class="muted">"no threshold": the prompt bank holds no threshold for this model, so the score '
                     "is ranked but not called (<code>cmrdx prompts calibrate</code> writes thresholds).</p>")
    parts += [
        "<h2>Views</h2>", _previews(result, src),
        "<h2>Series</h2>",
        f'<p class="muted">{len(result.series_used)} series fed the model; {len(result.skipped_series)} skipped.</p>',
        _series_table(result, src),
        f'<h2>Warnings</h2><ul class="warn" id="warnings">{warnings}</ul>',
        "<h2>Model and prompt banks</h2>",
        f'<ul id="identity"><li>model <b>{_e(m.get("name"))}</b> {_e(m.get("version"))} '
        f'<code>sha256 {_e(m.get("sha256"))}</code>; recipe {_e(m.get("recipe"))}; licence {_e(m.get("licence"))}</li>'
        f"{banks}<li>device {_e(result.device)}</li></ul>",
        f"<script>{SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(result: ClassifyResult, source: StudySource | str | os.PathLike[str],
                 path: str | os.PathLike[str]) -> Path:
    """Render the report and write it atomically to ``path``."""
    check_target(path)
    return write_atomic(path, render_report(result, source))
