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
