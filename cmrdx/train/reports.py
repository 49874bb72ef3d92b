"""Reports as a RIS exports them: a CSV or JSONL file of (StudyInstanceUID or AccessionNumber, report text),
matched to the study folders of a training archive.

Why this module exists: a site's reports live in the RIS, not beside the images. An export is one file with a
row per report, keyed by the study's UID or, more often, by its accession number (the RIS's own key), and the
text is the whole report: clinical history, technique, findings, impression, sign-off. CMR-CLIP trains on the
impression: it is the part that says what the study shows in a sentence or two, as a zero-shot prompt does,
and it leaves out the history (about the patient, not the images) and the sign-off (names).

* ``read_reports(path)``: the file -> ``ReportTable``. Columns are found by name (``StudyInstanceUID`` /
  ``study_uid``, ``AccessionNumber`` / ``accession``, ``report`` / ``text`` ...), case and separators ignored;
  the CSV delimiter (``,`` ``;`` tab ``|``) is sniffed; quoted fields may span lines; CRLF is accepted; the file
  must be UTF-8 (a byte-order mark is dropped).
* ``extract_impression(text)``: the impression section when the report has headings, else the whole text.
* ``study_key(folder)``: a study folder's StudyInstanceUID and AccessionNumber, from one DICOM header.
* ``match_reports(table, keys)``: reports to studies, by UID first, then by accession; what stays unmatched on
  either side is counted and listed (``ReportMatch.summary()``, by UID / accession only: never a patient name,
  never a folder name, which at some sites is the patient's name).

Nothing here imports torch: ``cmrdx train --check-reports`` runs it without the ``train`` extra.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmrdx.errors import InputNotFoundError, UsageError

log = logging.getLogger(__name__)

# Column names, compared after lower-casing and dropping everything but letters and digits.
UID_COLUMNS = ("studyinstanceuid", "studyuid", "uid", "studyinstance")
ACCESSION_COLUMNS = ("accessionnumber", "accession", "accessionno", "accno", "acc")
TEXT_COLUMNS = ("report", "reporttext", "text", "reportbody", "body", "content", "impression", "findings")

# Headings that open the section CMR-CLIP trains on (compared lower-case, inner spaces collapsed). The first in
# the report wins; "summary"-like headings are taken only when there is no impression or conclusion.
IMPRESSION_HEADINGS = ("impression", "impressions", "final impression", "overall impression", "clinical impression",
                       "conclusion", "conclusions", "final conclusion", "summary and conclusion",
                       "summary and conclusions", "opinion", "interpretation", "diagnosis", "diagnoses",
                       "assessment",
                       # the same in a few other languages of RIS exports (de, fr, es, it, nl)
                       "beurteilung", "diagnose", "conclusión", "conclusiones", "impresión", "conclusione",
                       "conclusioni", "conclusie", "diagnostic")
SUMMARY_HEADINGS = ("summary", "overall summary", "summary of findings", "zusammenfassung", "résumé", "samenvatting")
# Other section headings: they end an impression section (as does any heading in the lists above).
# Anatomical sub-headings ("Left ventricle:") are not among them: structured impressions use them too.
OTHER_HEADINGS = ("findings", "finding", "technique", "techniques", "protocol", "sequences", "procedure", "history",
                  "clinical history", "clinical information", "clinical details", "clinical indication",
                  "indication", "indications", "reason for study", "reason for exam", "reason for examination",
                  "reason for referral", "referral", "comparison", "comparisons", "measurements",
                  "recommendation", "recommendations", "comment", "comments", "addendum", "examination",
                  "extracardiac findings", "limitations", "befund", "befunde", "anamnese", "fragestellung",
                  "indication clinique", "technique d'examen", "résultats", "hallazgos", "bevindingen")
# Lines that start a sign-off: the section (and any unheaded text) ends there, so that names of staff never
# become training text (and through the vocabulary, part of an exported model).
SIGN_OFF = re.compile(r"^\s*(electronically\s+signed|e-signed|signed\b|dictated\b|transcribed\b|reported\s+by|"
                      r"verified\s+by|authori[sz]ed\s+by|approved\s+by|reviewed\s+by|read\s+by|attending\b|"
                      r"consultant\s*:|radiologist\s*:|cardiologist\s*:|report\s+by)", re.IGNORECASE)
# A heading line: optional numbering or markdown marks, 1-6 words, then a colon (text may follow) or the end of
# the line. Whether it is a heading at all is decided by ``_heading_kind``.
_HEADING = re.compile(r"^\s*(?:\d{1,2}[.)]\s*)?[#*_]*\s*(?P<name>[^\W\d_](?:[^\W\d_]|[&/()' -]){0,60}?)\s*[*_]*\s*"
                      r"(?:(?P<colon>:)\s*(?P<rest>.*?)|)\s*$")
_BULLET = re.compile(r"^\s*(?:[-*\u2022\u00b7\u2013]|\d{1,2}[.)])\s+")


# ---------------------------------------------------------------- impression


def _norm_heading(name: str) -> str:
    return re.sub(r"\s+", " ", name.strip().lower().rstrip(".").strip())


def _heading_kind(line: str) -> tuple[str, str] | None:
    """("impression" | "summary" | "other", text after the colon) when ``line`` is a heading, else None.

    A known heading counts with a colon or alone on its line; an unknown one only in capitals with a colon, and
    long enough not to be an abbreviation that starts a sentence ("LVEF: 45%" is text, "CLINICAL NOTES:" a
    heading; "NORMAL STUDY" alone on its line is text)."""
    m = _HEADING.match(line)
    if not m:
        return None
    name, rest = m.group("name"), (m.group("rest") or "").strip(" *_#")
    key = _norm_heading(name)
    if key in IMPRESSION_HEADINGS:
        return "impression", rest
    if key in SUMMARY_HEADINGS:
        return "summary", rest
    if key in OTHER_HEADINGS:
        return "other", rest
    letters = re.sub(r"[\W\d_]", "", name)
    if name.upper() == name and m.group("colon") and (len(name.split()) >= 2 or len(letters) >= 6):
        return "other", rest
    return None


def normalise_text(text: str) -> str:
    """Line ends to ``\\n``, a byte-order mark and NULs dropped, trailing spaces trimmed."""
    text = text.replace("\ufeff", "").replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _clean(lines: list[str]) -> str:
    """Section lines -> training text: bullets and list numbers dropped (a lone "1." is no sentence), blank
    lines dropped, one line per item."""
    out = []
    for line in lines:
        line = _BULLET.sub("", line).strip()
        if line:
            out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class Impression:
    """What ``extract_impression`` found: the text, and the heading it came from (None: the whole report)."""

    text: str
    heading: str | None


def find_impression(text: str) -> Impression:
    """The impression section of a report, or the whole report when it has none.

    The section runs from an impression heading ("IMPRESSION:", "Conclusion", "Conclusions:", "Opinion" ...,
    any case; text may follow the colon on the heading's line) to the next heading or sign-off line. The first
    impression-like section with text wins; "Summary"-like sections count only when there is none. A report
    without such a heading is taken whole (up to a sign-off line)."""
    lines = normalise_text(text).split("\n")
    sections: list[tuple[str, str, list[str]]] = []  # (kind, heading line, body lines)
    current: tuple[str, str, list[str]] | None = None
    preamble: list[str] = []
    for line in lines:
        if SIGN_OFF.match(line):
            current = ("signoff", line, [])
            sections.append(current)
            continue
        h = _heading_kind(line)
        if h is not None:
            kind, rest = h
            current = (kind, line.split(":")[0].strip(" #*_"), [rest] if rest else [])
            sections.append(current)
        elif current is None:
            preamble.append(line)
        else:
            current[2].append(line)
    for wanted in ("impression", "summary"):
        for kind, heading, body in sections:
            if kind == wanted and _clean(body):
                return Impression(_clean(body), heading)
    # no impression: the whole report up to its sign-off, headings kept as text
    whole = []
    for line in lines:
        if SIGN_OFF.match(line):
            break
        whole.append(line)
    return Impression(_clean(whole), None)


def extract_impression(text: str) -> str:
    """The training text of a report: its impression section when it has one, else the whole report (both
    without a sign-off). See ``find_impression``."""
    return find_impression(text).text


# ---------------------------------------------------------------- the file


@dataclass(frozen=True)
class ReportRow:
    """One report of the file: where it is (1-based line of its first line), its keys and its raw text."""

    line: int
    study_uid: str | None
    accession: str | None
    text: str

    def key(self) -> dict[str, Any]:
        """How the row is named in logs and summaries (its keys and line, never its text)."""
        d: dict[str, Any] = {"line": self.line}
        if self.study_uid:
            d["study_uid"] = self.study_uid
        if self.accession:
            d["accession"] = self.accession
        return d


@dataclass
class ReportTable:
    """The rows of a reports file that have a key and a text; the others counted (``without_key``,
    ``without_text``), and rows repeating a key already seen listed in ``duplicates`` (the first is used)."""

    path: Path
    sha256: str
    rows: list[ReportRow] = field(default_factory=list)
    without_key: list[int] = field(default_factory=list)  # line numbers
    without_text: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """What identifies the file in a cache's or model's record (no content)."""
        return {"file": self.path.name, "sha256": self.sha256}


def _col(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _pick(columns: list[str], wanted: tuple[str, ...]) -> str | None:
    by_norm = {_col(c): c for c in reversed(columns)}  # the first of equal names wins
    for w in wanted:
        if w in by_norm:
            return by_norm[w]
    return None


def _key(v: Any) -> str | None:
    if v is None:
        return None
    s = str(v).replace("\x00", "").strip()
    return s or None


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start}, line {line})",
                         hint=f"export the reports as UTF-8, or convert the file: iconv -f latin1 -t utf-8 {path.name} "
                              f"> {path.stem}.utf8{path.suffix}") from None


def read_reports(path: str | Path) -> ReportTable:
    """Read a CSV (``.csv``, ``.tsv``, ``.txt``) or JSONL (``.jsonl``, ``.ndjson``, or any file whose first
    character is ``{``) reports file. Raises InputNotFoundError / UsageError naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no such reports file", hint="give the CSV or JSONL file the RIS exported")
    data = path.read_bytes()
    table = ReportTable(path=path, sha256=hashlib.sha256(data).hexdigest())
    text = _decode(path, data)
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or (
        path.suffix.lower() not in (".csv", ".tsv") and text.lstrip().startswith("{"))
    records = _jsonl_records(path, text) if jsonl else _csv_records(path, text)
    seen: set[tuple[str, str]] = set()
    for line, uid, acc, body in records:
        if not uid and not acc:
            table.without_key.append(line)
            continue
        row = ReportRow(line=line, study_uid=uid, accession=acc, text=body or "")
        if not normalise_text(row.text):
            table.without_text.append(row.key())
            continue
        keys = {("uid", uid) if uid else None, ("acc", acc) if acc else None} - {None}
        if keys & seen:
            table.duplicates.append(row.key())
            continue
        seen |= keys  # type: ignore[arg-type]
        table.rows.append(row)
    if not table.rows:
        raise UsageError(f"{path}: no report with a study key and a text in {len(table.without_key)} rows without a "
                         f"key and {len(table.without_text)} without text",
                         hint="each row needs a StudyInstanceUID or an AccessionNumber, and the report text")
    return table


def _columns_hint() -> str:
    return ("name the columns StudyInstanceUID and/or AccessionNumber, and report (or text); "
            "JSONL objects take the same keys")


def _csv_records(path: Path, text: str) -> Iterable[tuple[int, str | None, str | None, str | None]]:
    # the delimiter is sniffed from the header line; the quoting is RFC 4180's (quotes doubled inside quoted
    # fields, which may span lines), which one line cannot show to a sniffer
    head = text.split("\n", 1)[0]
    try:
        delimiter = csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), csv.excel, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise UsageError(f"{path}: empty reports file", hint=_columns_hint()) from None
    except csv.Error as exc:
        raise UsageError(f"{path}: not CSV ({exc})", hint=_columns_hint()) from None
    uid_c, acc_c, text_c = (_pick(header, w) for w in (UID_COLUMNS, ACCESSION_COLUMNS, TEXT_COLUMNS))
    if text_c is None or (uid_c is None and acc_c is None):
        raise UsageError(f"{path}: columns {header[:8]} have no study key (StudyInstanceUID, AccessionNumber) or no "
                         "report text column", hint=_columns_hint())
    idx = {c: header.index(c) for c in (uid_c, acc_c, text_c) if c is not None}

    def get(row: list[str], c: str | None) -> str | None:
        return row[idx[c]] if c is not None and idx[c] < len(row) else None

    line = reader.line_num + 1  # the first line of the next record
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UsageError(f"{path}: line {line}: {exc}",
                             hint="check the quoting of that row (a report with quotes or line breaks must be "
                                  "quoted, with quotes doubled)") from None
        if any(cell.strip() for cell in row):
            yield line, _key(get(row, uid_c)), _key(get(row, acc_c)), get(row, text_c)
        line = reader.line_num + 1


def _jsonl_records(path: Path, text: str) -> Iterable[tuple[int, str | None, str | None, str | None]]:
    for n, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}: line {n} is not JSON ({exc.msg})",
                             hint="one JSON object per line (JSON Lines); line breaks inside a report are \\n") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}: line {n} is not a JSON object", hint=_columns_hint())
        cols = list(obj)
        uid_c, acc_c, text_c = (_pick(cols, w) for w in (UID_COLUMNS, ACCESSION_COLUMNS, TEXT_COLUMNS))
        if text_c is None and (uid_c or acc_c):
            raise UsageError(f"{path}: line {n} has no report text (keys {cols[:8]})", hint=_columns_hint())
        body = obj.get(text_c) if text_c else None
        yield (n, _key(obj.get(uid_c)) if uid_c else None, _key(obj.get(acc_c)) if acc_c else None,
               body if isinstance(body, str) else None if body is None else str(body))


# ---------------------------------------------------------------- studies


@dataclass(frozen=True)
class StudyKey:
    """A study folder's identity as the RIS knows it (read from a DICOM header of the folder)."""

    folder: str  # the folder's name under the archive (never logged: it may be a patient's name)
    study_uid: str | None
    accession: str | None

    def key(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.study_uid:
            d["study_uid"] = self.study_uid
        if self.accession:
            d["accession"] = self.accession
        return d or {"study_uid": None}


NOT_DICOM_SUFFIXES = (".txt", ".json", ".csv", ".jsonl", ".md", ".xml", ".pdf")


def study_key(folder: str | Path, *, max_files: int = 50) -> StudyKey:
    """StudyInstanceUID and AccessionNumber of the first readable DICOM header in ``folder`` (at most
    ``max_files`` candidates tried: a folder of non-DICOM files is not read to its end)."""
    from cmrdx.dicom.series import capture_read_warnings, read_series_header
    from cmrdx.dicom.source import iter_refs

    folder = Path(folder)
    tried = 0
    with capture_read_warnings():
        for ref in iter_refs(folder):
            if str(ref).lower().endswith(NOT_DICOM_SUFFIXES):
                continue
            ds, _ = read_series_header(ref)
            tried += 1
            if ds is not None and (ds.get("StudyInstanceUID") or ds.get("AccessionNumber")):
                return StudyKey(folder.name, _key(ds.get("StudyInstanceUID")), _key(ds.get("AccessionNumber")))
            if tried >= max_files:
                break
    return StudyKey(folder.name, None, None)


@dataclass
class ReportMatch:
    """Reports assigned to study folders (``by_folder``: folder name -> (training text, how)), and what stayed
    unmatched. ``how`` is "uid", "accession" or "report.txt"."""

    table: ReportTable
    by_folder: dict[str, tuple[str, str]] = field(default_factory=dict)
    headed: int = 0  # reports whose impression section was found (the others were taken whole)
    unmatched_studies: list[dict[str, Any]] = field(default_factory=list)
    unmatched_reports: list[dict[str, Any]] = field(default_factory=list)
    several_studies: list[dict[str, Any]] = field(default_factory=list)  # a report matched more than one study
    studies_without_dicom: int = 0
    n_studies: int = 0

    def counts(self) -> dict[str, Any]:
        """Counts only (what a model's provenance may carry: no UIDs, no accession numbers)."""
        how: dict[str, int] = {}
        for _, h in self.by_folder.values():
            how[h] = how.get(h, 0) + 1
        t = self.table
        return {"reports_file": t.describe(), "report_rows": len(t.rows), "rows_without_key": len(t.without_key),
                "rows_without_text": len(t.without_text), "duplicate_rows": len(t.duplicates),
                "studies": self.n_studies, "matched_by": how, "impression_found": self.headed,
                "taken_whole": sum(1 for _, h in self.by_folder.values() if h != "report.txt") - self.headed,
                "unmatched_studies": len(self.unmatched_studies), "unmatched_reports": len(self.unmatched_reports),
                "reports_matching_several_studies": len(self.several_studies),
                "studies_without_dicom": self.studies_without_dicom}

    def summary(self) -> dict[str, Any]:
        """Counts and the lists (by UID / accession and line: for the site's own eyes, never for a model)."""
        return {**self.counts(), "lists": {
            "unmatched_studies": self.unmatched_studies, "unmatched_reports": self.unmatched_reports,
            "reports_matching_several_studies": self.several_studies, "duplicate_rows": self.table.duplicates,
            "rows_without_key": self.table.without_key, "rows_without_text": self.table.without_text}}

    def write(self, path: str | Path) -> Path:
        from cmrdx.fileio import atomic_write

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.summary(), indent=1))
        return path

    def log_summary(self, logger: logging.Logger = log, *, show: int = 10) -> None:
        c = self.counts()
        logger.info("reports %s: %d rows; studies %d; matched %s; impression found in %d, taken whole %d",
                    c["reports_file"]["file"], c["report_rows"], c["studies"], c["matched_by"] or "none",
                    c["impression_found"], c["taken_whole"])
        for what, items in (("studies without a report", self.unmatched_studies),
                            ("reports matching no study", self.unmatched_reports)):
            if items:
                logger.warning("%d %s: %s%s", len(items), what, ", ".join(_name(k) for k in items[:show]),
                               " ..." if len(items) > show else "")
        for what, n in (("rows without a study key", c["rows_without_key"]),
                        ("rows without text", c["rows_without_text"]),
                        ("duplicate rows (first used)", c["duplicate_rows"]),
                        ("reports matching several studies", c["reports_matching_several_studies"]),
                        ("folders without a readable DICOM header", c["studies_without_dicom"])):
            if n:
                logger.warning("%d %s", n, what)


def _name(k: dict[str, Any]) -> str:
    parts = [f"line {k['line']}"] if "line" in k else []
    if k.get("study_uid"):
        parts.append(f"uid {k['study_uid']}")
    if k.get("accession"):
        parts.append(f"accession {k['accession']}")
    return " ".join(parts) or "?"


def match_reports(table: ReportTable, studies: Iterable[StudyKey], *,
                  report_txt: dict[str, str] | None = None) -> ReportMatch:
    """Assign reports to studies: a row's StudyInstanceUID first, then its AccessionNumber. A study that no row
    matches takes its folder's ``report.txt`` when ``report_txt`` (folder -> text) has one; otherwise it is
    listed as unmatched, as is every row that matched no study."""
    studies = list(studies)
    m = ReportMatch(table=table, n_studies=len(studies))
    by_uid: dict[str, list[StudyKey]] = {}
    by_acc: dict[str, list[StudyKey]] = {}
    for s in studies:
        if s.study_uid is None and s.accession is None:
            m.studies_without_dicom += 1
        if s.study_uid:
            by_uid.setdefault(s.study_uid, []).append(s)
        if s.accession:
            by_acc.setdefault(s.accession, []).append(s)
    for row in table.rows:
        hits, how = [], ""
        if row.study_uid and row.study_uid in by_uid:
            hits, how = by_uid[row.study_uid], "uid"
        elif row.accession and row.accession in by_acc:
            hits, how = by_acc[row.accession], "accession"
        hits = [s for s in hits if s.folder not in m.by_folder]  # an earlier row matched it already
        if not hits:
            if not how:
                m.unmatched_reports.append(row.key())
            else:
                table.duplicates.append(row.key())
            continue
        if len(hits) > 1:
            m.several_studies.append({**row.key(), "studies": len(hits)})
        imp = find_impression(row.text)
        for s in hits:
            m.by_folder[s.folder] = (imp.text, how)
            m.headed += imp.heading is not None
    for s in studies:
        if s.folder in m.by_folder:
            continue
        if report_txt and s.folder in report_txt:
            m.by_folder[s.folder] = (report_txt[s.folder], "report.txt")
        else:
            m.unmatched_studies.append(s.key())
    return m
