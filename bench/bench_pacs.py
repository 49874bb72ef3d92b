"""A study classified from a PACS against the same study from a folder, on one machine, in one process.

    .venv/bin/python bench/bench_pacs.py [--repeat 5]

Starts a real Orthanc (Debian packages orthanc, orthanc-dicomweb) on free ports with the example study, then times
``cmrdx.classify`` (model loaded once, warm) on the folder and on ``pacs://NODE/UID`` over DICOMweb and DIMSE with a
cold instance cache (every needed instance retrieved) and a warm one (nothing retrieved), interleaved so that the
ratios share the machine's state. Also: instances and bytes retrieved against the whole study, and, when the
listener exists, the time from the last instance a PACS sends to ``cmrdx listen`` until its SR is in the PACS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLE = ROOT / "examples" / "phantom-study"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "pacs.md"))
    args = ap.parse_args()
    sys.path[:0] = [str(HERE), str(ROOT / "tests")]
    from machine import cpu_name

    from cmrdx.pipeline.classify import classify
    from helpers.orthanc import Orthanc, write_pacs_config

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        os.environ["CMRDX_HOME"] = str(t / "home")
        (t / "orthanc").mkdir()
        pacs = Orthanc(t / "orthanc").start()
        pacs.add_modality("cmrdx", "CMRDX", "127.0.0.1", 11112)  # a PACS answers the AE titles it knows
        try:
            pacs.upload_tree(EXAMPLE / "DICOM")
            cfg = write_pacs_config(pacs, t / "pacs.yaml")
            uid = classify(EXAMPLE, device="cpu").study_uid  # warm: model, prompt embeddings
            study_bytes = sum(p.stat().st_size for p in (EXAMPLE / "DICOM").rglob("*") if p.is_file())
            n_files = sum(1 for p in (EXAMPLE / "DICOM").rglob("*") if p.is_file())
            runs: dict[str, list[float]] = {}
            moved: dict[str, dict] = {}
            for k in range(args.repeat):
                for name, src, cold in (("folder", str(EXAMPLE), False), ("DICOMweb, cold cache", "web", True),
                                        ("DICOMweb, warm cache", "web", False), ("DIMSE C-FIND/C-GET, cold cache", "dimse", True),
                                        ("DIMSE C-FIND/C-GET, warm cache", "dimse", False)):
                    if cold:  # a fresh instance cache: every needed instance crosses the network
                        os.environ["CMRDX_HOME"] = str(t / f"home-{name[:5]}-{k}")
                    path = src if name == "folder" else f"pacs://{src}/{uid}"
                    t0 = time.perf_counter()
                    res = classify(path, device="cpu", pacs_config=cfg)
                    runs.setdefault(name, []).append(time.perf_counter() - t0)
                    if res.pacs:
                        moved[name] = res.pacs
            latency = _listen_latency(pacs, t, cfg) if _has_listener() else None
        finally:
            pacs.stop()
    base = statistics.median(runs["folder"])
    lines = [
        "## A study from a PACS (Orthanc) against the same study from a folder",
        "",
        f"Command: `.venv/bin/python bench/bench_pacs.py --repeat {args.repeat}` · {cpu_name()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()} · Orthanc 1.10 on the same machine (loopback), the example study "
        f"({n_files} instances, {study_bytes / 1e6:.1f} MB), default model on the CPU, loaded once; median of "
        f"{args.repeat} interleaved runs.",
        "",
        "| source | classify (s) | vs folder | instances retrieved | MB retrieved | of the study's bytes |",
        "|---|---|---|---|---|---|",
    ]
    for name, ts in runs.items():
        m = statistics.median(ts)
        p = moved.get(name, {})
        if name == "folder":
            lines.append(f"| {name} | {m:.2f} | 1.00 | - | - | - |")
            continue
        got = p.get("instances_retrieved", 0)
        b = p.get("bytes_retrieved", 0)
        lines.append(f"| {name} | {m:.2f} | {m / base:.2f} | {got} of {p.get('instances_in_study')} "
                     f"(needed {p.get('instances_needed')}) | {b / 1e6:.2f} | {100 * b / study_bytes:.0f}% |")
    if latency is not None:
        lines += ["", f"`cmrdx listen`: from the last instance Orthanc sent (C-STORE, `/modalities/.../store`) to the "
                      f"SR found in Orthanc: **{latency:.1f} s** (quiet period 2 s included)."]
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def _has_listener() -> bool:
    try:
        import cmrdx.pacs.listen  # noqa: F401
    except ImportError:
        return False
    return True


def _listen_latency(pacs, t: Path, cfg: Path) -> float | None:
    """Seconds from the end of Orthanc's C-STORE of the example study to ``cmrdx listen`` to its SR in Orthanc."""
    import threading

    from cmrdx.pacs.config import get_node
    from cmrdx.pacs.listen import Listener
    from helpers.orthanc import free_port

    port = free_port()
    uid_ids = pacs.find("Study", {})
    study_id = uid_ids[0]
    study_uid = pacs.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
    lst = Listener(spool=t / "spool", out=t / "out", aet="CMRDX", port=port, allowed_aets={pacs.aet},
                   forward=get_node("dimse", cfg), quiet_seconds=2.0, max_spool_bytes=1 << 30)
    th = threading.Thread(target=lst.serve, daemon=True)
    th.start()
    try:
        pacs.add_modality("bench-listen", "CMRDX", "127.0.0.1", port)
        before = len(pacs.find("Series", {"StudyInstanceUID": study_uid, "Modality": "SR"}))
        import json

        pacs.request("POST", "/modalities/bench-listen/store", json.dumps({"Resources": [study_id], "Synchronous": True}).encode())
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 300:
            if len(pacs.find("Series", {"StudyInstanceUID": study_uid, "Modality": "SR"})) > before:
                return time.perf_counter() - t0
            time.sleep(0.1)
        return None
    finally:
        lst.stop()
        th.join(30)


if __name__ == "__main__":
    main()
