"""The DICOM layer: files -> typed Series (headers only), pixels on demand. No torch, no onnxruntime."""

from cmrdx.dicom.scan import ScanResult, scan
from cmrdx.dicom.series import Frame, Series
from cmrdx.dicom.source import FileRef, iter_refs

__all__ = ["FileRef", "Frame", "ScanResult", "Series", "iter_refs", "scan"]
