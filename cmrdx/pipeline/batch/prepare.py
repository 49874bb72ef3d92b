"""The worker side of a batch run, the same for every engine: read a study's files, assemble it and apply the
model's recipe. A study listed by a PACS query (its one "file" is ``pacs://NODE/STUDY_UID``) is read from its node
header-first, only the instances the recipe reads retrieved (``cmrdx.pacs.study.read_pacs_study``). Imports
neither onnxruntime nor torch, so worker processes stay small."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmrdx.errors import CmrdxError
from cmrdx.pacs.config import is_address
from cmrdx.pipeline.batch.discover import exit_with_parent as exit_with_parent  # every engine's worker initializer
from cmrdx.pipeline.batch.discover import file_ref, headers_path


def _study_headers(uid: str, files: Sequence[str], headers: Path):
    """The study's series from discovery's header files (merged across chunks, duplicates dropped), or None."""
    import pickle

    from cmrdx.dicom.scan import ScanResult

    folder = headers_path(headers, uid, 0).parent
    parts = sorted(folder.glob("*.pkl")) if folder.is_dir() else []
    if not parts:
        return None
    keep = set(files)
    merged: dict[tuple[str, str], Any] = {}  # (StudyInstanceUID, SeriesInstanceUID): a series belongs to its study
    for p in parts:
        try:
            chunk = pickle.loads(p.read_bytes())
        except Exception:  # noqa: BLE001 - unreadable: the caller reads the study's headers itself
            return None
        for s in chunk:
            if s.study_uid != uid:
                continue
            s.frames = [f for f in s.frames if str(f.ref) in keep]
            s._geom = None
            key = (s.study_uid, s.uid)
            if key in merged:
                merged[key].frames.extend(s.frames)
                merged[key]._geom = None
            else:
                merged[key] = s
    series = sorted((s for s in merged.values() if s.frames),
                    key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))
    res = ScanResult(root=f"study {uid}", studies={uid: series}, files_scanned=len(files))
    return res


def prepare_study(uid: str, files: Sequence[str], recipe: dict[str, Any], headers: str | None = None,
                  pacs_config: str | None = None) -> dict[str, Any]:
    """Runs in a worker: -> {"uid", "array" (frames, 3, S, S) float32 or None, "meta", "error", "seconds"}.
    With ``headers`` (discovery's header files) no header is read again. A PACS study is read with the nodes of
    ``pacs_config`` (None: ``$CMRDX_PACS_CONFIG``, else ``$CMRDX_HOME/pacs.yaml``); its meta holds what moved
    (``pacs``: instances in the study, needed, from the cache, retrieved, bytes)."""
    from cmrdx.dicom.scan import scan_refs
    from cmrdx.recipe import RecipeParams, apply_recipe
    from cmrdx.study.assemble import assemble_study, inspect_study

    t0 = time.perf_counter()
    pacs: dict[str, Any] | None = None
    try:
        params = RecipeParams.from_dict(recipe)
        if len(files) == 1 and is_address(files[0]):
            from cmrdx.pacs.study import read_pacs_study

            ps = read_pacs_study(files[0], params, config=pacs_config)
            study = ps.study
            pacs = {k: v for k, v in ps.to_dict().items() if k not in ("address", "node")}
        else:
            res = _study_headers(uid, files, Path(headers)) if headers else None
            if res is None:
                res = scan_refs((file_ref(f) for f in files), root=f"study {uid}")
            study = assemble_study(inspect_study(res, uid))
        rr = apply_recipe(study, params)
        warnings_ = list(dict.fromkeys(list(study.manifest.warnings) + [f"recipe: {s}" for s in rr.substitutions]))
        meta = {
            "views_used": {seg: rec.get("view") for seg, rec in rr.used.items()},
            # what findings are assessed on (the bank's ``requires``) and the montage's departures from its recipe
            "views": sorted(study.views),
            "departures": [[d.wanted, d.message] for d in rr.departures],
            "series_used": list(dict.fromkeys(u for rec in rr.used.values() for u in rec.get("series_uids", []))),
            "warnings": warnings_,
            "files_skipped": sum(study.manifest.files_skipped.values()),
        }
        if pacs is not None:
            meta["pacs"] = pacs
        return {"uid": uid, "array": rr.array, "meta": meta, "error": None, "seconds": time.perf_counter() - t0}
    except CmrdxError as exc:
        err = {"type": type(exc).__name__, "message": exc.message}
    except Exception as exc:  # noqa: BLE001 - one bad study never stops the run; its record says why
        err = {"type": type(exc).__name__, "message": str(exc).splitlines()[0][:500] if str(exc) else repr(exc)}
    return {"uid": uid, "array": None, "meta": {}, "error": err, "seconds": time.perf_counter() - t0}
