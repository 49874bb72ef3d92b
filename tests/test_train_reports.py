"""Reports as a RIS exports them (cmrdx.train.reports): the impression found in reports of several styles, CSV
and JSONL files as they come (BOM, CRLF, semicolons, quoted multi-line fields, accents), studies matched by
StudyInstanceUID and by AccessionNumber, what stays unmatched counted and listed without a patient's name, and
the archive source, the trainer and `cmrdx train --check-reports` using it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.errors import InputNotFoundError, UsageError
from cmrdx.train.reports import (
    ReportTable,
    StudyKey,
    extract_impression,
    find_impression,
    match_reports,
    read_reports,
    study_key,
)

US = ("EXAM: CARDIAC MRI WITH AND WITHOUT CONTRAST\r\n"
      "CLINICAL HISTORY: 45M, chest pain, troponin rise. ?myocarditis\r\n"
      "TECHNIQUE: Cine SSFP, T2 STIR, LGE (PSIR).\r\n"
      "FINDINGS:\r\n"
      "Left ventricle: mildly dilated (LVEDVi 112 ml/m2). LVEF 48%.\r\n"
      "\r\n"
      "IMPRESSION:\r\n"
      "1. Mildly dilated left ventricle with mildly reduced systolic function.\r\n"
      "2. Subepicardial late gadolinium enhancement of the basal inferolateral wall, consistent with myocarditis.\r\n"
      "\r\n"
      "Electronically signed by: Jane Roe, MD on 03/04/2024 10:12\r\n")
UK = ("Indication: Breathlessness.\n"
      "Findings: Normal LV size. Asymmetric septal hypertrophy, maximal wall thickness 19 mm.\n"
      "Conclusion: Hypertrophic cardiomyopathy with asymmetric septal hypertrophy. No LGE.\n"
      "Reported by Dr A. Smith, Consultant Cardiologist")
STRUCTURED = ("Impression\n"
              "- Dilated cardiomyopathy.\n"
              "- LVEF: 25%.\n"
              "Left ventricle: severely dilated.\n"
              "Recommendations\n"
              "Device assessment.")
FRENCH = ("Indication clinique : dyspnée.\n"
          "Résultats : VG dilaté.\n"
          "Conclusion : Cardiomyopathie dilatée à fraction d'éjection altérée (35 %). Pas de rehaussement tardif.\n")
UNHEADED = "Normal biventricular size and systolic function.\nNo late gadolinium enhancement.\n"
SUMMARY_ONLY = "History: palpitations.\nSUMMARY: Normal study.\n"
BOTH = "Summary: see below.\nConclusions: Hypertrophic cardiomyopathy.\n"
EMPTY_FIRST = "IMPRESSION:\nCONCLUSION: Normal CMR.\n"


@pytest.mark.parametrize(("report", "impression", "heading"), [
    (US, "Mildly dilated left ventricle with mildly reduced systolic function.\n"
         "Subepicardial late gadolinium enhancement of the basal inferolateral wall, consistent with myocarditis.",
     "IMPRESSION"),
    (UK, "Hypertrophic cardiomyopathy with asymmetric septal hypertrophy. No LGE.", "Conclusion"),
    # a value with a colon and an anatomical sub-heading stay in the impression; a known section ends it
    (STRUCTURED, "Dilated cardiomyopathy.\nLVEF: 25%.\nLeft ventricle: severely dilated.", "Impression"),
    (FRENCH, "Cardiomyopathie dilatée à fraction d'éjection altérée (35 %). Pas de rehaussement tardif.", "Conclusion"),
    (UNHEADED, "Normal biventricular size and systolic function.\nNo late gadolinium enhancement.", None),
    (SUMMARY_ONLY, "Normal study.", "SUMMARY"),
    (BOTH, "Hypertrophic cardiomyopathy.", "Conclusions"),  # an impression heading wins over a summary
    (EMPTY_FIRST, "Normal CMR.", "CONCLUSION"),  # an empty section gives way to the next
    ("**Findings:** LV dilated.\n**Impression:**\nDilated LV.\n## Recommendations\nFollow-up.", "Dilated LV.",
     "Impression"),
])
def test_the_impression_of_reports_of_several_styles(report, impression, heading):
    imp = find_impression(report)
    assert (imp.text, imp.heading) == (impression, heading)
    assert extract_impression(report) == impression


def test_no_sign_off_reaches_the_training_text():
    unheaded = "LV normal. No LGE.\nDictated by: John Doe\nTranscribed by: Mary Major"
    assert extract_impression(unheaded) == "LV normal. No LGE."
    assert "Roe" not in extract_impression(US) and "Smith" not in extract_impression(UK)


def _write(path: Path, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    data = text.replace("\n", "\r\n") if crlf else text
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode("utf-8"))
    return path


def test_a_csv_as_a_ris_exports_it(tmp_path):
    """Semicolons, a byte-order mark, CRLF line ends, quoted fields spanning lines with doubled quotes, accents,
    a blank line, a row without key and one without text, a repeated key; columns found by name."""
    csv_text = ('Accession Number;Study Instance UID;Report Text;Radiologist\n'
                'A100;1.2.3.100;"FINDINGS: LV dilated.\nIMPRESSION:\nDilated LV, ""severe"".\nSigned: X";Dr X\n'
                '\n'
                'A101;;"Conclusion : Cardiomyopathie hypertrophique, épaisseur 19 mm.";Dr Y\n'
                ';;"no key at all";Dr Z\n'
                'A102;1.2.3.102;;Dr Z\n'
                'A100;;"a second report for A100";Dr X\n')
    t = read_reports(_write(tmp_path / "ris.csv", csv_text, bom=True, crlf=True))
    assert [(r.line, r.accession, r.study_uid) for r in t.rows] == [(2, "A100", "1.2.3.100"), (7, "A101", None)]
    assert t.rows[0].text == 'FINDINGS: LV dilated.\r\nIMPRESSION:\r\nDilated LV, "severe".\r\nSigned: X'
    assert extract_impression(t.rows[0].text) == 'Dilated LV, "severe".'
    assert extract_impression(t.rows[1].text) == "Cardiomyopathie hypertrophique, épaisseur 19 mm."
    assert t.without_key == [8]
    assert t.without_text == [{"line": 9, "study_uid": "1.2.3.102", "accession": "A102"}]
    assert t.duplicates == [{"line": 10, "accession": "A100"}]
    assert len(t.sha256) == 64 and t.describe() == {"file": "ris.csv", "sha256": t.sha256}
    # a tab-separated export with other column names
    tsv = read_reports(_write(tmp_path / "ris.tsv", "StudyInstanceUID\treport\n1.2.9\tImpression: normal.\n"))
    assert [(r.study_uid, r.text) for r in tsv.rows] == [("1.2.9", "Impression: normal.")]


def test_a_jsonl_export(tmp_path):
    lines = [json.dumps({"AccessionNumber": "B1", "text": "IMPRESSION:\nAmyloid pattern of LGE.\nSigned X"}),
             "",
             json.dumps({"study_uid": "1.2.3.4", "accession": 42, "report": "Normal CMR."}, ensure_ascii=False),
             json.dumps({"StudyInstanceUID": "1.2.3.5", "report": "Résumé : VG normal."}, ensure_ascii=False)]
    t = read_reports(_write(tmp_path / "ris.jsonl", "\n".join(lines) + "\n", crlf=True))
    assert [(r.line, r.study_uid, r.accession) for r in t.rows] == [(1, None, "B1"), (3, "1.2.3.4", "42"),
                                                                    (4, "1.2.3.5", None)]
    assert extract_impression(t.rows[0].text) == "Amyloid pattern of LGE."
    assert extract_impression(t.rows[2].text) == "VG normal."
    # a JSONL file whose name says nothing is recognised by its first character
    assert len(read_reports(_write(tmp_path / "export.txt", lines[0] + "\n")).rows) == 1


def test_files_that_are_not_reports_are_named_with_the_fix(tmp_path):
    with pytest.raises(InputNotFoundError, match="nope.csv: no such reports file"):
        read_reports(tmp_path / "nope.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("AccessionNumber,report\nA1,Cardiomyopathie dilat\xe9e\n".encode("latin-1"))
    with pytest.raises(UsageError, match=r"latin.csv: not UTF-8 text \(byte 47, line 2\)") as e:
        read_reports(latin)
    assert "iconv -f latin1 -t utf-8" in (e.value.hint or "")
    with pytest.raises(UsageError, match="no study key") as e:
        read_reports(_write(tmp_path / "cols.csv", "PatientID,report\n1,x\n"))
    assert "StudyInstanceUID" in (e.value.hint or "")
    with pytest.raises(UsageError, match="line 2 is not JSON"):
        read_reports(_write(tmp_path / "bad.jsonl", '{"accession": "A", "report": "x"}\n{"accession": \n'))
    with pytest.raises(UsageError, match="no report with a study key and a text"):
        read_reports(_write(tmp_path / "empty.csv", "AccessionNumber,report\n,\n"))


def _dicom(folder: Path, study_uid: str | None, accession: str | None) -> None:
    """A header-only MR object of a study (all ``study_key`` reads), with a patient's name in it."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.4", generate_uid(), "MR"
    if study_uid:
        ds.StudyInstanceUID = study_uid
    if accession:
        ds.AccessionNumber = accession
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-SECRET"
    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID, fm.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = fm
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / "IM0001", enforce_file_format=True)


def test_studies_matched_by_uid_then_accession_and_the_rest_listed(tmp_path, caplog):
    arch = tmp_path / "archive"
    _dicom(arch / "Doe_Jane_1" / "DICOM", "1.2.3.1", "ACC1")  # matched by UID
    _dicom(arch / "Doe_Jane_2", "1.2.3.2", "ACC2")  # by accession
    _dicom(arch / "Roe_Rick_3", "1.2.3.3", "ACC3")  # by nothing: listed
    _dicom(arch / "Roe_Rick_4", "1.2.3.4", None)  # no report row, but a report.txt
    (arch / "Roe_Rick_4" / "report.txt").write_text("Normal study.\n")
    _dicom(arch / "dup_a", "1.2.3.5", "ACC5")
    _dicom(arch / "dup_b", "1.2.3.6", "ACC5")  # the same accession on two studies
    (arch / "notes").mkdir()
    (arch / "notes" / "readme.txt").write_text("not a study")
    keys = [study_key(d) for d in sorted(arch.iterdir()) if d.name != "notes"]
    assert keys[0] == StudyKey("Doe_Jane_1", "1.2.3.1", "ACC1")
    assert study_key(arch / "notes") == StudyKey("notes", None, None)
    rows = ("StudyInstanceUID,AccessionNumber,report\n"
            "1.2.3.1,WRONG,IMPRESSION: Dilated LV.\n"
            ",ACC2,Conclusion: Normal.\n"
            "9.9.9,ACC9,IMPRESSION: Nobody's.\n"
            ",ACC5,Impression: Shared accession.\n"
            "1.2.3.1,,IMPRESSION: again\n")
    table = read_reports(_write(tmp_path / "ris.csv", rows))
    caplog.set_level(logging.INFO, logger="cmrdx.train.reports")
    m = match_reports(table, keys, report_txt={"Roe_Rick_4": "Normal study."})
    assert m.by_folder == {"Doe_Jane_1": ("Dilated LV.", "uid"), "Doe_Jane_2": ("Normal.", "accession"),
                           "Roe_Rick_4": ("Normal study.", "report.txt"), "dup_a": ("Shared accession.", "accession"),
                           "dup_b": ("Shared accession.", "accession")}
    assert m.unmatched_studies == [{"study_uid": "1.2.3.3", "accession": "ACC3"}]
    assert m.unmatched_reports == [{"line": 4, "study_uid": "9.9.9", "accession": "ACC9"}]
    assert m.several_studies == [{"line": 5, "accession": "ACC5", "studies": 2}]
    assert table.duplicates == [{"line": 6, "study_uid": "1.2.3.1"}]
    c = m.counts()
    assert c["matched_by"] == {"uid": 1, "accession": 3, "report.txt": 1}
    assert (c["impression_found"], c["taken_whole"], c["unmatched_studies"], c["unmatched_reports"]) == (4, 0, 1, 1)
    path = m.write(tmp_path / "work" / "reports-match.json")
    m.log_summary()
    said = path.read_text() + "\n".join(r.getMessage() for r in caplog.records)
    assert "ACC3" in said and "9.9.9" in said  # listed by UID and accession, for the site to find them
    for secret in ("Doe", "Jane", "Roe", "PID-SECRET"):  # never by patient or folder name
        assert secret not in said, secret
    assert "1.2.3.3" not in json.dumps(c)  # the counts (what a model's provenance carries) list nobody


def test_an_archive_trains_on_the_impressions_of_its_ris_export(tmp_path):
    """Three phantom studies written as DICOM: one matched by UID, one by accession, one left with its
    report.txt; another without any report is skipped and listed; a training step runs on the three pairs, and
    `cmrdx train --check-reports` says the same without training."""
    from cmrdx.synth import write_study
    from cmrdx.synth.params import sample_params
    from cmrdx.train.data import ArchiveSource, build_cache
    from cmrdx.train.trainer import TrainConfig

    arch = tmp_path / "arch"
    for i in range(4):
        write_study(arch / f"s{i}", sample_params(20 + i, matrix=64, n_phases=8), distractors=False)
    keys = [study_key(arch / f"s{i}") for i in range(4)]
    (arch / "s0" / "report.txt").unlink()
    (arch / "s1" / "report.txt").unlink()
    (arch / "s3" / "report.txt").unlink()
    ris = tmp_path / "ris.jsonl"
    ris.write_text("\n".join(json.dumps(r) for r in [
        {"StudyInstanceUID": keys[0].study_uid, "report": "HISTORY: x\nIMPRESSION:\nDilated left ventricle.\nSigned Y"},
        {"AccessionNumber": keys[1].accession, "report": "Conclusion: Normal left ventricle."},
        {"AccessionNumber": "NOT-HERE", "report": "Impression: lost."}]) + "\n")
    src = ArchiveSource(arch, reports=ris)
    assert src.describe()["reports"]["file"] == "ris.jsonl"
    cfg = TrainConfig(frames=8, image_size=32, resize=48, crop=32)
    cache = build_cache(src, cfg.recipe(), tmp_path / "cache", progress=False)
    assert cache.meta["ids"] == ["s0", "s1", "s2", None]
    assert cache.reports([0, 1]) == ["Dilated left ventricle.", "Normal left ventricle."]
    assert cache.reports([2])[0] == (arch / "s2" / "report.txt").read_text().strip()
    assert cache.skipped == {"report matching no study": 1, "study without a report": 1}
    # the trainer writes the match to its work folder and records counts only in the model's provenance
    pytest.importorskip("torch")
    import shutil

    from cmrdx.train.trainer import Trainer

    shutil.copytree(tmp_path / "cache", tmp_path / "run" / "cache")  # the same source and recipe: no decoding
    tiny = dict(frames=8, image_size=32, resize=48, crop=32, patch=8, width=32, depth=1, heads=2, text_hidden=32,
                text_layers=1, text_heads=2, text_intermediate=64, projection_dim=16, vocab_size=120, max_length=64,
                batch_size=2, epochs=1, val_fraction=0.0, threads=1)
    tr = Trainer(TrainConfig(archive=str(arch), reports=str(ris), **tiny), tmp_path / "run", progress=False)
    tr.run()
    assert tr.step == 1 and len(tr.train_idx) == 3
    prov = tr.provenance()["data"]
    assert prov["reports"] == {"file": "ris.jsonl", "sha256": src.reports.sha256}
    assert prov["reports_matched"]["matched_by"] == {"uid": 1, "accession": 1, "report.txt": 1}
    assert "NOT-HERE" not in json.dumps(prov) and keys[3].study_uid not in json.dumps(prov)
    assert json.loads((tmp_path / "run" / "reports-match.json").read_text())["unmatched_reports"] == 1
    r = CliRunner().invoke(app, ["train", "--data", str(arch), "--reports", str(ris), "--check-reports",
                                 "--work", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "matched: 1 by accession, 1 by report.txt, 1 by uid" in said
    assert f"1 studies without a report: study_uid {keys[3].study_uid}" in said
    assert "1 reports matching no study: line 3, accession NOT-HERE" in said
    summary = json.loads((tmp_path / "work" / "reports-match.json").read_text())
    assert summary["lists"]["unmatched_reports"] == [{"line": 3, "accession": "NOT-HERE"}]
    r = CliRunner().invoke(app, ["train", "--reports", str(ris), "--out", str(tmp_path / "m")])
    assert r.exit_code == 2 and "give --data too" in r.output


def test_reading_reports_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, cmrdx.train.reports, cmrdx.train.data, cmrdx.train.distributed, cmrdx.cli.train\n"
            "print(sorted(m for m in ('torch', 'transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_report_table_without_rows_matches_nothing(tmp_path):
    t = ReportTable(path=tmp_path / "x.csv", sha256="0" * 64)
    m = match_reports(t, [StudyKey("a", "1", None)])
    assert m.unmatched_studies == [{"study_uid": "1"}] and not m.by_folder
