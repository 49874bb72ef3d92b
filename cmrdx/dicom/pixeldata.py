"""What a file's bytes can hold, checked before any header value is trusted with work or memory.

A header's NumberOfFrames, Rows, Columns and BitsAllocated say how much pixel data there should be; the file says how
much there is. The reader never builds more frames than the pixel data holds, and the decoder never sees a frame
whose pixel data is shorter than the header implies or whose compressed image has another size than the header's:
a decoder given such a frame allocates what the header claims (gigabytes for 65535 x 65535) or aborts the process.

Also here: the cheap test that decides whether a file is worth handing to pydicom at all (``sniff``), since pydicom
reading a non-DICOM file with ``force`` walks all of it (a 100 MB file of zeros takes half a minute).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA})

# Frames one object may list. An Enhanced MR cine stack holds slices x phases (15 x 30 = 450) frames; the largest
# cardiac multi-frame objects (4D flow, 3D whole-heart volumes with their reformats) hold a few thousand. Beyond
# 10,000 an object is not a cardiac acquisition cmrdx can use: the first 10,000 frames are listed, with a warning.
MAX_FRAMES_PER_OBJECT = 10_000
# Pixels a side the decoder accepts. Cardiac MR images are 128-512 pixels a side (1024 interpolated); the largest
# images in clinical DICOM (digital radiographs) are about 4,300. A side over 8192 is taken for a corrupt header.
MAX_MATRIX_SIDE = 8192
# Compressed fragments counted per object (frames <= fragments): enough for MAX_FRAMES_PER_OBJECT frames.
MAX_FRAGMENTS_COUNTED = MAX_FRAMES_PER_OBJECT + 1
# Bytes of a frame's first fragment kept to read its codestream header (JPEG SOF / JPEG 2000 SIZ / RLE header).
CODESTREAM_HEAD = 4096

NOT_DICOM = "not DICOM"
# Value representations with a 4-byte length in explicit VR (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM = 0xFFFEE000


def sniff(head: bytes) -> str | None:
    """None when ``head`` (a file's first 140 bytes or more) starts like DICOM, else the reason it is not read.

    A DICOM file (PS3.10) has 128 bytes of preamble, "DICM", then its file meta group (0002,xxxx). A data set stored
    without preamble (older exports) is accepted when its first element is in group 0002 or 0008 (every image
    object starts there: SOPClassUID is (0008,0016)), in either byte order."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return None if _plausible_first_tag(head[132:136], meta=True) else f"{NOT_DICOM} (nothing readable after DICM)"
    return None if _plausible_first_tag(head[:4], meta=False) else NOT_DICOM


def _plausible_first_tag(b: bytes, meta: bool) -> bool:
    if len(b) < 4:
        return False
    for order in ("<", ">"):
        group, _elem = struct.unpack(order + "HH", b)
        if group == 0x0002 or (group == 0x0008 and not meta) or (meta and 0x0004 <= group < 0x7FE0 and group != 0xFFFE):
            return True
    return False


@dataclass(frozen=True)
class PixelDataInfo:
    """The pixel data element as stored: where its value starts, how long it says it is and how much of it the
    file holds; for encapsulated (compressed) data, how many fragments follow and the start of the first one."""

    tag: int
    value_offset: int
    length: int | None  # declared length; None when undefined (encapsulated)
    available: int  # bytes of the value present in the file (native), or up to the last whole fragment
    fragments: int | None = None  # encapsulated: fragments after the offset table (counted up to a limit)
    fragments_truncated: bool = False  # encapsulated: a fragment runs past the end of the file
    first_fragment: bytes = b""  # encapsulated: the first CODESTREAM_HEAD bytes of the first fragment

    @property
    def encapsulated(self) -> bool:
        return self.length is None


def read_pixel_data_info(fp: BinaryIO, *, implicit: bool, little: bool, size: int | None) -> PixelDataInfo | None:
    """The pixel data element starting at ``fp``'s position (where pydicom's ``stop_before_pixels`` leaves a
    file), or None when there is none. ``size`` is the file's size (None when unknown)."""
    start = fp.tell()
    hdr = fp.read(8)
    if len(hdr) < 8:
        return None
    e = "<" if little else ">"
    group, elem = struct.unpack(e + "HH", hdr[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    vr = hdr[4:6]
    # An element written with implicit VR inside an explicit-VR data set happens (pydicom reads it too): no VR.
    if implicit or not (vr.isalpha() and vr.isupper()):
        (length,) = struct.unpack(e + "L", hdr[4:8])
        value_offset = start + 8
    elif vr in _LONG_VRS:
        ext = fp.read(4)
        if len(ext) < 4:
            return PixelDataInfo(tag, start + 12, 0, 0)
        (length,) = struct.unpack(e + "L", ext)
        value_offset = start + 12
    else:
        (length,) = struct.unpack(e + "H", hdr[6:8])
        value_offset = start + 8
    remaining = None if size is None else max(0, size - value_offset)
    if length != 0xFFFFFFFF:
        return PixelDataInfo(tag, value_offset, length, length if remaining is None else min(length, remaining))
    return _encapsulated(fp, tag, value_offset, e, remaining)


def _encapsulated(fp: BinaryIO, tag: int, value_offset: int, e: str, remaining: int | None) -> PixelDataInfo:
    """Walk the items of encapsulated pixel data (offset table, then fragments) without reading their values."""
    pos = 0
    n_items = 0
    first = b""
    truncated = False
    while n_items <= MAX_FRAGMENTS_COUNTED:
        hdr = fp.read(8)
        if len(hdr) < 8:  # the file ends before the sequence delimiter
            truncated = True
            break
        group, elem, length = struct.unpack(e + "HHL", hdr)
        if (group << 16) | elem != _ITEM:  # the sequence delimiter, or not an item at all
            break
        pos += 8
        n_items += 1
        skip = length
        if n_items == 2:  # the first fragment after the offset table
            first = fp.read(min(length, CODESTREAM_HEAD))
            skip -= len(first)
        if remaining is not None and pos + length > remaining:  # counted: its frame fails to decode, saying why
            truncated = True
            break
        fp.seek(skip, 1)
        pos += length
    return PixelDataInfo(tag, value_offset, None, pos, fragments=max(0, n_items - 1),
                         fragments_truncated=truncated, first_fragment=first)


def bytes_per_frame(rows: int, cols: int, bits_allocated: int, samples: int, photometric: str = "") -> int:
    """Bytes one uncompressed frame takes (PS3.5 8.1.1; bit-packed for BitsAllocated 1; 4:2:2 subsampled YBR)."""
    per_pixel_samples = 2 if photometric.upper() == "YBR_FULL_422" else samples
    n = rows * cols * per_pixel_samples
    if bits_allocated == 1:
        return (n + 7) // 8
    return n * (bits_allocated // 8)


def frames_present(info: PixelDataInfo, rows: int, cols: int, bits_allocated: int, samples: int,
                   photometric: str = "") -> int | None:
    """How many frames the stored pixel data can hold (None when the header gives no usable frame size)."""
    if info.encapsulated:
        return info.fragments
    bpf = bytes_per_frame(rows, cols, bits_allocated, samples, photometric)
    if bpf <= 0:
        return None
    return info.available // bpf


def codestream_size(fragment: bytes) -> tuple[int, int] | None:
    """(rows, columns) the compressed image in ``fragment`` says it has (JPEG, JPEG-LS or JPEG 2000), or None
    when the codestream is none of these or its header cannot be read."""
    if fragment[:2] == b"\xff\xd8":  # JPEG / JPEG-LS: the frame header (SOF) holds the size
        from pydicom.pixels.utils import _get_jpg_parameters

        try:
            p = _get_jpg_parameters(fragment)
        except Exception:  # noqa: BLE001 - a malformed codestream is reported by the caller as unreadable
            return None
        h, w = int(p.get("height", 0) or 0), int(p.get("width", 0) or 0)
        return (h, w) if h > 0 and w > 0 else None
    off = fragment.find(b"\xff\x4f\xff\x51")  # JPEG 2000: SOC then SIZ (a JP2 header may precede it)
    if off < 0 or off > 512 or len(fragment) < off + 24:
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">LLLL", fragment[off + 8: off + 24])
    if xsiz <= xo or ysiz <= yo:
        return None
    return ysiz - yo, xsiz - xo


def rle_segments(fragment: bytes) -> int | None:
    """The number of segments an RLE frame's header declares (PS3.5 G.3.1), or None if unreadable."""
    if len(fragment) < 64:
        return None
    (n,) = struct.unpack("<L", fragment[:4])
    return n
