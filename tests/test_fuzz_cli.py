"""The whole `cmrdx` command over bad inputs: each run ends within a time bound, without a traceback, with an exit
code from the documented table (``cmrdx.errors.EXIT_CODES``), with its peak memory bounded, and with no raw control
character from a file reaching the terminal.

Two layers: a corpus of bad inputs made here (missing, empty, garbage, truncated and zero-filled files, a garbage
zip, names and DICOM strings holding markup, escape sequences, bidi overrides and bytes that are not UTF-8, banks
with NaN thresholds, non-UTF-8 text, over-long prompts and alias bombs, bad option values) run through the real
entry point in subprocesses; and hypothesis-generated option values, bank mutations and DICOM strings run through
``cmrdx.cli.main`` in this process. The CI run takes well under a minute; the ``fuzz`` marker runs the corpus
against every command and many more examples (``pytest -m fuzz tests/test_fuzz_cli.py``: ``make fuzz``).
"""

from __future__ import annotations

import io
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from cmrdx.errors import EXIT_CODES
from helpers.cine_factory import build_cine_study

ROOT = Path(__file__).resolve().parents[1]
CODES = set(EXIT_CODES.values()) | {0}
TIME_BOUND_S = 120.0  # generous: what it catches is a hang, not a slow machine
RSS_BOUND = 3 * 2**30  # the bundled model and a small study take a few hundred MB; a runaway read takes GBs
HOSTILE = "[/] [bold]x\x1b[2J\x1b]0;t\x07 :warning: \u202eevil\x9b1m"
CONTROL = {chr(c) for c in range(0x20) if chr(c) not in "\n\t"} | {chr(c) for c in range(0x7F, 0xA0)} | {
    "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}
IN_PROCESS_EXAMPLES = 15
# hostile values are written into test files on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning",
                                        "ignore:The value length:UserWarning")
FUZZ_EXAMPLES = 400


@pytest.fixture(autouse=True)
def _long_run_only_when_asked(request):
    if request.node.get_closest_marker("fuzz") and "fuzz" not in (request.config.option.markexpr or ""):
        pytest.skip("the long fuzz run: pytest -m fuzz tests/test_fuzz_cli.py (make fuzz)")


# ----------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    args: list[str]
    code: int | None  # None: killed at the time bound
    out: str
    err: str
    seconds: float
    peak_rss: int  # bytes

    def describe(self) -> str:
        return f"cmrdx {' '.join(map(repr, self.args))} -> {self.code} in {self.seconds:.1f} s\n{self.out}\n{self.err}"


def run_bounded(args: list[str], home: Path, timeout: float = TIME_BOUND_S) -> Outcome:
    """`python -m cmrdx ARGS` with its own peak RSS (``wait4``'s rusage of that child alone) and a time bound."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200", "CMRDX_HOME": str(home), "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "cmrdx", *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=env, cwd=home, start_new_session=True)
        code: int | None = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = code if code is not None else -9  # reaped here: Popen must not wait for it again
        seconds = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        text = [f.read().decode("utf-8", "replace") for f in (out, err)]
    return Outcome(args, code, text[0], text[1], seconds, usage.ru_maxrss * 1024)


def assert_well_behaved(o: Outcome) -> None:
    assert o.code is not None, f"no end within {TIME_BOUND_S:.0f} s: " + o.describe()
    assert o.code in CODES, "exit code outside the documented table: " + o.describe()
    assert o.code != EXIT_CODES["InternalError"], "an unexpected exception (a bug): " + o.describe()
    text = o.out + o.err
    assert "Traceback" not in text and "Exception ignored" not in text, o.describe()
    raw = sorted({hex(ord(c)) for c in text if c in CONTROL})
    assert not raw, f"raw control characters {raw} reached the terminal: " + o.describe()
    assert o.peak_rss < RSS_BOUND, f"peak RSS {o.peak_rss / 2**20:.0f} MB: " + o.describe()


def in_process(args: list[str]) -> tuple[int, str]:
    """``cmrdx.cli.main(args)`` here: (exit code, stdout + stderr)."""
    from cmrdx.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def assert_well_behaved_in_process(args: list[str], code: int, text: str, seconds: float) -> None:
    what = f"cmrdx {args!r} -> {code} in {seconds:.1f} s\n{text}"
    assert code in CODES and code != EXIT_CODES["InternalError"], what
    assert "Traceback" not in text, what
    assert not {c for c in text if c in CONTROL}, what
    assert seconds < TIME_BOUND_S, what


def peak_rss_self() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------- the corpus


GOOD_BANK = """\
schema: cmrdx-prompt-bank/1
name: fuzz
version: "1"
authors: [Dr A]
findings:
  - id: lv_dilation
    label: LV dilation
    prompts:
      - Left ventricle is dilated
    thresholds:
      - model: cmrdx-phantom-small
        threshold: 0.5
"""


def _mr_file(path: Path, description: str | None = None) -> Path:
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    if description is not None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = description
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fuzz-corpus")
    c: dict[str, Path] = {"missing": d / "no-such-path"}
    c["empty_dir"] = d / "empty"
    c["empty_dir"].mkdir()
    c["empty_file"] = d / "empty.dcm"
    c["empty_file"].write_bytes(b"")
    c["garbage"] = d / "garbage.dcm"
    c["garbage"].write_bytes(os.urandom(64 * 1024))
    real = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    c["truncated"] = d / "truncated" / "cut.dcm"
    c["truncated"].parent.mkdir()
    c["truncated"].write_bytes(real[:300])
    c["zeros"] = d / "zeros" / "zeros.dcm"
    c["zeros"].parent.mkdir()
    c["zeros"].write_bytes(bytes(4 * 2**20))
    c["garbage_zip"] = d / "study.zip"
    c["garbage_zip"].write_bytes(b"PK\x03\x04" + os.urandom(4096))
    c["single_mr"] = _mr_file(d / "single" / "mr.dcm").parent
    c["hostile_name"] = _mr_file(d / f"name {HOSTILE}" / "mr.dcm").parent
    c["non_utf8_name"] = _mr_file(Path(os.fsdecode(os.fsencode(str(d)) + b"/caf\xe9 \xff")) / "mr.dcm").parent
    c["hostile_strings"] = _mr_file(d / "strings" / "mr.dcm", HOSTILE).parent

    def edit(ds) -> None:
        ds.SpecificCharacterSet = "ISO_IR 192"
        if "4CH" in str(ds.SeriesDescription) or "IrP" in str(ds.SeriesDescription):
            ds.SeriesDescription = HOSTILE

    c["hostile_study"] = d / "hostile-study"
    build_cine_study(c["hostile_study"], vendor="ge", n_slices=4, n_phases=6, lax_views=("4CH",), edit=edit)
    banks = d / "banks"
    banks.mkdir()
    c["bank_nan"] = banks / "nan.yaml"
    c["bank_nan"].write_text(GOOD_BANK.replace("threshold: 0.5", "threshold: .nan"))
    c["bank_inf"] = banks / "inf.yaml"
    c["bank_inf"].write_text(GOOD_BANK.replace("threshold: 0.5", "threshold: -.inf"))
    c["bank_not_utf8"] = banks / "latin1.yaml"
    c["bank_not_utf8"].write_bytes(GOOD_BANK.replace("Dr A", "Dr \xe9").encode("latin-1"))
    c["bank_huge_prompt"] = banks / "huge.yaml"
    c["bank_huge_prompt"].write_text(GOOD_BANK.replace("Left ventricle is dilated", "dilated " * 2000))
    c["bank_empty"] = banks / "empty.yaml"
    c["bank_empty"].write_text("")
    c["bank_folder"] = banks / "folder.yaml"
    c["bank_folder"].mkdir()
    c["bank_hostile"] = banks / "hostile.yaml"
    c["bank_hostile"].write_text(GOOD_BANK.replace("LV dilation", '"' + HOSTILE.replace("\x1b", "\\e").replace(
        "\x07", "\\a").replace("\x9b", "\\x9b") + '"'), encoding="utf-8")
    # an alias bomb (nine lists of nine, eight deep) where the schema takes any YAML: a calibration's provenance
    bomb = "\n".join([f"          l0: &l0 [{', '.join(['lol'] * 9)}]"] + [
        f"          l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)])
    c["bank_laughs"] = banks / "laughs.yaml"
    c["bank_laughs"].write_text(GOOD_BANK + "        provenance:\n" + bomb + "\n")
    c["store_file"] = d / "store-file"
    c["store_file"].write_text("not a store")
    c["out_folder"] = d / "out-folder"
    c["out_folder"].mkdir()
    c["labels_garbage"] = d / "labels.csv"
    c["labels_garbage"].write_bytes(b"\xff\xfe,,,\n\x00\x00" + os.urandom(256))
    return c


PATHS = ("missing", "empty_dir", "empty_file", "garbage", "truncated", "zeros", "garbage_zip", "single_mr",
         "hostile_name", "non_utf8_name", "hostile_strings", "hostile_study")
BANKS = ("bank_nan", "bank_inf", "bank_not_utf8", "bank_huge_prompt", "bank_empty", "bank_folder", "bank_hostile",
         "bank_laughs")


def ci_cases(c: dict[str, Path]) -> list[list[str]]:
    """The CI corpus: every bad path through inspect, the ones classify reads differently through classify, every
    bad bank through lint and classify, and each other command with a bad path or value."""
    s = str
    cases = [["inspect", s(c[p])] for p in PATHS]
    cases += [["inspect", s(c[p]), "--json"] for p in ("hostile_strings", "hostile_name", "non_utf8_name")]
    cases += [["classify", s(c[p]), "--device", "cpu"] for p in ("garbage", "single_mr", "hostile_study", "garbage_zip")]
    cases += [["prompts", "lint", "--no-model", s(c[b])] for b in BANKS]
    cases += [["classify", s(c["hostile_study"]), "--device", "cpu", "--bank", s(c[b])] for b in BANKS]
    cases += [
        ["prompts", "lint", s(c["bank_huge_prompt"])],
        ["classify", s(c["hostile_study"]), "--device", "cpu", "--report", s(c["out_folder"])],
        ["classify", s(c["hostile_study"]), "--device", "cpu", "--output", s(c["garbage"]) + "/under-a-file.json"],
        ["send", s(c["garbage"]), "--host", "127.0.0.1", "--port", "9", "--aet", "PACS", "--timeout", "1"],
        ["send", s(c["hostile_name"] / "mr.dcm"), "--host", "127.0.0.1", "--port", "9", "--aet", HOSTILE[:16]],
        ["search", HOSTILE, "--db", s(c["empty_dir"])],
        ["search", "dilated", "--db", s(c["store_file"])],
        ["similar", s(c["hostile_study"]), "--db", s(c["missing"])],
        ["index", s(c["missing"]), "--db", s(c["store_file"])],
        ["models", "info", s(c["garbage"])],
        ["models", "verify", s(c["empty_dir"])],
        ["fewshot", "fit", "--labels", s(c["labels_garbage"]), "--out", s(c["out_folder"])],
        ["eval", "retrieval", "--data", s(c["empty_dir"]), "--json", s(c["out_folder"])],
        ["synth", "study", s(c["store_file"]), "--seed", "1"],
        ["batch", s(c["missing"]), "--out", s(c["out_folder"]) + "/r.csv"],
        ["send", s(c["garbage"]), "--host", "h", "--port", "-5", "--aet", "A"],
        ["inspect", s(c["single_mr"]), "--study", HOSTILE],
    ]
    return cases


def all_cases(c: dict[str, Path]) -> list[list[str]]:
    """The long run: every bad path and bank through every command that reads one."""
    s = str
    cases = ci_cases(c)
    for p in PATHS:
        cases += [
            ["inspect", s(c[p]), "--json"], ["inspect", s(c[p]), "--show-phi"],
            ["classify", s(c[p]), "--device", "cpu", "--json"],
            ["similar", s(c[p]), "--db", s(c["empty_dir"])],
            ["send", s(c[p]), "--host", "127.0.0.1", "--port", "9", "--aet", "PACS", "--timeout", "1"],
            ["models", "info", s(c[p])], ["models", "verify", s(c[p])],
            ["index", s(c[p]), "--db", s(c["out_folder"]) + "/store"],
            ["prompts", "lint", "--no-model", s(c[p])],
        ]
    for b in BANKS:
        cases += [["prompts", "lint", s(c[b])], ["classify", s(c["hostile_study"]), "--device", "cpu", "--json",
                                                 "--bank", s(c[b])]]
    return cases


def _run_all(cases: list[list[str]], home: Path) -> None:
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        outcomes = list(pool.map(lambda a: run_bounded(a, home), cases))
    for o in outcomes:
        assert_well_behaved(o)


def test_cli_over_a_corpus_of_bad_inputs(corpus, tmp_path):
    _run_all(ci_cases(corpus), tmp_path)


@pytest.mark.fuzz
def test_cli_over_the_whole_corpus_every_command(corpus, tmp_path):
    _run_all(all_cases(corpus), tmp_path)


# ------------------------------------------------------------------------------- hypothesis, in this process


# Text as a file or an argument can hold it: everything but NUL (argv and file names cannot) and lone surrogates.
any_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=80)
hostile_text = st.one_of(any_text, st.sampled_from([HOSTILE, "[/]", "[link=file:///etc/passwd]x[/link]", "\x1b[2J",
                                                   "\u202e", ":warning:", "\\", "[", "x" * 5000]))
numbers = st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    hostile_text)


# Generated paths stay under the empty folder the runs start in: no "/", no ".." (a bare "/" would scan the disk).
local = hostile_text.map(lambda t: t.replace("/", "_").replace("..", "_"))


def _argv(corpus: dict[str, Path]):
    missing, empty = str(corpus["missing"]), str(corpus["empty_dir"])
    return st.one_of(
        st.tuples(st.just("inspect"), local).map(list),
        st.tuples(st.just("search"), hostile_text, st.just("--db"), st.just(missing), st.just("-k"), numbers).map(list),
        st.tuples(st.just("send"), st.just(missing), st.just("--host"), hostile_text, st.just("--port"), numbers,
                  st.just("--aet"), hostile_text, st.just("--timeout"), numbers).map(list),
        st.tuples(st.just("classify"), st.just(missing), st.just("--device"), hostile_text).map(list),
        st.tuples(st.just("synth"), st.just("archive"), st.just(empty), st.just("--workers"), numbers,
                  st.just("--n"), numbers, st.just("--matrix"), numbers).map(lambda t: [*t, "--phases", "1"]),
        st.tuples(st.just("models"), st.sampled_from(["info", "verify"]), local).map(list),
        st.lists(local, max_size=4),
    )


def _option_values(corpus: dict[str, Path], argv: list[str]) -> None:
    t0 = time.monotonic()
    code, text = in_process(argv)
    assert_well_behaved_in_process(argv, code, text, time.monotonic() - t0)


def test_option_values_and_names_from_hypothesis(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings(max_examples=IN_PROCESS_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])(
        given(argv=_argv(corpus))(lambda argv: _option_values(corpus, argv)))()
    assert peak_rss_self() < RSS_BOUND


@pytest.mark.fuzz
def test_option_values_and_names_from_hypothesis_long(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])(
        given(argv=_argv(corpus))(lambda argv: _option_values(corpus, argv)))()
    assert peak_rss_self() < RSS_BOUND


# Bank mutations: a field of a valid bank replaced by any YAML value, hostile text included.
yaml_values = st.one_of(
    st.sampled_from([".nan", ".inf", "-.inf", "1.0e+999", "~", "[]", "{}", "''", "[[[[]]]]", "!!binary aGk=", "*x",
                     "&a [*a]", "0x1F", "1_000", "!!python/object/apply:os.system ['true']"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**70), 2**70).map(str),
    hostile_text.map(lambda t: '"' + t.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'),
)
FIELDS = ("threshold: 0.5", "label: LV dilation", "- Left ventricle is dilated", "version: \"1\"", "id: lv_dilation",
          "model: cmrdx-phantom-small", "authors: [Dr A]")


def _bank_mutation(field: str, value: str) -> None:
    from cmrdx.errors import PromptBankError
    from cmrdx.zeroshot.bank import load_bank

    key = field.split(":")[0] if ":" in field else "-"
    text = GOOD_BANK.replace(field, f"{key}: {value}" if key != "-" else f"- {value}", 1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bank.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            bank = load_bank(path)
        except PromptBankError as exc:
            assert str(path) in exc.message and exc.hint, exc.message
        else:  # a bank that loads has only finite numbers: no silent "absent" for every study
            import math

            assert all(math.isfinite(c.threshold) for f in bank.findings for c in f.calibrations)
            assert math.isfinite(bank.temperature) and math.isfinite(bank.uncertain_margin)
        t0 = time.monotonic()
        code, out = in_process(["prompts", "lint", "--no-model", str(path)])
        assert code in (0, 1), out
        assert_well_behaved_in_process(["prompts", "lint", str(path)], code, out, time.monotonic() - t0)


def test_bank_mutations_load_or_fail_with_file_and_lint_cleanly():
    settings(max_examples=IN_PROCESS_EXAMPLES * 2, deadline=None, database=None)(
        given(field=st.sampled_from(FIELDS), value=yaml_values)(_bank_mutation))()


@pytest.mark.fuzz
def test_bank_mutations_load_or_fail_with_file_and_lint_cleanly_long():
    settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)(
        given(field=st.sampled_from(FIELDS), value=yaml_values)(_bank_mutation))()


# A UID is read as bytes (one character each): any byte but NUL, markup and escape sequences included.
uid_bytes = st.one_of(st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=60),
                      st.sampled_from(["[/]", "\x1b[2J", "[link=x]y[/link]", "\x9b31m"]))


def _dicom_strings(description: str, uid_suffix: str) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = _mr_file(Path(d) / "s" / "mr.dcm", description)
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = "1.2." + uid_suffix
        ds.save_as(path, enforce_file_format=True)
        for args in (["inspect", str(path.parent)], ["inspect", str(path.parent), "--json"]):
            t0 = time.monotonic()
            code, out = in_process(args)
            assert code == 0, out  # one MR series without cine: listed, not fatal
            assert_well_behaved_in_process(args, code, out, time.monotonic() - t0)


def test_dicom_strings_with_markup_and_controls_are_printed_as_data():
    settings(max_examples=IN_PROCESS_EXAMPLES, deadline=None, database=None)(
        given(description=hostile_text.filter(lambda t: "\\" not in t), uid_suffix=uid_bytes)(_dicom_strings))()


@pytest.mark.fuzz
def test_dicom_strings_with_markup_and_controls_are_printed_as_data_long():
    settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None)(
        given(description=hostile_text.filter(lambda t: "\\" not in t), uid_suffix=uid_bytes)(_dicom_strings))()
