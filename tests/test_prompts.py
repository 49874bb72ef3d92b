"""Prompt banks: the shipped banks load; every schema defect is reported with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmrdx.errors import PromptBankError
from cmrdx.zeroshot.bank import load_bank, parse_bank, shipped_banks

GOOD = """\
schema: cmrdx-prompt-bank/1
name: test
version: "1"
authors: [Dr A]
findings:
  - id: lv_dilation
    label: LV dilation
    prompts:
      - Left ventricle is dilated
    thresholds:
      - model: m
        threshold: 0.5
  - id: lge
    label: LGE
    prompts: [There is scar]
    negative_prompts: [No late enhancement]
"""


def test_shipped_banks_load_and_hold_the_cmrclip_findings():
    banks = shipped_banks()
    assert {"cmr-findings", "cmr-diagnoses"} <= set(banks)
    b = load_bank("cmr-findings")
    ids = [f.id for f in b.findings]
    assert ids[:7] == ["lv_dysfunction", "rv_dysfunction", "lv_dilation", "rv_dilation", "lv_hypertrophy", "lge", "aortic_dilation"]
    assert "Left ventricle is enlarged in size" in b.finding("lv_dilation").prompts
    assert len(b.finding("lge").prompts) == 3
    assert len(b.sha256) == 64
    d = load_bank("cmr-diagnoses")
    assert {"dilated_cardiomyopathy", "hypertrophic_cardiomyopathy", "normal"} <= {f.id for f in d.findings}


def test_good_bank_parses():
    b = parse_bank(GOOD, Path("t.yaml"))
    assert b.finding("lv_dilation").calibration_for("m", None).threshold == 0.5
    assert b.finding("lge").negative_prompts == ["No late enhancement"]
    assert b.texts == ["Left ventricle is dilated", "There is scar", "No late enhancement"]


@pytest.mark.parametrize(
    "old,new,line,needle",
    [
        ("    label: LV dilation\n", "    label: LV dilation\n    colour: red\n", 8, "colour: unknown key"),
        ("    label: LV dilation\n", "", 6, "missing required key `label`"),
        ("        threshold: 0.5\n", "        threshold: high\n", 12, "expected a number"),
        ("      - Left ventricle is dilated\n", "      - ''\n", 9, "empty text"),
        ("  - id: lge\n", "  - id: lv_dilation\n", 13, "duplicate id (first at line 6)"),
        ("    prompts: [There is scar]\n", "    prompts: There is scar\n", 15, "expected a list"),
        ("schema: cmrdx-prompt-bank/1\n", "schema: cmrdx-prompt-bank/9\n", 1, "unsupported schema"),
        ("    label: LGE\n", "    label: LGE\n    label: again\n", 15, "duplicate key"),
        ("  - id: lge\n", "  - id: LGE finding\n", 13, "bad id"),
        ("    prompts: [There is scar]\n", "    prompts: [There is scar\n", 16, "not valid YAML"),
    ],
)
def test_each_defect_names_file_line_and_key(old, new, line, needle):
    assert old in GOOD
    with pytest.raises(PromptBankError) as ei:
        parse_bank(GOOD.replace(old, new, 1), Path("bank.yaml"))
    msg = ei.value.message
    assert msg.startswith(f"bank.yaml:{line}:"), msg
    assert needle in msg, msg
    assert ei.value.hint


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(PromptBankError) as ei:
        parse_bank(GOOD.replace("    label: LV dilation", "    lable: LV dilation"), Path("b.yaml"))
    assert ei.value.message.startswith("b.yaml:7: findings[0].lable: unknown key")
    assert "`label`" in ei.value.hint


def test_unsafe_yaml_tags_are_refused():
    evil = GOOD.replace("name: test", "name: !!python/object/apply:os.system ['echo pwned']")
    with pytest.raises(PromptBankError):
        parse_bank(evil, Path("evil.yaml"))


def test_missing_bank_lists_shipped_ones():
    with pytest.raises(PromptBankError) as ei:
        load_bank("no-such-bank")
    assert "cmr-findings" in ei.value.hint


@pytest.mark.parametrize("where,old,new,line", [
    ("threshold", "        threshold: 0.5\n", "        threshold: .nan\n", 12),
    ("threshold", "        threshold: 0.5\n", "        threshold: .inf\n", 12),
    ("threshold", "        threshold: 0.5\n", "        threshold: -.Inf\n", 12),
    ("threshold", "        threshold: 0.5\n", "        threshold: 1.0e+999\n", 12),  # overflows to infinity
    ("platt", "        threshold: 0.5\n", "        threshold: 0.5\n        platt: {a: .nan, b: 0}\n", 13),
    ("temperature", "authors: [Dr A]\n", "authors: [Dr A]\nscoring: {temperature: .inf}\n", 5),
])
def test_nan_and_infinite_numbers_in_a_bank_are_refused_with_file_line(where, old, new, line):
    """A NaN threshold makes every comparison false: each finding would be called "absent" without a word."""
    with pytest.raises(PromptBankError) as ei:
        parse_bank(GOOD.replace(old, new, 1), Path("bank.yaml"))
    msg = ei.value.message
    assert msg.startswith(f"bank.yaml:{line}:") and where in msg and "expected a finite number" in msg, msg
    assert ei.value.hint


def test_load_bank_names_the_line_of_a_non_utf8_byte_and_an_unreadable_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(GOOD.encode().replace(b"Dr A", b"Dr \xe9"))  # Latin-1, not UTF-8
    with pytest.raises(PromptBankError, match=r"bad\.yaml:4: not UTF-8"):
        load_bank(bad)
    (tmp_path / "folder.yaml").mkdir()
    from cmrdx.zeroshot.bank import read_bank_text

    with pytest.raises(PromptBankError, match="is a folder"):
        read_bank_text(tmp_path / "folder.yaml")
    with pytest.raises(PromptBankError, match="no such file"):
        read_bank_text(tmp_path / "absent.yaml")


@pytest.mark.parametrize("kind", ["missing", "folder", "not-utf8"])
def test_prompts_lint_reports_a_missing_folder_or_non_utf8_bank_as_its_error(kind, tmp_path):
    from typer.testing import CliRunner

    from cmrdx.cli import app

    path = tmp_path / "bank.yaml"
    if kind == "folder":
        path.mkdir()
    elif kind == "not-utf8":
        path.write_bytes(b"schema: cmrdx-prompt-bank/1\nname: \xff\xfe\n")
    r = CliRunner().invoke(app, ["prompts", "lint", "--no-model", str(path)])
    assert isinstance(r.exception, SystemExit) and r.exit_code == 1, r.output  # lint's "the bank has errors"
    expect = {"missing": "no such file", "folder": "is a folder", "not-utf8": "bank.yaml:2: not UTF-8"}[kind]
    assert expect in r.output.replace("\n", " ") and "1 error(s)" in r.output


def _long_prompt_bank(tmp_path: Path, words: int) -> Path:
    bank = tmp_path / "long.yaml"
    bank.write_text(GOOD.replace("      - Left ventricle is dilated\n",
                                 "      - Left ventricle is dilated\n      - " + "dilated " * words + "\n"))
    return bank


def test_classify_refuses_a_prompt_longer_than_the_model_reads_as_lint_does(tmp_path):
    """The encoder truncates to the tokenizer's max_length: a longer prompt would be scored as a text its author
    did not write. classify refuses it (exit 9) with the bank's file and line, as lint calls it an error."""
    from cmrdx.model.loader import get_encoder, model_sha256
    from cmrdx.pipeline.classify import classify
    from cmrdx.zeroshot.authoring import lint_bank

    root = Path(__file__).resolve().parents[1]
    bank = _long_prompt_bank(tmp_path, 300)
    enc = get_encoder(None, "cpu")
    limit = int(enc.manifest.tokenizer["max_length"])
    assert limit < 300
    with pytest.raises(PromptBankError) as ei:
        classify(root / "examples" / "phantom-study", banks=[str(bank)], device="cpu", text_cache_dir=tmp_path / "c")
    msg = ei.value.message
    assert msg.startswith(f"{bank}:6: findings[lv_dilation]: prompt 'dilated dilated") and f"over the {limit}" in msg
    assert ei.value.exit_code == 9 and "cmrdx prompts lint" in ei.value.hint
    _, issues = lint_bank(bank, enc, model_sha256(enc.manifest))
    assert any(i.level == "error" and f"over the model's {limit}" in i.message for i in issues)
    ok = _long_prompt_bank(tmp_path, limit - 10)  # within the limit: scored
    res = classify(root / "examples" / "phantom-study", banks=[str(ok)], device="cpu", text_cache_dir=tmp_path / "c")
    assert len(res.findings) == 2


def test_bank_text_embeddings_encode_in_bounded_batches(tmp_path):
    """A bank of many prompts is encoded a bounded batch at a time: one call for 10,000 prompts took 8 GB."""
    import numpy as np

    from cmrdx.zeroshot.scoring import TEXT_BATCH, TextEmbeddingCache, bank_text_embeddings

    n = 3 * TEXT_BATCH + 5
    prompts = "".join(f"      - prompt number {i}\n" for i in range(n))
    bank = parse_bank(GOOD.replace("      - Left ventricle is dilated\n", prompts), Path("big.yaml"))
    calls: list[int] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.stack([np.full(4, float(t.split()[-1]) if t[-1].isdigit() else -1.0, np.float32) for t in texts])

    emb = bank_text_embeddings(bank, encode, None)
    assert calls and max(calls) <= TEXT_BATCH <= 128 and sum(calls) == len(bank.texts) == n + 2
    assert all(emb[f"prompt number {i}"][0] == i for i in range(n))  # each text keeps its own embedding
    calls.clear()
    cached = bank_text_embeddings(bank, encode, TextEmbeddingCache("0" * 64, tmp_path))
    assert max(calls) <= TEXT_BATCH and sum(calls) == n + 2
    assert all(np.array_equal(cached[t], emb[t]) for t in bank.texts)
    calls.clear()
    bank_text_embeddings(bank, encode, TextEmbeddingCache("0" * 64, tmp_path))  # read back from disk
    assert calls == []
