"""A study on a PACS, read header-first: the series' headers are queried, roles and views are decided from them
exactly as for a folder, and only the instances the model's recipe reads are retrieved (into the instance cache).

``pacs://NODE/STUDY_UID`` -> headers (WADO-RS metadata, or C-FIND at image level) -> ``scan_datasets`` ->
``inspect_study`` / ``assemble_study`` (the same code as for files) -> the recipe's plan -> the instances the plan
reads, retrieved unless cached -> a ``Study`` whose pixels are read from the cache.

A cine short-axis stack of 12 slices x 25 phases is 300 images; the recipe reads the middle slice's phases and
one phase of each slice (~36): most of a study never crosses the network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cmrdx.pacs.cache import InstanceCache
from cmrdx.pacs.client import PacsClient, TransferStats, open_client
from cmrdx.pacs.config import PacsAddress, PacsNode, get_node, parse_address

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

    from cmrdx.dicom.source import FileRef
    from cmrdx.recipe import RecipeParams
    from cmrdx.study.assemble import StudyInspection
    from cmrdx.study.types import Study


@dataclass
class PacsStudy:
    """A study read from a PACS: its inspection (headers, roles, views) and assembled ``study``, the header data
    sets by file reference (for outputs that cite every instance, such as the SR), and what moved."""

    address: PacsAddress
    node: PacsNode
    inspection: StudyInspection
    study: Study
    headers: dict[FileRef, Dataset]
    instances: int  # instances in the study, as the headers listed them
    needed: int = 0  # instances the recipe (and any output asked for) reads
    from_cache: int = 0  # of those, already in the cache
    fetched: TransferStats = field(default_factory=TransferStats)
    headers_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"address": str(self.address), "node": self.node.describe(), "instances_in_study": self.instances,
                "instances_needed": self.needed, "instances_from_cache": self.from_cache,
                "instances_retrieved": self.fetched.instances, "bytes_retrieved": self.fetched.bytes,
                "requests": self.fetched.requests, "headers_seconds": round(self.headers_seconds, 3),
                "retrieve_seconds": round(self.fetched.seconds, 3)}


def _address(address: str | PacsAddress) -> PacsAddress:
    return address if isinstance(address, PacsAddress) else parse_address(address)


def inspect_pacs_study(
    address: str | PacsAddress, *, config: str | os.PathLike[str] | None = None, client: PacsClient | None = None,
    cache: InstanceCache | None = None,
) -> PacsStudy:
    """Headers of the study on its node -> series with roles and views (nothing retrieved but objects whose headers a
    query cannot carry). The returned PacsStudy's ``study`` is assembled; its pixels are not yet fetched."""
    from cmrdx.dicom.scan import scan_datasets
    from cmrdx.dicom.series import read_series_header
    from cmrdx.dicom.source import FileRef
    from cmrdx.study.assemble import assemble_study, inspect_study

    addr = _address(address)
    node = client.node if client is not None else get_node(addr.node, config)
    cache = cache or InstanceCache.default()
    own = client is None
    cl = client or open_client(node)
    try:
        t0 = time.perf_counter()
        datasets, whole = cl.study_headers(addr.study_uid, cache.path)
        pairs: list[tuple[Dataset, FileRef]] = []
        headers: dict[FileRef, Dataset] = {}
        for ds in datasets:
            ref = FileRef(str(cache.path(str(ds.get("SOPInstanceUID", "") or ""))))
            pairs.append((ds, ref))
            headers[ref] = ds
        for path in whole:  # objects retrieved whole (their headers are read from them, as from any file)
            ref = FileRef(str(path))
            whole_ds, _why = read_series_header(ref)
            if whole_ds is not None:
                pairs.append((whole_ds, ref))
        res = scan_datasets(pairs, root=str(addr))
        headers_s = time.perf_counter() - t0
    finally:
        if own:
            cl.close()
    insp = inspect_study(res, addr.study_uid)
    return PacsStudy(address=addr, node=node, inspection=insp, study=assemble_study(insp, require_cine=False),
                     headers=headers, instances=len(pairs), headers_seconds=headers_s)


def _sop_of(ref: FileRef, headers: dict[FileRef, Dataset]) -> tuple[str, str] | None:
    ds = headers.get(ref)
    if ds is None:
        return None  # retrieved whole with the headers: already in the cache
    return str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))


def fetch(ps: PacsStudy, refs: Iterable[FileRef], *, client: PacsClient | None = None,
          cache: InstanceCache | None = None) -> TransferStats:
    """Retrieve the objects ``refs`` of ``ps`` that are not cached yet; returns what moved (added to ``ps``)."""
    cache = cache or InstanceCache.default()
    wanted: list[tuple[str, str]] = []
    uids: list[str] = []
    for ref in refs:
        key = _sop_of(ref, ps.headers)
        if key is None:
            continue
        uids.append(key[1])
        if not cache.has(key[1]):
            wanted.append(key)
    ps.needed += len(uids)
    ps.from_cache += len(uids) - len(wanted)
    stats = TransferStats()
    if wanted:
        own = client is None
        cl = client or open_client(ps.node)
        try:
            stats = cl.retrieve(ps.address.study_uid, wanted, cache.path)
        finally:
            if own:
                cl.close()
    cache.touch(uids)
    cache.evict(keep=uids)
    ps.fetched.add(stats)
    return stats


def recipe_refs(study: Study, recipe: RecipeParams) -> list[FileRef]:
    """The objects the recipe reads from ``study``: the main recipe's, then those its streams read besides (each
    once, in plan order)."""
    from cmrdx.recipe import montage_plan, plan_refs

    out: dict[FileRef, None] = {}
    for part in (recipe.main, *recipe.streams):
        for ref in plan_refs(study, montage_plan(part, study.views)):
            out.setdefault(ref, None)
    return list(out)


def view_refs(study: Study, keys: Sequence[str] | None = None) -> list[FileRef]:
    """Every object of the assembled views ``keys`` (default all): what a report showing the views reads."""
    out: dict[FileRef, None] = {}
    for key, v in study.views.items():
        if keys is None or key in keys:
            for ref in v.image_refs(range(v.n_slices), range(v.n_phases)):
                out.setdefault(ref, None)
    return list(out)


def read_pacs_study(
    address: str | PacsAddress, recipe: RecipeParams | str = "cmrclip-v1", *,
    config: str | os.PathLike[str] | None = None, client: PacsClient | None = None,
    cache: InstanceCache | None = None, all_views: bool = False, require_cine: bool = True,
) -> PacsStudy:
    """Read a study from its PACS for the model: headers, roles and views, then only the instances the recipe reads
    (with ``all_views``, every instance of the assembled views, for outputs that show them). Raises the errors of
    a folder read (NoCineError, NoMRError, ...) and those of the PACS clients."""
    from cmrdx.recipe import get_recipe
    from cmrdx.study.assemble import assemble_study

    cache = cache or InstanceCache.default()
    params = get_recipe(recipe) if isinstance(recipe, str) else recipe
    ps = inspect_pacs_study(address, config=config, client=client, cache=cache)
    if require_cine and not any(k.startswith("cine:") for k in ps.study.views):
        assemble_study(ps.inspection)  # raises the folder path's NoCineError, saying what the study holds
    refs = view_refs(ps.study) if all_views else recipe_refs(ps.study, params)
    fetch(ps, refs, client=client, cache=cache)
    return ps

