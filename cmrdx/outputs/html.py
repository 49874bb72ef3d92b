"""A self-contained HTML report: one file, no external assets (images are data URIs, styles and the chart inline).

Shows, in this order: the "not for clinical use" notice (prominent for the bundled demonstration model), the
findings as an inline-SVG chart of scores against thresholds with calls and as a ranked table (with the k-NN vote of
similar labelled studies when there are priors), the draft impression marked DRAFT (with the most similar priors'
impressions), the attribution of each explained finding (view bars, phase curve, region map over key frames) and the
similar prior cases when the result has them, a preview per view
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
.draft{border:2px dashed #b26a00;background:#fffaf0;padding:8px 14px;border-radius:6px}
.draft .mark{display:inline-block;background:#b26a00;color:#fff;font-weight:700;padding:1px 8px;border-radius:3px;
letter-spacing:.04em}.draft p.text{font-size:16px;margin:8px 0}
.why{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;border-top:1px solid #eee;padding:10px 0}
.why h3{width:100%;font-size:15px;margin:0}.why figure{margin:0}.why figcaption{font-size:12px;color:#555;max-width:260px}
.overlay img{width:160px;height:160px;image-rendering:auto;display:inline-block;margin-right:4px;background:#000}
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


def _findings_table(findings: list, votes: dict[str, dict[str, Any]] | None = None,
                    explained: set[str] | None = None) -> str:
    """The ranked findings; ``votes``: the nearest-neighbour vote of similar labelled studies per finding (a column of
    its own, said to be such); ``explained``: findings with an attribution below (linked)."""
    cols = ["#", "finding", "score", "kind", "threshold", "margin", "probability", "call", "why"]
    if votes:
        cols.append("k-NN vote of similar labelled studies (not the zero-shot score)")
    head = "".join(f"<th>{_e(h)}</th>" for h in cols)
    rows = []
    for i, f in enumerate(findings, 1):
        call = f.call + (f" ({f.severity})" if f.severity else "")
        why = "; ".join(([f.reason] if f.reason else []) + list(f.notes))
        link = (f' <a href="#why-{_e(f.id)}">attribution</a>' if explained and f.id in explained else "")
        vote = ""
        if votes:
            v = votes.get(f.id)
            vote = (f'<td class="vote">{v["present"]}/{v["labelled"]} present ({_e(v["call"])})</td>' if v
                    else '<td class="vote">-</td>')
        rows.append(
            f'<tr class="finding-row" data-id="{_e(f.id)}" data-call="{_e(f.call)}"><td class="num">{i}</td>'
            f'<td class="label">{_e(f.label)}</td>'
            f'<td class="num">{f.score:.3f}</td><td>{_e(f.kind)}</td><td class="num">{_fmt(f.threshold)}</td>'
            f'<td class="num">{"-" if f.margin is None else f"{f.margin:+.3f}"}</td>'
            f'<td class="num">{_fmt(f.probability, 2)}</td>'
            f'<td class="call" style="color:{CALL_COLOUR.get(f.call, "#757575")}">{_e(call)}</td>'
            f'<td class="why">{_e(why)}{link}</td>{vote}</tr>')
    return f'<table id="findings"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _impression(result: ClassifyResult) -> str:
    """The draft impression, marked DRAFT, with the impressions of the most similar prior cases beside it."""
    imp = result.impression
    if imp is None:
        return ""
    from cmrdx.zeroshot.impression import DRAFT_MARK, DRAFT_NOTICE

    parts = [f'<div class="draft" id="impression" data-draft="true"><span class="mark">{_e(DRAFT_MARK.upper())}</span>',
             f'<p class="text">{" ".join(_e(x) for x in imp.sentences)}</p>',
             f'<p class="muted">{_e(DRAFT_NOTICE)}</p>']
    sim = result.similar
    if sim is not None and any(c.impression for c in sim.cases):
        items = "".join(f"<li>{_e(c.impression)} <span class=\"muted\">(similarity {c.similarity:.3f})</span></li>"
                        for c in sim.cases if c.impression)
        parts.append(f'<p class="muted">Impressions of the most similar prior cases:</p><ul id="prior-impressions">{items}</ul>')
    parts.append("</div>")
    return "".join(parts)


def _similar(result: ClassifyResult) -> str:
    sim = result.similar
    if sim is None:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("#", "study", "similarity", "report impression", "cmrdx findings"))
    rows = "".join(
        f'<tr class="prior"><td class="num">{c.rank}</td><td><code>{_e(c.source or c.study_uid)}</code></td>'
        f'<td class="num">{c.similarity:.3f}</td><td>{_e(c.impression or "-")}</td>'
        f'<td>{_e(", ".join(c.findings) or "none called present")}</td></tr>' for c in sim.cases)
    notes = "".join(f'<p class="muted">{_e(n)}</p>' for n in sim.notes)
    vote = (f'<p class="muted">The vote beside each finding counts the similar studies labelled with it: '
            f"{_e(sim.VOTE_METHOD)}.</p>" if sim.votes else "")
    return (f'<h2>Similar prior cases</h2><table id="similar"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f"{vote}{notes}")


def view_bars(views: dict[str, float | None], labels: dict[str, str], top: str | None) -> str:
    """Inline SVG: one diverging bar per montage segment (its attribution), axis at zero."""
    vals = [abs(v) for v in views.values() if v is not None]
    scale = max(vals) if vals and max(vals) > 0 else 1.0
    label_w, half, row_h = 150, 90, 18
    width, height = label_w + 2 * half + 70, row_h * len(views) + 8
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="view-bars" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="system-ui,sans-serif" font-size="11" role="img">'
           "<title>score change when each segment of the input is taken away</title>"]
    x0 = label_w + half
    for i, (seg, v) in enumerate(views.items()):
        y = 4 + i * row_h
        weight = ' font-weight="700"' if seg == top else ""
        out.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end"{weight}>{_e(labels.get(seg, seg))}</text>')
        if v is not None:
            w = abs(v) / scale * half
            x = x0 if v >= 0 else x0 - w
            colour = "#c62828" if v >= 0 else "#1565c0"
            out.append(f'<rect class="bar" data-segment="{_e(seg)}" data-value="{v:.6f}" x="{x:.1f}" y="{y + 3}" '
                       f'width="{max(w, 0.5):.1f}" height="{row_h - 6}" fill="{colour}"/>')
            out.append(f'<text x="{x0 + half + 6}" y="{y + 12}" fill="#333">{v:+.3f}</text>')
    out.append(f'<line x1="{x0}" y1="0" x2="{x0}" y2="{height}" stroke="#777"/></svg>')
    return "".join(out)


def phase_curve(values: list[float], centres: list[float]) -> str:
    """Inline SVG: the score change over the cardiac cycle (0 = R wave), with the zero line."""
    if not values:
        return ""
    w, h, pad = 240, 90, 14
    lim = max(max(abs(v) for v in values), 1e-6)

    def xy(c: float, v: float) -> tuple[float, float]:
        return pad + c * (w - 2 * pad), h / 2 - v / lim * (h / 2 - pad)

    pts = [xy(c, v) for c, v in zip(centres, values)]
    pts.append((pad + (w - 2 * pad), pts[0][1]))  # the cycle closes on itself
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="#c62828"/>' for x, y in pts[:-1])
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="phase-curve" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'font-family="system-ui,sans-serif" font-size="10" role="img"><title>score change over the cardiac cycle'
            f'</title><line x1="{pad}" y1="{h / 2}" x2="{w - pad}" y2="{h / 2}" stroke="#999"/>'
            f'<polyline points="{path}" fill="none" stroke="#c62828" stroke-width="1.5"/>{dots}'
            f'<text x="{pad}" y="{h - 2}" fill="#555">R wave</text><text x="{w - pad}" y="{h - 2}" text-anchor="end" '
            f'fill="#555">next R wave</text><text x="{pad}" y="10" fill="#555">{lim:+.3f}</text></svg>')


def overlay_png(image: np.ndarray, grid: list[list[float]], scale: float, edge: int = 160) -> str:
    """A key frame (uint8) with the region map over it: red where the patch supports the score (positive values:
    hiding it lowers the score, showing it alone raises it), blue where it counts against, the more opaque the
    larger the change (``scale``: the change drawn fully opaque)."""
    from PIL import Image

    g = np.asarray(grid, dtype=np.float32)
    big = np.asarray(Image.fromarray(g).resize((edge, edge), Image.Resampling.BILINEAR), dtype=np.float32)
    grey = np.asarray(Image.fromarray(image).resize((edge, edge), Image.Resampling.BICUBIC), dtype=np.float32)
    a = np.clip(np.abs(big) / max(scale, 1e-9), 0.0, 1.0)[..., None] * 0.6
    colour = np.where((big >= 0)[..., None], np.array([220, 30, 30], np.float32), np.array([30, 90, 220], np.float32))
    rgb = grey[..., None] * (1 - a) + colour * a
    buf = BytesIO()
    Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)).save(buf, format="PNG", optimize=True)
    return _data_uri("image/png", buf.getvalue())


def _attribution(result: ClassifyResult) -> str:
    ex = result.explanation
    if ex is None:
        return ""
    calls = {f.id: f for f in result.findings}
    labels = {s["segment"]: f'{s["segment"]} ({s["view"]})' for s in ex.segments}
    cards = []
    for fe in ex.findings:
        f = calls.get(fe.id)
        call = (f.call + (f" ({f.severity})" if f.severity else "")) if f else ""
        figs = [f'<figure><figcaption>views: score change when the segment is taken away (mean of leaving it out '
                f'and of it alone among its role)</figcaption>{view_bars(fe.views, labels, fe.top_segment)}</figure>']
        if fe.phase:
            figs.append(f"<figure><figcaption>phases: score change when a window of {ex.phase_width:.0%} of the cycle "
                        f"is replaced by the mean frame</figcaption>{phase_curve(fe.phase, ex.phase_centres)}</figure>")
        if fe.region is not None and fe.region.images:
            scale = max(abs(x) for row in fe.region.grid for x in row) or 1.0
            imgs = "".join(f'<img class="overlay-img" alt="{_e(fe.region.view)} {_e(lab)} with the region map" '
                           f'title="{_e(lab)}" src="{overlay_png(im, fe.region.grid, scale)}">'
                           for im, lab in zip(fe.region.images, fe.region.frames))
            figs.append(f'<figure class="overlay" data-segment="{_e(fe.region.segment)}">{imgs}<figcaption>regions on '
                        f"{_e(fe.region.view)}: red, the patch supports the score (up to {scale:.3f}: the mean of the score "
                        f"lost when it is hidden and gained when it is shown alone); blue, it counts against; "
                        f"{_e('; '.join(fe.region.frames))}</figcaption></figure>")
        elif fe.region_note:
            figs.append(f'<p class="muted">{_e(fe.region_note)}</p>')
        cards.append(f'<div class="why" id="why-{_e(fe.id)}" data-id="{_e(fe.id)}"><h3>{_e(fe.label)}: score '
                     f'{fe.score:.3f}, {_e(call)}</h3>{"".join(figs)}</div>')
    skipped = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in ex.skipped.items())
    total = ex.timings_ms.get("total_ms", 0.0) / 1000
    return ("<h2>Why: attribution</h2>"
            '<p class="muted">Each number is a change of the finding\'s score when a part of the model\'s input is taken '
            "away or hidden: positive (red) means that part supported the score. It shows what the model used, not "
            "whether the finding is there.</p>" + "".join(cards)
            + (f'<p class="muted">Not explained:</p><ul>{skipped}</ul>' if skipped else "")
            + f'<p class="muted">{ex.n_inputs} perturbed inputs encoded in {total:.1f} s.</p>')


def _previews(result: ClassifyResult, src: StudySource) -> str:
    used_views: dict[Any, tuple[str | None, dict[str, Any]]] = {}
    for name, used in result.views_used.items():  # a view the main recipe and a stream both read: the main's entry
        used_views.setdefault(used.get("view"), (name, used))

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
        _findings_table(result.findings, result.similar.votes if result.similar is not None else None,
                        {fe.id for fe in result.explanation.findings} if result.explanation is not None else None),
        _impression(result),
    ]
    if uncalled:
        parts.append('<p class="muted">"no threshold": the prompt bank holds no threshold for this model, so the score '
                     "is ranked but not called (<code>cmrdx prompts calibrate</code> writes thresholds).</p>")
    parts += [
        _attribution(result),
        _similar(result),
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
