"""One client protocol for both kinds of PACS node; ``open_client(node)`` returns the right one.

Every method raises cmrdx errors only, each naming the node and the fix: SendError (cannot reach the node: a name
that does not resolve, nothing listening, TLS failure, timeout), AssociationRejectedError (association rejected, a
wrong AE title, HTTP 401/403), PacsError (the node answered with an error, or did not hold what was asked),
StoreFailedError (an instance not stored).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cmrdx.pacs.config import PacsNode
from cmrdx.pacs.types import Destination, StoreResult, StudyHit, TransferStats

__all__ = ["Destination", "PacsClient", "StoreResult", "StudyHit", "TransferStats", "open_client"]

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset


class PacsClient(Protocol):
    node: PacsNode

    def echo(self) -> str:
        """Check the node answers (C-ECHO; a QIDO-RS request for DICOMweb). Returns what answered, in words."""
        ...

    def find_studies(self, query: Mapping[str, str]) -> list[StudyHit]:
        """Studies matching ``query`` (DICOM keywords -> matching values: ``StudyDate=20260101-20260131``,
        ``ModalitiesInStudy=MR``, ``StudyInstanceUID=...``). Every match, in the node's order."""
        ...

    def study_headers(self, study_uid: str, dest: Destination) -> tuple[list[Dataset], list[Path]]:
        """Every instance's header of the study, without pixel data: one data set per instance with at least the
        elements of ``cmrdx.dicom.series.HEADER_KEYWORDS`` the instance holds. Instances whose headers a query
        cannot carry (Enhanced multi-frame objects over DIMSE: their functional-group sequences) may be retrieved
        whole instead: written via ``dest`` and listed in the second element (their headers are read from the
        files). Raises PacsError when the node does not hold the study."""
        ...

    def retrieve(self, study_uid: str, instances: Sequence[tuple[str, str]], dest: Destination) -> TransferStats:
        """Retrieve ``instances`` ((SeriesInstanceUID, SOPInstanceUID) pairs) of the study, each written as a DICOM
        file (with file meta) at ``dest(sop_uid)``, atomically. Raises PacsError when one is not retrieved."""
        ...

    def store(self, paths: Sequence[Path]) -> list[StoreResult]:
        """Store DICOM files on the node (STOW-RS or C-STORE); one result per file, never raises for a file the
        node refused (the result says why); raises for an unreachable node or a rejected association."""
        ...

    def close(self) -> None: ...


def open_client(node: PacsNode) -> PacsClient:
    """The client for ``node`` (DICOMweb or DIMSE). Nothing is connected until a method is called."""
    if node.dicomweb:
        from cmrdx.pacs.dicomweb import DicomwebClient

        return DicomwebClient(node)
    from cmrdx.pacs.dimse import DimseClient

    return DimseClient(node)
