"""``cmrdx synth``: phantom studies with known ground truth (thin over ``cmrdx.synth``)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

app = typer.Typer(help="Synthetic cardiac MR studies with known ground truth.", no_args_is_help=True)


def _findings(items: list[str]) -> dict[str, str]:
    from cmrdx.synth import parse_findings

    out = {}
    for it in items:
        if "=" not in it:
            raise typer.BadParameter(f"{it!r}: use NAME=SEVERITY, e.g. lv_dilation=moderate")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    try:
        return parse_findings(out)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _prevalence(text: str) -> float | dict[str, float]:
    from cmrdx.synth import FINDINGS

    try:
        return float(text)
    except ValueError:
        pass
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in FINDINGS:
            raise typer.BadParameter(f"unknown finding {k!r} in --prevalence; use one of {', '.join(FINDINGS)}")
        out[k.strip()] = float(v)
    return out


def _families(text: str | None, option: str) -> list[str]:
    from cmrdx.synth.variety import parse_families

    try:
        return parse_families(text)
    except ValueError as e:
        raise typer.BadParameter(f"{option}: {e}") from None


def _check_filter(only: list[str], exclude: list[str]) -> None:
    from cmrdx.synth.variety import FamilyFilter

    try:
        FamilyFilter.make(only, exclude)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def _check_compress(c: str | None) -> None:
    if c is not None and c not in ("rle", "jpegls", "j2k"):
        raise typer.BadParameter(f"--compress {c!r}: use rle, jpegls or j2k")


@app.command("study")
def study_cmd(
    out: Path = typer.Argument(..., help="Study folder to write (DICOM/, truth.json, report.txt)."),
    seed: int = typer.Option(..., "--seed", help="Study seed: same seed, same pixels and headers."),
    finding: list[str] = typer.Option([], "--finding", help="NAME=SEVERITY (none|mild|moderate|severe); repeatable."),
    vendor: str = typer.Option(None, "--vendor", help="siemens | ge | philips (drawn from the seed if omitted)."),
    enhanced: bool = typer.Option(False, "--enhanced", help="Enhanced MR multi-frame objects (one file per series)."),
    compress: str = typer.Option(None, "--compress", help="rle | jpegls | j2k (lossless)."),
    prevalence: str = typer.Option("0", "--prevalence", help="Chance each unspecified finding is drawn present."),
    report_style: str = typer.Option(None, "--report-style", help="narrative | structured | terse | telegraphic (held out)."),
    phases: int = typer.Option(None, "--phases", min=2, max=200, help="Cine phases (20-30 drawn if omitted)."),
    matrix: int = typer.Option(None, "--matrix", min=32, max=1024, help="Square matrix size (160-256 drawn if omitted)."),
    no_distractors: bool = typer.Option(False, "--no-distractors", help="Skip localizer, T1 map, flow, TI scout."),
    variety: bool = typer.Option(False, "--variety", help="Randomise every appearance axis (see `cmrdx synth families`)."),
    only_families: str = typer.Option(None, "--only-families", help="Comma-separated families to draw from, e.g. "
                                      "lge:psir,scar:midwall (implies --variety)."),
    exclude_families: str = typer.Option(None, "--exclude-families", help="Comma-separated families never drawn "
                                         "(implies --variety)."),
) -> None:
    """Write one phantom study."""
    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.synth import VENDORS, sample_params, write_study

    if vendor is not None and vendor not in VENDORS:
        raise typer.BadParameter(f"--vendor {vendor!r}: use one of {', '.join(VENDORS)}")
    only, exclude = _families(only_families, "--only-families"), _families(exclude_families, "--exclude-families")
    _check_filter(only, exclude)
    _check_compress(compress)
    check_folder_target(out)
    t0 = time.perf_counter()
    p = sample_params(seed, _findings(finding), vendor=vendor, prevalence=_prevalence(prevalence),
                      report_style=report_style, n_phases=phases, matrix=matrix, variety=variety,
                      only_families=only, exclude_families=exclude)
    w = write_study(out, p, enhanced=enhanced, compress=compress, distractors=not no_distractors)
    con = console()
    present = ", ".join(f"{f}={p.findings[f]}" for f in p.present) or "none"
    con.print(f"[bold]{safe(out)}[/]: {w.n_files} files, {w.n_bytes / 1e6:.1f} MB, {len(w.series)} series "
              f"({p.acq.vendor}), findings: {present} [dim]({time.perf_counter() - t0:.1f} s)[/]")
    if p.variety is not None:
        con.print(f"families: {safe(', '.join(p.families))}")


@app.command("archive")
def archive_cmd(
    out: Path = typer.Argument(..., help="Archive folder (study_0001/..., labels.csv)."),
    n: int = typer.Option(200, "--n", min=1, help="Number of studies."),
    seed: int = typer.Option(0, "--seed", help="Archive seed."),
    prevalence: str = typer.Option("0.3", "--prevalence", help="0.3 for all findings, or lge=0.4,lv_dilation=0.2,..."),
    vendors: str = typer.Option("siemens,ge,philips", "--vendors", help="Comma-separated vendor styles to draw from."),
    report_style: str = typer.Option(None, "--report-style",
                                     help="Comma-separated report styles to draw from (default: the generator's "
                                     "training styles; telegraphic and dictated are held out)."),
    enhanced: bool = typer.Option(False, "--enhanced"),
    compress: str = typer.Option(None, "--compress", help="rle | jpegls | j2k"),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes writing studies in parallel."),
    phases: int = typer.Option(None, "--phases", min=2, max=200),
    matrix: int = typer.Option(None, "--matrix", min=32, max=1024),
    variety: bool = typer.Option(False, "--variety", help="Randomise every appearance axis (see `cmrdx synth families`)."),
    only_families: str = typer.Option(None, "--only-families", help="Comma-separated families to draw from, e.g. "
                                      "scar:midwall (implies --variety): a held-out-family test archive."),
    exclude_families: str = typer.Option(None, "--exclude-families", help="Comma-separated families never drawn "
                                         "(implies --variety): a training archive without them."),
    no_distractors: bool = typer.Option(False, "--no-distractors", help="Skip localizer, T1 map, flow, TI scout."),
) -> None:
    """Write many studies plus labels.csv."""
    from rich.progress import Progress

    from cmrdx.cli.text import console, safe
    from cmrdx.outputs.common import check_folder_target
    from cmrdx.synth import STYLES, VENDORS, write_archive

    vs = [v.strip() for v in vendors.split(",") if v.strip()]
    for v in vs:
        if v not in VENDORS:
            raise typer.BadParameter(f"--vendors: {v!r} is not one of {', '.join(VENDORS)}")
    styles = [s.strip() for s in report_style.split(",") if s.strip()] if report_style else None
    for s in styles or []:
        if s not in STYLES:
            raise typer.BadParameter(f"--report-style: {s!r} is not one of {', '.join(STYLES)}")
    only, exclude = _families(only_families, "--only-families"), _families(exclude_families, "--exclude-families")
    _check_filter(only, exclude)
    _check_compress(compress)
    check_folder_target(out)
    con = console()
    t0 = time.perf_counter()
    with Progress(console=con, transient=True) as prog:
        task = prog.add_task("writing studies", total=n)
        rows = write_archive(out, n, seed, prevalence=_prevalence(prevalence), vendors=vs, report_styles=styles,
                             enhanced=enhanced, compress=compress, workers=workers, n_phases=phases, matrix=matrix,
                             on_done=lambda r: prog.advance(task), variety=variety, only_families=only,
                             exclude_families=exclude, distractors=not no_distractors)
    size = sum(int(r["bytes"]) for r in rows)
    con.print(f"[bold]{safe(out)}[/]: {len(rows)} studies, {size / 1e9:.2f} GB, labels.csv "
              f"[dim]({time.perf_counter() - t0:.0f} s)[/]")


@app.command("families")
def families_cmd() -> None:
    """List the appearance families of the randomised generator (``--variety``), by axis."""
    from cmrdx.cli.text import console
    from cmrdx.synth.variety import AXES, CONDITIONAL

    con = console()
    for axis, vals in AXES.items():
        cond = f" (when {CONDITIONAL[axis]} is present)" if axis in CONDITIONAL else ""
        con.print(f"[bold]{axis}[/]{cond}: " + ", ".join(f"{axis}:{v}" for v in vals))
