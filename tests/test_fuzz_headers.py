"""Header fuzzing of the DICOM layer: real files (pydicom's test files, docs/test-data.md) and studies (a cine study
built from MR_small.dcm by tests/helpers/cine_factory.py, an Enhanced MR one, and examples/phantom-study written by
`cmrdx synth`) with one header element mutated (VR-valid and VR-invalid values, NaN, huge and negative numbers, markup
and control characters, empty and missing elements) or the file damaged, each run through scan, inspect_study,
assemble_study and, where a study assembles, apply_recipe (real files: each frame decoded).

Each example runs in a forked child of this process (cheap: nothing is imported again), so that a decoder that
aborts or a runaway allocation ends the child and fails the example, not the run. Every example must end within
TIME_BOUND_S, raise nothing but a CmrdxError, and stay within RSS_BOUND of peak memory above what the child
inherited. The CI run is derandomized and takes about a minute; `pytest -m fuzz tests/test_fuzz_headers.py`
(make fuzz) runs many more, random, examples.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement

from helpers.cine_factory import build_cine_study

ROOT = Path(__file__).resolve().parents[1]
TIME_BOUND_S = 60.0  # generous: an example takes well under a second; what this catches is a hang
RSS_BOUND = 3 << 29  # 1.5 GiB above the forked child's start: a study this small needs tens of MB
CI_EXAMPLES = 25
FUZZ_EXAMPLES = 500

# hostile values are written into test files on purpose
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# The header elements the reader uses, and the file meta's transfer syntax.
FIELDS = (
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel", "PixelRepresentation",
    "NumberOfFrames", "PhotometricInterpretation", "PlanarConfiguration", "ImagePositionPatient",
    "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "TriggerTime", "InstanceNumber",
    "TemporalPositionIdentifier", "AcquisitionTime", "SeriesTime", "StudyInstanceUID", "SeriesInstanceUID",
    "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID", "Modality", "SeriesNumber", "SeriesDescription",
    "ProtocolName", "SequenceName", "ScanningSequence", "SequenceVariant", "ScanOptions", "ImageType",
    "InversionTime", "EchoTime", "RescaleSlope", "RescaleIntercept", "NominalInterval", "HeartRate",
    "CardiacNumberOfImages", "Manufacturer", "MRAcquisitionType", "PixelData",
    "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence", "DimensionIndexSequence",
)
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.70", "1.2.3.4", "",
)
HOSTILE_TEXT = ("[/]", "[bold red]x[/]", "\x1b[2J\x1b]0;t\x07", "\x00\x00", "a\\b\\c\\d\\e\\f\\g", "\u202eevil",
                "nan", "-inf", "1e400", "-1", "0", "99999999999999999999", " ", "x" * 5000)

_numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 7, 8, 12, 15, 16, 31, 32, 64, 255, 256, 4096, 8192, 65535, 65536, 2**31 - 1,
                     2**32 - 1, 999_999_999, -(2**31)]),
    st.integers(min_value=-(2**40), max_value=2**40),
)
_floats = st.one_of(st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e308, -1e308, 5e-324]),
                    st.floats(allow_nan=True, allow_infinity=True))
_text = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=80))


def _typed(vr: str) -> st.SearchStrategy[Any]:
    """Values of the element's own VR (pydicom writes them as given, valid for the VR or not)."""
    if vr in ("US", "SS", "UL", "SL", "UV", "SV", "US or SS"):
        return _numbers
    if vr in ("FL", "FD"):
        return _floats
    if vr == "IS":
        return st.one_of(_numbers.map(str), _text)
    if vr == "DS":
        many = st.lists(_floats.map(lambda f: repr(f)[:16]), min_size=0, max_size=7).map("\\".join)
        return st.one_of(_floats.map(lambda f: repr(f)[:16]), many, _text)
    return _text


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    """One damage to one element (or to the file): what, how, and with which value."""
    what = draw(st.sampled_from(("element",) * 6 + ("transfer syntax", "cut", "zero")))
    if what == "transfer syntax":
        return {"what": what, "value": draw(st.one_of(st.sampled_from(TRANSFER_SYNTAXES), _text))}
    if what in ("cut", "zero"):
        return {"what": what, "at": draw(st.floats(0.0, 1.0)), "length": draw(st.integers(1, 4096))}
    keyword = draw(st.sampled_from(FIELDS))
    vr = dictionary_VR(keyword)
    how = draw(st.sampled_from(("typed", "typed", "missing", "empty", "raw") if vr != "SQ" else ("missing", "empty")))
    value: Any = None
    if how == "typed":
        value = draw(_typed(vr))
    elif how == "raw":  # bytes of any length under VR UN: read back as the element's dictionary VR
        value = draw(st.binary(max_size=64))
    return {"what": what, "keyword": keyword, "how": how, "value": value}


def damage(path: Path, m: dict[str, Any]) -> None:
    """Write ``path`` with the mutation ``m`` applied (``reject`` when pydicom cannot write the value at all)."""
    if m["what"] in ("cut", "zero"):
        data = bytearray(path.read_bytes())
        k = int(m["at"] * len(data))
        if m["what"] == "cut":
            data = data[:k]
        else:
            data[k:k + m["length"]] = bytes(len(data[k:k + m["length"]]))
        _replace(path, bytes(data))
        return
    ds = pydicom.dcmread(path, force=True)
    if m["what"] == "transfer syntax":
        ds.file_meta.TransferSyntaxUID = m["value"]
    else:
        tag = tag_for_keyword(m["keyword"])
        vr = dictionary_VR(m["keyword"])
        if m["how"] == "missing":
            if tag in ds:
                del ds[tag]
        elif m["how"] == "empty":
            ds[tag] = DataElement(tag, "SQ" if vr == "SQ" else ("OB" if vr == "OB or OW" else vr.split(" ")[0]),
                                  [] if vr == "SQ" else None)
        elif m["how"] == "raw":
            ds[tag] = _raw_element(tag, m["value"])
        else:
            try:
                ds[tag] = DataElement(tag, vr.split(" ")[0], m["value"])
            except (ValueError, TypeError, OverflowError):  # not convertible to the VR: its text, stored raw
                text = m["value"] if isinstance(m["value"], str) else repr(m["value"])
                ds[tag] = _raw_element(tag, text.encode("latin-1", "replace"))
    out = path.with_suffix(".tmp")
    try:
        with pydicom.config.disable_value_validation():
            ds.save_as(out, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - a value pydicom cannot encode at all is no test of the reader
        out.unlink(missing_ok=True)
        reject()
    _replace(path, out.read_bytes())
    out.unlink()


def _raw_element(tag: int, value: bytes) -> DataElement:
    """``value`` stored as it is (VR UN): a reader takes it for the element's dictionary VR, valid or not."""
    keep = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False
    try:
        return DataElement(tag, "UN", value)
    finally:
        pydicom.config.replace_un_with_known_vr = keep


def _replace(path: Path, data: bytes) -> None:
    if path.is_symlink():
        path.unlink()
    path.write_bytes(data)


def _copy_as_links(src: Path, dst: Path) -> list[Path]:
    """``dst`` mirroring ``src`` with symbolic links to its files (the reader follows links to regular files); the
    linked files, in sorted order."""
    files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    for p in files:
        q = dst / p.relative_to(src)
        q.parent.mkdir(parents=True, exist_ok=True)
        q.symlink_to(p)
    return [dst / p.relative_to(src) for p in files]


# ----------------------------------------------------------------------------------------------- running


def _pipeline(root: str, decode_every_frame: bool) -> str:
    """What a command does with a study folder, as far as the DICOM layer and the recipe go; the name of the
    CmrdxError it ended with, or "ok"."""
    from cmrdx.dicom import scan
    from cmrdx.dicom.pixels import decode_frame
    from cmrdx.errors import CmrdxError
    from cmrdx.recipe import apply_recipe
    from cmrdx.study.assemble import assemble_study, inspect_study

    try:
        res = scan(root)
        if decode_every_frame:
            for series in res.studies.values():
                for s in series:
                    for f in s.frames[:8]:
                        with contextlib.suppress(CmrdxError):
                            decode_frame(f, s.photometric)
        study = assemble_study(inspect_study(res))
        apply_recipe(study)
    except CmrdxError as exc:
        return type(exc).__name__
    return "ok"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_forked(fn: Callable[[], str]) -> str:
    """``fn()`` in a forked child, within TIME_BOUND_S and RSS_BOUND; its result, or AssertionError saying how it
    failed (an exception that is not a CmrdxError, a signal, the time bound, the memory bound)."""
    read_end, write_end = os.pipe()
    start_rss = _rss_bytes()
    pid = os.fork()
    if pid == 0:  # the child: run, report, and leave without running anything of the parent's
        os.close(read_end)
        try:
            out = {"result": fn()}
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the example
            out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        with os.fdopen(write_end, "w") as w:
            w.write(json.dumps(out))
        os._exit(0)
    os.close(write_end)
    t0 = time.monotonic()
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got:
            break
        if time.monotonic() - t0 > TIME_BOUND_S:
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
            os.close(read_end)
            raise AssertionError(f"still running after {TIME_BOUND_S:.0f} s (a hang)")
        time.sleep(0.01)
    with os.fdopen(read_end) as r:
        text = r.read()
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the process was killed by signal {os.WTERMSIG(status)} (a crash in a decoder?)")
    grown = usage.ru_maxrss * 1024 - start_rss
    assert grown < RSS_BOUND, f"peak memory {grown >> 20} MiB above the start (bound {RSS_BOUND >> 20} MiB)"
    out = json.loads(text) if text else {"error": "no report from the child"}
    if "error" in out:
        raise AssertionError(f"{out['error']}\n{out.get('traceback', '')}")
    return str(out["result"])


# ----------------------------------------------------------------------------------------------- inputs

REAL_FILES = ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
              "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, Path]:
    """Studies to damage: a cine study from a real file, an Enhanced MR cine study, the phantom example study."""
    base = tmp_path_factory.mktemp("fuzz-studies")
    cine = build_cine_study(base / "cine", vendor="ge", n_slices=3, n_phases=15, lax_views=("4CH",)).root
    enhanced = build_cine_study(base / "enhanced", vendor="philips", n_slices=3, n_phases=15, lax_views=(),
                                lge=False, enhanced_sax=True).root
    return {"cine": Path(cine), "enhanced": Path(enhanced), "phantom": ROOT / "examples" / "phantom-study"}


@pytest.fixture(autouse=True)
def _long_run_only_when_asked(request):
    if request.node.get_closest_marker("fuzz") and "fuzz" not in (request.config.option.markexpr or ""):
        pytest.skip("the long fuzz run: pytest -m fuzz tests/test_fuzz_headers.py (make fuzz)")


def _settings(n: int, ci: bool) -> settings:
    return settings(max_examples=n, deadline=None, derandomize=ci, database=None, print_blob=not ci,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.function_scoped_fixture])


def _check_real_file(name: str, m: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / name
        shutil.copy(get_testdata_file(name), p)
        damage(p, m)
        run_forked(lambda: _pipeline(d, decode_every_frame=True))


def _check_study(src: Path, scope: str, pick: int, m: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as d:
        files = _copy_as_links(src, Path(d))
        victim = files[pick % len(files)]
        if scope == "file":
            targets = [victim]
        elif scope == "series":
            targets = [f for f in files if f.parent == victim.parent]
        else:
            targets = files
        for f in targets:
            damage(f, m)
        run_forked(lambda: _pipeline(d, decode_every_frame=False))


# ----------------------------------------------------------------------------------------------- tests


def test_the_fork_runner_catches_what_it_is_for():
    """The harness itself: an exception that is not a CmrdxError, a crash, and a hang each fail an example."""
    with pytest.raises(AssertionError, match="KeyError"):
        run_forked(lambda: str({}["x"]))
    with pytest.raises(AssertionError, match="signal 6"):
        run_forked(lambda: str(os.abort()))
    from cmrdx.errors import NoDicomError

    def raises_cmrdx() -> str:
        try:
            raise NoDicomError("x")
        except NoDicomError as exc:
            return type(exc).__name__

    assert run_forked(raises_cmrdx) == "NoDicomError"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def _element(keyword: str, how: str, value: Any = None) -> dict[str, Any]:
    return {"what": "element", "keyword": keyword, "how": how, "value": value}


# The damages an audit found harmful, always among the CI examples.
@example(name="MR_small_jpeg_ls_lossless.dcm", m=_element("Rows", "typed", 65535))
@example(name="MR_small_jp2klossless.dcm", m=_element("Columns", "typed", 4096))
@example(name="MR_small.dcm", m=_element("Rows", "raw", b"\xff\xff\xff\xff"))
@example(name="emri_small.dcm", m=_element("NumberOfFrames", "typed", "999999999"))
@example(name="MR_small.dcm", m=_element("NumberOfFrames", "typed", "-1"))
@example(name="MR_small_RLE.dcm", m=_element("BitsAllocated", "typed", 0))
@example(name="MR_small.dcm", m=_element("Rows", "raw", b"\x00\x00\x00"))  # a length no US value has
@given(name=st.sampled_from(REAL_FILES), m=mutations())
@_settings(CI_EXAMPLES * 2, ci=True)
def test_mutated_real_files_end_cleanly(name, m):
    _check_real_file(name, m)


@example(which="cine", scope="all", pick=0, m=_element("ImagePositionPatient", "missing"))
@example(which="cine", scope="all", pick=0, m=_element("ImageOrientationPatient", "typed", "nan\\" * 5 + "nan"))
@example(which="cine", scope="all", pick=0, m=_element("ImagePositionPatient", "typed", "0\\0\\0"))
@example(which="cine", scope="all", pick=0, m=_element("TriggerTime", "typed", "nan"))
@example(which="enhanced", scope="file", pick=0, m=_element("NumberOfFrames", "typed", "999999999"))
@given(which=st.sampled_from(("cine", "enhanced")), scope=st.sampled_from(("file", "series", "all")),
       pick=st.integers(0, 10_000), m=mutations())
@_settings(CI_EXAMPLES, ci=True)
def test_mutated_studies_end_cleanly(studies, which, scope, pick, m):
    _check_study(studies[which], scope, pick, m)


@given(scope=st.sampled_from(("file", "series")), pick=st.integers(0, 10_000), m=mutations())
@_settings(CI_EXAMPLES // 2, ci=True)
def test_mutated_phantom_study_ends_cleanly(studies, scope, pick, m):
    _check_study(studies["phantom"], scope, pick, m)


@pytest.mark.fuzz
@given(name=st.sampled_from(REAL_FILES), m=mutations())
@_settings(FUZZ_EXAMPLES, ci=False)
def test_fuzz_real_files(name, m):
    _check_real_file(name, m)


@pytest.mark.fuzz
@given(which=st.sampled_from(("cine", "enhanced", "phantom")), scope=st.sampled_from(("file", "series", "all")),
       pick=st.integers(0, 10_000), m=mutations())
@_settings(FUZZ_EXAMPLES, ci=False)
def test_fuzz_studies(studies, which, scope, pick, m):
    if which == "phantom" and scope == "all":
        scope = "series"  # 317 files rewritten per example is slow and finds nothing one series does not
    _check_study(studies[which], scope, pick, m)
