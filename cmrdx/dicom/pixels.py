"""Pixel decoding on demand: only the frames asked for, in modality units, bright = high signal.

pydicom decodes uncompressed, deflated and RLE data itself and uses the installed plugins (pylibjpeg with
openjpeg and rle, python-gdcm, pyjpegls) for compressed transfer syntaxes. For a multi-frame object only
the requested frame is decoded (``pydicom.pixels.pixel_array(..., index=i)``). pydicom's complaints while
decoding (a plugin that fails before another succeeds, an invalid Number of Frames, ...) are never printed per
file: a caller that wants them wraps the call in ``capture_read_warnings``; otherwise they are logged at debug level.

Before a decoder sees a frame, the header is checked against the file (``check_frame``): the matrix size and
sample layout must be an image's, the pixel data must hold the frame the header implies, and a compressed image
must have the header's size. A decoder trusts the header: given 65535 x 65535 it allocates gigabytes, and the
gdcm plugin aborts the whole process (a C++ exception through C) on a codestream that disagrees with it. gdcm is
also only used for transfer syntaxes that no other installed plugin decodes.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.pixels import get_decoder, pixel_array

from cmrdx.dicom.pixeldata import (
    MAX_MATRIX_SIDE,
    PixelDataInfo,
    bytes_per_frame,
    codestream_size,
    read_pixel_data_info,
    rle_segments,
    sniff,
)
from cmrdx.dicom.series import SNIFF_BYTES, Frame, capture_read_warnings
from cmrdx.dicom.source import FileRef, UnreadableFileError, stream_size
from cmrdx.errors import PixelDecodeError

log = logging.getLogger(__name__)

# The largest frame decoded: MAX_MATRIX_SIDE a side at 32 bits (a float or 32-bit integer image), 256 MiB. Larger
# frames (colour at 64 bits a sample) are no MR image.
MAX_FRAME_BYTES = MAX_MATRIX_SIDE * MAX_MATRIX_SIDE * 4
_BITS = (1, 8, 16, 32, 64)
RLE = "1.2.840.10008.1.2.5"
DEFLATED = "1.2.840.10008.1.2.1.99"
_LAYOUT_TAGS = ["Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "NumberOfFrames", "PhotometricInterpretation"]
_REEXPORT = "re-export the series from the scanner or PACS (this file's pixel data cannot be used)"


@dataclass(frozen=True)
class _Layout:
    """What the header says the pixel data is, and what the file holds."""

    rows: int
    cols: int
    bits: int
    samples: int
    photometric: str
    transfer_syntax: str
    info: PixelDataInfo | None
    known: bool  # False when the pixel data could not be located (deflated): not checked
    number_of_frames: int | None  # NumberOfFrames when it is a positive whole number


def _int(v: Any) -> int | None:
    try:
        f = float(v) if v is not None and v != "" else None
    except (TypeError, ValueError, OverflowError):
        return None
    return int(f) if f is not None and f == f and abs(f) < 2**53 else None


def _layout(fp: BinaryIO, ref: FileRef) -> _Layout:
    head = fp.read(SNIFF_BYTES)
    why = sniff(head)
    if why is not None:
        raise PixelDecodeError(f"{ref}: {why}", hint=_REEXPORT)
    fp.seek(0)
    preamble = head[128:132] == b"DICM"
    ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not preamble, specific_tags=_LAYOUT_TAGS)
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    implicit, little = ds.original_encoding
    info: PixelDataInfo | None = None
    known = ts != DEFLATED and implicit is not None and little is not None
    if known:
        info = read_pixel_data_info(fp, implicit=bool(implicit), little=bool(little), size=stream_size(fp))
    nof = _int(ds.get("NumberOfFrames")) if "NumberOfFrames" in ds else 1
    return _Layout(rows=_int(ds.get("Rows")) or 0, cols=_int(ds.get("Columns")) or 0,
                   bits=_int(ds.get("BitsAllocated")) or 0, samples=_int(ds.get("SamplesPerPixel")) or 1,
                   photometric=str(ds.get("PhotometricInterpretation", "") or "").strip().upper(),
                   transfer_syntax=ts, info=info, known=known,
                   number_of_frames=nof if nof is not None and nof >= 1 else None)


def _corrupt(ref: FileRef, why: str) -> PixelDecodeError:
    return PixelDecodeError(f"corrupt or truncated pixel data in {ref}: {why}", hint=_REEXPORT)


def check_frame(fp: BinaryIO, ref: FileRef, index: int) -> _Layout:
    """Check that frame ``index`` of the object open at ``fp`` can be handed to a decoder; raise a
    PixelDecodeError naming the file and what is wrong otherwise. Leaves ``fp`` anywhere."""
    lay = _layout(fp, ref)
    r, c = lay.rows, lay.cols
    if r <= 0 or c <= 0:
        raise PixelDecodeError(f"{ref}: Rows x Columns {r} x {c} is no image size (a corrupt header)", hint=_REEXPORT)
    if r > MAX_MATRIX_SIDE or c > MAX_MATRIX_SIDE:
        raise PixelDecodeError(
            f"{ref}: Rows x Columns {r} x {c} is over the {MAX_MATRIX_SIDE} pixels a side cmrdx decodes "
            "(a corrupt header)", hint=_REEXPORT)
    if lay.bits not in _BITS:
        raise PixelDecodeError(f"{ref}: BitsAllocated {lay.bits} is not one of {', '.join(map(str, _BITS))} "
                               "(a corrupt header)", hint=_REEXPORT)
    if not 1 <= lay.samples <= 4:
        raise PixelDecodeError(f"{ref}: SamplesPerPixel {lay.samples} is not 1 to 4 (a corrupt header)", hint=_REEXPORT)
    bpf = bytes_per_frame(r, c, lay.bits, lay.samples, lay.photometric)
    if bpf > MAX_FRAME_BYTES:
        raise PixelDecodeError(f"{ref}: one frame of {r} x {c} x {lay.samples} samples of {lay.bits} bits is over "
                               f"the {MAX_FRAME_BYTES >> 20} MiB cmrdx decodes (a corrupt header)", hint=_REEXPORT)
    if not lay.known:
        return lay
    info = lay.info
    if info is None:
        raise PixelDecodeError(f"{ref}: no pixel data", hint=_REEXPORT)
    if not info.encapsulated:
        need = bpf * (index + 1)
        if info.available < need:
            held = info.available // bpf
            raise _corrupt(ref, f"frame {index + 1} of {r} x {c} x {lay.bits} bits needs {need} bytes of pixel data, "
                                f"the file holds {info.available} ({held} whole frame{'s' if held != 1 else ''})")
        return lay
    if info.fragments is not None and index >= info.fragments:
        raise _corrupt(ref, f"frame {index + 1} is not in the pixel data ({info.fragments} compressed fragments)")
    frag = info.first_fragment
    if lay.transfer_syntax == RLE:
        segments = rle_segments(frag)
        want = lay.samples * (lay.bits // 8 if lay.bits >= 8 else 1)
        if segments is not None and segments != want:
            raise _corrupt(ref, f"the RLE frame has {segments} segments, the header's {lay.samples} sample(s) of "
                                f"{lay.bits} bits make {want}")
        return lay
    size = codestream_size(frag)
    if size is not None and size != (r, c):
        raise _corrupt(ref, f"the header says {r} x {c}, the compressed image is {size[0]} x {size[1]}")
    return lay


def frames_to_decode(lay: _Layout, index: int) -> int:
    """The frame count the decoder is told: the header's, but never more than the pixel data holds (a decoder
    sizes its buffers and checks the data length by it) and never fewer than the frame asked for."""
    n = lay.number_of_frames or 1
    info = lay.info
    if info is not None and info.encapsulated and info.fragments:
        n = min(n, info.fragments) if lay.number_of_frames else info.fragments
    elif info is not None and not info.encapsulated:
        bpf = bytes_per_frame(lay.rows, lay.cols, lay.bits, lay.samples, lay.photometric)
        n = min(n, info.available // bpf) if bpf else n
    return max(n, index + 1)


# Plugins that take the process down on some corrupt data instead of raising an error: gdcm aborts (a C++ exception
# through C), pylibjpeg-rle panics (a Rust panic, printed to stderr, raised as a BaseException). They are used only
# for transfer syntaxes that no other installed plugin decodes.
_LAST_RESORT = {"gdcm": None, "pylibjpeg": RLE}  # plugin -> the transfer syntax it is a last resort for (None: all)


def _plugins(ts: str) -> list[str] | None:
    """Decoding plugins to try for ``ts``, in order (``[""]``: pydicom decodes it itself), or None when no
    installed plugin decodes it. The ``_LAST_RESORT`` plugins only when no other plugin decodes it."""
    try:
        dec = get_decoder(ts) if ts else get_decoder("1.2.840.10008.1.2.1")
    except (NotImplementedError, ValueError, KeyError):
        return None
    if not dec.is_available:
        return None
    avail = list(dec.available_plugins)
    if not avail:
        return [""]
    others = [p for p in avail if not (p in _LAST_RESORT and _LAST_RESORT[p] in (None, ts))]
    return others or avail


def _ts_name(ts: str) -> str:
    try:
        return str(pydicom.uid.UID(ts).name) if ts else "unknown transfer syntax"
    except Exception:  # noqa: BLE001 - a name for a message only
        return ts


def _decode(ref: FileRef, index: int) -> np.ndarray:
    """Frame ``index`` of ``ref`` as stored (checked first), trying each suitable plugin in turn."""
    with ref.open() as fp:
        lay = check_frame(fp, ref, index)
        plugins = _plugins(lay.transfer_syntax)
        if plugins is None:
            raise PixelDecodeError(
                f"{ref}: no installed decoder for its pixel data ({_ts_name(lay.transfer_syntax)})",
                hint="install the pixel-data plugins (`pip install cmrdx` brings pylibjpeg, python-gdcm, pyjpegls)"
                " or re-export the series uncompressed")
        last: BaseException | None = None
        for plugin in plugins:
            fp.seek(0)
            try:
                return np.asarray(pixel_array(fp, index=index, decoding_plugin=plugin,
                                              number_of_frames=frames_to_decode(lay, index)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - plugins raise many types (a Rust panic is a BaseException)
                last = exc
        raise _corrupt(ref, f"{_ts_name(lay.transfer_syntax)} could not be decoded "
                            f"({last.__class__.__name__ if last else 'no plugin'})")


def decode_frame(frame: Frame, photometric: str = "MONOCHROME2") -> np.ndarray:
    """float32 (rows, cols): stored values x slope + intercept, MONOCHROME1 inverted.

    pydicom's warnings while decoding reach an enclosing ``capture_read_warnings`` (as kinds), never the terminal."""
    kinds: list[str] = []
    try:
        with capture_read_warnings() as kinds:
            # A single-frame object is read as frame 0: its NumberOfFrames, if any, is not trusted.
            arr = _decode(frame.ref, frame.index if frame.index is not None else 0)
    except PixelDecodeError:
        raise
    except UnreadableFileError as exc:
        raise PixelDecodeError(f"{frame.ref}: {exc.reason}", hint="check the file") from exc
    except Exception as exc:  # noqa: BLE001 - a header pydicom cannot parse, an I/O error: named, never a traceback
        raise PixelDecodeError(f"{frame.ref}: pixel data could not be read ({exc.__class__.__name__})",
                               hint=_REEXPORT) from exc
    finally:
        if kinds:
            log.debug("%s: %s while decoding", frame.ref.name, ", ".join(sorted(set(kinds))))
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour (e.g. a capture): keep luminance
        arr = arr[..., :3].mean(axis=-1)
    if arr.ndim != 2:
        raise PixelDecodeError(f"{frame.ref}: expected one 2D frame, got shape {arr.shape}")
    slope, intercept = frame.rescale
    out = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows low values bright. Negate (not max-minus-value per frame) so that every frame
        # of a series flips the same way; the recipe's intensity window makes the offset irrelevant.
        out = -out
    return out


def decode_frames(frames: Sequence[Frame], photometric: str = "MONOCHROME2") -> list[np.ndarray]:
    return [decode_frame(f, photometric) for f in frames]


def pixel_digest(ref: FileRef) -> str | None:
    """SHA-256 of the decoded first frame of ``ref`` (shape, type and values), or None when it cannot be decoded:
    two encodings of one image have the same digest."""
    try:
        with capture_read_warnings():
            arr = _decode(ref, 0)
    except Exception:  # noqa: BLE001 - an undecodable copy is compared as different
        return None
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("="))  # big-endian files decode big-endian
    h = hashlib.sha256(f"{arr.shape}{arr.dtype.kind}{arr.dtype.itemsize}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()
