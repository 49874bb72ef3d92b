"""Pixel decoding on demand: only the frames asked for, in modality units, bright = high signal.

pydicom decodes uncompressed, deflated and RLE data itself and uses the installed plugins (pylibjpeg with
openjpeg and rle, python-gdcm, pyjpegls) for compressed transfer syntaxes. For a multi-frame object only
the requested frame is decoded (``pydicom.pixels.pixel_array(..., index=i)``). pydicom's complaints while
decoding (a plugin that fails before another succeeds, an invalid Number of Frames, ...) are never printed per
file: a caller that wants them wraps the call in ``capture_read_warnings``; otherwise they are logged at debug level.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from pydicom.pixels import pixel_array

from cmrdx.dicom.series import Frame, capture_read_warnings
from cmrdx.errors import PixelDecodeError

log = logging.getLogger(__name__)


def decode_frame(frame: Frame, photometric: str = "MONOCHROME2") -> np.ndarray:
    """float32 (rows, cols): stored values x slope + intercept, MONOCHROME1 inverted.

    pydicom's warnings while decoding reach an enclosing ``capture_read_warnings`` (as kinds), never the terminal."""
    kinds: list[str] = []
    try:
        with frame.ref.open() as fp, capture_read_warnings() as kinds:
            arr = pixel_array(fp, index=frame.index) if frame.index is not None else pixel_array(fp)
    except Exception as exc:  # pydicom raises many types for missing plugins and corrupt data
        raise PixelDecodeError(
            f"{frame.ref}: pixel data could not be decoded ({exc.__class__.__name__}: {exc})",
            hint="install the pixel-data plugins (`pip install cmrdx` brings pylibjpeg, python-gdcm, pyjpegls)"
            " or re-export the series uncompressed",
        ) from exc
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
