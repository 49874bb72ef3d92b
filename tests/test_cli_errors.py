"""Every way the `cmrdx` command can end on bad input: usage errors print the usage and exit 2; errors are one
line with a documented exit code, never a traceback (`-v` shows one for an unexpected error); text from files is
printed as data (no markup, no terminal control); outputs are checked before any work and written through
devices and links; a DICOM peer that cannot be resolved or answers garbage ends in its timeout with exit 10."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cmrdx.errors import EXIT_CODES
from helpers.cine_factory import build_cine_study
from helpers.cli import in_process

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "[/] [bold]x\x1b[2J\x1b]0;pwned\x07 :warning: \u202eevil"  # markup, CSI, OSC, emoji code, bidi override


def run_cli(*args: str, stdout=subprocess.PIPE, timeout: float = 120, home: Path | None = None) -> subprocess.CompletedProcess:
    """The real entry point, as a user runs it (exit code and both streams as they are)."""
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    if home is not None:
        env["CMRDX_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "cmrdx", *args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=timeout, env=env, errors="replace")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-errors") / "study"
    build_cine_study(root, vendor="ge", n_slices=4, n_phases=6, lax_views=("4CH",))
    return root


@pytest.fixture(scope="module")
def hostile_study(tmp_path_factory) -> Path:
    """A study whose series descriptions and StudyInstanceUID carry markup, escape sequences and a bidi override."""
    def edit(ds) -> None:
        ds.StudyInstanceUID = "1.2.3.[/]"
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the bidi override is stored as it is
        if "4CH" in str(ds.SeriesDescription) or "IrP" in str(ds.SeriesDescription):
            ds.SeriesDescription = HOSTILE

    root = tmp_path_factory.mktemp("cli-hostile") / "study"
    build_cine_study(root, vendor="ge", n_slices=4, n_phases=6, lax_views=("4CH",), edit=edit)
    return root


def assert_no_traceback(r: subprocess.CompletedProcess) -> None:
    text = (r.stdout or "") + (r.stderr or "")
    assert "Traceback" not in text and 'File "' not in text, text


def assert_no_raw_controls(text: str) -> None:
    raw = sorted({hex(ord(c)) for c in text if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0
                  or c in "\u202e\u202d\u2066\u2067\u2068\u2069"})
    assert not raw, f"raw control characters reached the terminal: {raw}"


# ------------------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [
    pytest.param(["inspect"], id="without-argument"),
    pytest.param(["inspect", "--no-such-option", "x"], id="unknown-option"),
    pytest.param(["no-such-command"], id="unknown-command"),
    pytest.param(["batch", "x", "--out", "y.csv", "--batch-size", "abc"], id="batch-size-not-a-number"),
    pytest.param(["send", "x.dcm", "--host", "h", "--port", "70000", "--aet", "A"], id="port-out-of-range"),
    pytest.param(["classify", "x", "--device", "tpu"], id="unknown-device"),
    pytest.param(["synth", "archive", "out", "--workers", "-1"], id="negative-workers"),
    pytest.param(["search", "dilated", "--db", "db", "-k", "0"], id="zero-k"),
    pytest.param(["prompts", "calibrate", "b.yaml", "--labels", "l.csv", "--min-positives", "0"], id="zero-min-positives"),
])
def test_usage_error_prints_usage_and_exits_2(args, tmp_path):
    r = run_cli(*args)
    assert r.returncode == 2 == EXIT_CODES["UsageError"], r.stderr
    assert "Usage: cmrdx" in r.stderr
    assert_no_traceback(r)


def test_usage_error_without_argument_prints_usage_and_exits_2():
    code, out, err = in_process("inspect")
    assert code == 2 and "Usage: cmrdx inspect" in err and "Missing argument" in err, err


def test_unexpected_error_is_one_line_exit_70_and_traceback_only_with_verbose(study, monkeypatch):
    import importlib

    def broken(*a, **k):
        raise ZeroDivisionError("a bug in the reader")

    # the module, not the function of the same name that cmrdx.dicom exports
    monkeypatch.setattr(importlib.import_module("cmrdx.dicom.scan"), "scan", broken)
    code, out, err = in_process("inspect", str(study))
    assert code == EXIT_CODES["InternalError"] == 70
    assert "internal error: ZeroDivisionError: a bug in the reader" in err and "cmrdx -v" in err
    assert "Traceback" not in err
    code, out, err = in_process("-v", "inspect", str(study))
    assert code == 70 and "Traceback (most recent call last)" in err and "a bug in the reader" in err


def test_exit_code_table_covers_every_error_and_the_readme_lists_it():
    assert EXIT_CODES["UsageError"] == 2 and EXIT_CODES["OutputError"] == 13
    assert EXIT_CODES["InternalError"] == 70 and EXIT_CODES["Interrupted"] == 130
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    assert set(EXIT_CODES.values()) | {0} == documented
    from cmrdx.outputs import OutputError

    assert OutputError.exit_code == EXIT_CODES["OutputError"]  # the outputs' error is the table's


# ------------------------------------------------------------------------------------ text from files is data


def test_inspect_prints_a_study_uid_with_markup_as_text(hostile_study):
    r = run_cli("inspect", str(hostile_study))
    assert r.returncode == 0, r.stderr
    assert "Study 1.2.3.[/]" in r.stdout
    assert_no_traceback(r)


def test_inspect_and_classify_escape_control_characters_from_descriptions(hostile_study, tmp_path):
    for args in (["inspect", str(hostile_study)], ["classify", str(hostile_study), "--device", "cpu"]):
        r = run_cli(*args, home=tmp_path)
        assert r.returncode == 0, r.stderr
        assert_no_raw_controls(r.stdout + r.stderr)
        text = r.stdout.replace("\n", "")
        assert "\\x1b[2J" in text and "\\u202eevil" in text  # shown, as visible escapes
        assert ":warning:" in text and "[/] [bold]x" in text  # neither an emoji nor markup


def test_error_naming_a_path_with_markup_and_escapes_prints_it_as_data(tmp_path):
    missing = tmp_path / f"study {HOSTILE}"
    r = run_cli("inspect", str(missing))
    assert r.returncode == EXIT_CODES["InputNotFoundError"], r.stderr
    assert "[/] [bold]x\\x1b[2J" in r.stderr and "\\u202eevil" in r.stderr
    assert_no_raw_controls(r.stderr)
    assert_no_traceback(r)


def test_prompts_lint_prints_prompt_text_with_markup_and_escapes_as_data(tmp_path):
    bank = tmp_path / "bank.yaml"
    bank.write_text(
        "schema: cmrdx-prompt-bank/1\nname: t\nversion: '1'\nauthors: [a]\nfindings:\n"
        "  - id: f\n    label: \"F [/]\"\n    prompts: [\"x [/] \\e[2J y\", \"x [/] \\e[2J y\"]\n", encoding="utf-8")
    r = run_cli("prompts", "lint", "--no-model", str(bank))
    assert r.returncode == 1, r.stderr  # the duplicate prompt is an error of the bank
    assert "duplicate prompt" in r.stdout and "[/]" in r.stdout
    assert_no_raw_controls(r.stdout)
    assert_no_traceback(r)


def test_safe_shows_markup_emoji_codes_and_controls_as_text():
    from cmrdx.cli.text import console, plain, safe

    assert plain("a\x1b[31mb\x9bc\td\u202ee") == "a\\x1b[31mb\\x9bc\\x09d\\u202ee"
    assert plain("one\ntwo\x07", lines=True) == "one\ntwo\\x07"
    con = console()
    with con.capture() as cap:
        con.print(safe(HOSTILE))
    assert cap.get().rstrip("\n") == "[/] [bold]x\\x1b[2J\\x1b]0;pwned\\x07 :warning: \\u202eevil"


# -------------------------------------------------------------------------- outputs: devices, links, disks


def test_classify_output_to_dev_stdout_writes_the_json_to_stdout(study, tmp_path):
    r = run_cli("classify", str(study), "--device", "cpu", "--output", "/dev/stdout", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.lstrip().startswith("{") and '"schema": "cmrdx-classify/1"' in r.stdout
    assert Path("/dev/stdout").is_symlink() or Path("/dev/stdout").is_char_device()  # still a device, not a file


def test_classify_output_through_a_symlink_writes_its_target_and_keeps_the_link(study, tmp_path):
    target = tmp_path / "real" / "result.json"
    target.parent.mkdir()
    link = tmp_path / "link.json"
    link.symlink_to(target)
    r = run_cli("classify", str(study), "--device", "cpu", "--output", str(link), home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and '"schema": "cmrdx-classify/1"' in target.read_text()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_classify_output_to_dev_full_is_a_clear_error_with_exit_13(study, tmp_path):
    r = run_cli("classify", str(study), "--device", "cpu", "--output", "/dev/full", home=tmp_path)
    assert r.returncode == EXIT_CODES["OutputError"] == 13, r.stderr
    assert "/dev/full: cannot write here (No space left on device)" in r.stderr and "disk space" in r.stderr
    assert Path("/dev/full").is_char_device()
    assert_no_traceback(r)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["--version"], ["inspect", "{study}"], ["inspect", "{study}", "--json"]],
                         ids=["short-output", "table", "json"])
def test_stdout_on_dev_full_is_a_clear_error_with_exit_13(args, study):
    with open("/dev/full", "w") as full:
        r = run_cli(*[a.format(study=study) for a in args], stdout=full)
    assert r.returncode == 13, r.stderr
    assert r.stderr.strip().splitlines()[0] == "error: standard output: cannot write (No space left on device)"
    assert "Exception ignored" not in r.stderr
    assert_no_traceback(r)


def test_classify_refuses_an_output_folder_before_reading_the_study(tmp_path):
    (tmp_path / "reports").mkdir()
    r = run_cli("classify", str(tmp_path / "no-such-study"), "--report", str(tmp_path / "reports"))
    assert r.returncode == EXIT_CODES["OutputError"], r.stderr  # not "study not found": nothing was read
    assert f"{tmp_path / 'reports'}: is a folder" in r.stderr
    assert_no_traceback(r)


def test_classify_writes_no_output_when_another_output_cannot_be_written(study, tmp_path):
    (tmp_path / "fhir").mkdir()
    out = tmp_path / "result.json"
    r = run_cli("classify", str(study), "--device", "cpu", "--output", str(out), "--fhir", str(tmp_path / "fhir"),
                home=tmp_path)
    assert r.returncode == EXIT_CODES["OutputError"], r.stderr
    assert not out.exists()  # all or nothing
    r = run_cli("classify", str(study), "--device", "cpu", "--output", str(out), "--fhir", str(out), home=tmp_path)
    assert r.returncode == EXIT_CODES["OutputError"] and "named for both --output and --fhir" in r.stderr
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_classify_output_in_a_read_only_folder_exits_13_before_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run_cli("classify", str(tmp_path / "no-such-study"), "--output", str(ro / "r.json"))
    finally:
        ro.chmod(0o755)
    assert r.returncode == EXIT_CODES["OutputError"] and "not writable" in r.stderr, r.stderr


def test_index_store_that_is_a_file_is_refused_before_reading_the_archive(tmp_path):
    db = tmp_path / "store"
    db.write_text("a file, not a store folder")
    r = run_cli("index", str(tmp_path / "no-such-archive"), "--db", str(db))
    assert r.returncode == EXIT_CODES["OutputError"], r.stderr
    assert f"{db}: is a file, not a folder" in r.stderr
    assert_no_traceback(r)


# --------------------------------------------------------------------------------------------------- send


def _sr_like(tmp_path: Path) -> Path:
    from pydicom.data import get_testdata_file

    dst = tmp_path / "mr.dcm"
    dst.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    return dst


def test_send_to_an_unresolvable_host_exits_10(tmp_path):
    r = run_cli("send", str(_sr_like(tmp_path)), "--host", "no-such-host.invalid", "--port", "104", "--aet", "PACS",
                "--timeout", "2")
    assert r.returncode == EXIT_CODES["SendError"] == 10, r.stderr
    assert "no-such-host.invalid" in r.stderr and "does not resolve" in r.stderr
    assert_no_traceback(r)


class _BadPeer:
    """A TCP server that answers every connection with bytes that are not DICOM (``mode``): an endless stream
    that claims a huge PDU, or one byte at a time."""

    def __init__(self, mode: str):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.mode = mode
        self.stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        chunk = b"\x07\x00garbage" * 100 if self.mode == "garbage" else b"\x02"
        try:
            while not self.stop.is_set():
                conn.sendall(chunk)
                time.sleep(0.05 if self.mode == "garbage" else 0.3)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.parametrize("mode", ["garbage", "trickle"])
def test_send_to_a_peer_answering_garbage_exits_10_within_its_timeout(mode, tmp_path):
    peer = _BadPeer(mode)
    try:
        t0 = time.monotonic()
        r = run_cli("send", str(_sr_like(tmp_path)), "--host", "127.0.0.1", "--port", str(peer.port), "--aet", "PACS",
                    "--timeout", "1", timeout=90)
        elapsed = time.monotonic() - t0
    finally:
        peer.close()
    assert r.returncode == EXIT_CODES["SendError"], r.stderr
    assert "no valid DICOM answer within 1 s" in r.stderr
    assert elapsed < 30  # the timeout is 1 s; without a deadline the command never ends
    assert_no_traceback(r)
