"""YAML prompt banks written by cardiologists: schema, strict loading with file:line errors, lookup.

A bank is data, not code: it is loaded with PyYAML's safe composer (no arbitrary objects), every key is
checked against the schema (prompts/README.md), and any defect is reported as ``FILE:LINE: path: problem``
with the fix. Text embeddings of prompts are cached by the scoring module, keyed by model sha256 + text.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmrdx.config import DATA_DIR
from cmrdx.errors import PromptBankError
from cmrdx.vocab import MODEL_ROLES, SEVERITY_LEVELS, VIEW_KEYS

SCHEMA = "cmrdx-prompt-bank/1"
SEVERITIES = SEVERITY_LEVELS
THRESHOLD_METHODS = ("sens-eq-spec", "youden", "platt", "isotonic", "manual")
ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass
class Calibration:
    """Threshold (and optional probability map) of one finding for one model."""

    model: str
    sha256: str | None
    threshold: float
    method: str = "manual"
    # platt: probability = 1 / (1 + exp(-(a * score + b))); isotonic: piecewise-linear (x, y) knots
    platt: tuple[float, float] | None = None
    isotonic: tuple[list[float], list[float]] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass(frozen=True)
class Requirement:
    """Images a finding needs before it can be assessed: met when the study has any one of ``any_of`` (view
    keys such as ``cine:3CH``, or ``lge:*`` for any view of a role). ``what`` names the need for people."""

    any_of: tuple[str, ...]
    what: str = ""

    def met_by(self, views: Collection[str]) -> bool:
        have = set(views)
        for want in self.any_of:
            role, _, view = want.partition(":")
            if (view == "*" and any(v.partition(":")[0] == role for v in have)) or want in have:
                return True
        return False

    def describe(self) -> str:
        alts = " or ".join(self.any_of)
        return f"{self.what} ({alts})" if self.what else alts


@dataclass
class Finding:
    id: str
    label: str
    prompts: list[str]
    description: str = ""
    negative_prompts: list[str] = field(default_factory=list)
    severity: dict[str, list[str]] = field(default_factory=dict)
    views: list[str] = field(default_factory=list)
    code: dict[str, str] | None = None
    calibrations: list[Calibration] = field(default_factory=list)
    notes: str = ""
    references: list[str] = field(default_factory=list)
    requires: list[Requirement] = field(default_factory=list)
    # impression phrases: "present" (any severity) and optionally one per severity level; never scored
    impression: dict[str, str] = field(default_factory=dict)
    impression_order: float | None = None  # place in an impression's clinical order (lower first)
    line: int | None = None

    def impression_phrase(self, severity: str | None) -> str | None:
        """The bank's impression phrase for this finding present at ``severity`` (its "present" phrase when the
        level has none or is unknown); None when the bank gives none."""
        if severity and severity in self.impression:
            return self.impression[severity]
        return self.impression.get("present")

    def missing(self, views: Collection[str]) -> list[Requirement]:
        """The requirements ``views`` (a study's view keys) do not meet; empty when the finding can be assessed."""
        return [r for r in self.requires if not r.met_by(views)]

    def calibration_for(self, model_name: str, model_sha256: str | None) -> Calibration | None:
        """The calibration written for this model: same name and (when recorded) the same sha256."""
        for c in self.calibrations:
            if c.model == model_name and (c.sha256 is None or model_sha256 is None or c.sha256 == model_sha256):
                return c
        return None

    @property
    def all_texts(self) -> list[str]:
        out = list(self.prompts) + list(self.negative_prompts)
        for v in self.severity.values():
            out.extend(v)
        return out


@dataclass
class PromptBank:
    name: str
    version: str
    findings: list[Finding]
    path: Path | None = None
    authors: list[str] = field(default_factory=list)
    reviewers: list[str] = field(default_factory=list)
    date: str = ""
    description: str = ""
    temperature: float = 0.05  # for negative-prompt softmax
    uncertain_margin: float = 0.01  # |score - threshold| below this: "uncertain"
    sha256: str = ""

    def finding(self, fid: str) -> Finding:
        for f in self.findings:
            if f.id == fid:
                return f
        raise KeyError(f"{self.name}: no finding {fid!r}")

    @property
    def texts(self) -> list[str]:
        """Every distinct prompt text in the bank (for embedding once)."""
        return list(dict.fromkeys(t for f in self.findings for t in f.all_texts))


# ---------------------------------------------------------------------------------------------------
# Loading: compose YAML nodes (to keep line numbers), then convert with the schema.


class _Ctx:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, node: yaml.Node | None, where: str, problem: str, fix: str) -> PromptBankError:
        line = node.start_mark.line + 1 if node is not None else 1
        return PromptBankError(f"{self.path}:{line}: {where}: {problem}", hint=fix)


def _mapping(ctx: _Ctx, node: yaml.Node, where: str, allowed: dict[str, bool]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """A mapping node's items by key, checking unknown, duplicate and missing (required=True) keys."""
    if not isinstance(node, yaml.MappingNode):
        raise ctx.fail(node, where, f"expected a mapping, found {_kind(node)}", "write `key: value` lines here")
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        if not isinstance(k, yaml.ScalarNode):
            raise ctx.fail(k, where, "a key must be plain text", "use a simple word as the key")
        key = k.value
        if key in out:
            raise ctx.fail(k, f"{where}.{key}", "duplicate key", "keep one of the two entries")
        if key not in allowed:
            close = difflib.get_close_matches(key.replace("-", "_"), list(allowed), n=1, cutoff=0.75)
            hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(sorted(allowed))}"
            raise ctx.fail(k, f"{where}.{key}", "unknown key", hint)
        out[key] = (k, v)
    for key, required in allowed.items():
        if required and key not in out:
            raise ctx.fail(node, where, f"missing required key `{key}`", f"add `{key}:` (see prompts/README.md)")
    return out


def _kind(node: yaml.Node) -> str:
    return {yaml.MappingNode: "a mapping", yaml.SequenceNode: "a list", yaml.ScalarNode: "a value"}.get(type(node), "?")


def _scalar(ctx: _Ctx, node: yaml.Node, where: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise ctx.fail(node, where, f"expected a value, found {_kind(node)}", "write a single value here")
    return _construct(node)


def _construct(node: yaml.Node) -> Any:
    """Python value of a composed node, by the safe constructor (no arbitrary objects)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _str(ctx: _Ctx, node: yaml.Node, where: str, *, nonempty: bool = True) -> str:
    v = _scalar(ctx, node, where)
    if v is None:
        v = ""
    if not isinstance(v, str):
        v = str(v)
    v = " ".join(v.split())
    if nonempty and not v:
        raise ctx.fail(node, where, "empty text", "write the text, or remove the entry")
    return v


def _float(ctx: _Ctx, node: yaml.Node, where: str) -> float:
    v = _scalar(ctx, node, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ctx.fail(node, where, f"expected a number, found {v!r}", "write a number such as 0.52")
    if not math.isfinite(v):  # YAML's .nan / .inf: every comparison with NaN is false, so a call would be "absent"
        raise ctx.fail(node, where, f"expected a finite number, found {node.value!r}", "write a number such as 0.52")
    return float(v)


def _list(ctx: _Ctx, node: yaml.Node, where: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise ctx.fail(node, where, f"expected a list, found {_kind(node)}", "write one `- item` per line")
    return list(node.value)


def _str_list(ctx: _Ctx, node: yaml.Node, where: str, *, nonempty: bool = True) -> list[str]:
    items = [_str(ctx, n, f"{where}[{i}]") for i, n in enumerate(_list(ctx, node, where))]
    if nonempty and not items:
        raise ctx.fail(node, where, "empty list", "add at least one entry")
    return items


def _calibration(ctx: _Ctx, node: yaml.Node, where: str) -> Calibration:
    m = _mapping(ctx, node, where, {"model": True, "sha256": False, "threshold": True, "method": False,
                                    "platt": False, "isotonic": False, "provenance": False})
    method = _str(ctx, m["method"][1], f"{where}.method") if "method" in m else "manual"
    if method not in THRESHOLD_METHODS:
        raise ctx.fail(m["method"][1], f"{where}.method", f"unknown method {method!r}", f"use one of {', '.join(THRESHOLD_METHODS)}")
    platt = None
    if "platt" in m:
        pm = _mapping(ctx, m["platt"][1], f"{where}.platt", {"a": True, "b": True})
        platt = (_float(ctx, pm["a"][1], f"{where}.platt.a"), _float(ctx, pm["b"][1], f"{where}.platt.b"))
    iso = None
    if "isotonic" in m:
        im = _mapping(ctx, m["isotonic"][1], f"{where}.isotonic", {"x": True, "y": True})
        xs = [_float(ctx, n, f"{where}.isotonic.x") for n in _list(ctx, im["x"][1], f"{where}.isotonic.x")]
        ys = [_float(ctx, n, f"{where}.isotonic.y") for n in _list(ctx, im["y"][1], f"{where}.isotonic.y")]
        if len(xs) != len(ys) or len(xs) < 2 or any(b < a for a, b in zip(xs, xs[1:])):
            raise ctx.fail(m["isotonic"][1], f"{where}.isotonic", "x and y must be equally long (>= 2), x ascending",
                           "re-run `cmrdx prompts calibrate --method isotonic`")
        iso = (xs, ys)
    prov = _construct(m["provenance"][1]) if "provenance" in m else {}
    sha = _str(ctx, m["sha256"][1], f"{where}.sha256") if "sha256" in m else None
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ctx.fail(m["sha256"][1], f"{where}.sha256", "not a sha256 hex digest", "copy it from `cmrdx models info`")
    return Calibration(
        model=_str(ctx, m["model"][1], f"{where}.model"),
        sha256=sha,
        threshold=_float(ctx, m["threshold"][1], f"{where}.threshold"),
        method=method,
        platt=platt,
        isotonic=iso,
        provenance=prov if isinstance(prov, dict) else {"value": prov},
        line=node.start_mark.line + 1,
    )


FINDING_KEYS = {
    "id": True, "label": True, "description": False, "prompts": True, "negative_prompts": False, "severity": False,
    "views": False, "code": False, "thresholds": False, "notes": False, "references": False, "requires": False,
    "impression": False,
}
IMPRESSION_KEYS = {"present": True, "order": False, **{s: False for s in SEVERITIES}}
REQUIREMENT_KEYS = {"any": True, "what": False}
ROLE_WILDCARDS = tuple(f"{r}:*" for r in MODEL_ROLES)


def _requirement(ctx: _Ctx, node: yaml.Node, where: str) -> Requirement:
    m = _mapping(ctx, node, where, REQUIREMENT_KEYS)
    views = _str_list(ctx, m["any"][1], f"{where}.any")
    for i, v in enumerate(views):
        if v not in VIEW_KEYS and v not in ROLE_WILDCARDS:
            raise ctx.fail(m["any"][1], f"{where}.any[{i}]", f"unknown view {v!r}",
                           f"use one of {', '.join(VIEW_KEYS + ROLE_WILDCARDS)}")
    what = _str(ctx, m["what"][1], f"{where}.what") if "what" in m else ""
    return Requirement(tuple(views), what)
BANK_KEYS = {
    "schema": True, "name": True, "version": True, "authors": True, "reviewers": False, "date": False,
    "description": False, "scoring": False, "findings": True,
}


def _finding(ctx: _Ctx, node: yaml.Node, where: str) -> Finding:
    m = _mapping(ctx, node, where, FINDING_KEYS)
    fid = _str(ctx, m["id"][1], f"{where}.id")
    if not ID_RE.match(fid):
        raise ctx.fail(m["id"][1], f"{where}.id", f"bad id {fid!r}", "use lower-case letters, digits and _ (e.g. lv_dilation)")
    where = f"findings[{fid}]"
    sev: dict[str, list[str]] = {}
    if "severity" in m:
        sm = _mapping(ctx, m["severity"][1], f"{where}.severity", {s: False for s in SEVERITIES})
        sev = {k: _str_list(ctx, v, f"{where}.severity.{k}") for k, (_, v) in sm.items()}
    views = _str_list(ctx, m["views"][1], f"{where}.views") if "views" in m else []
    for i, v in enumerate(views):
        if v not in VIEW_KEYS:
            raise ctx.fail(m["views"][1], f"{where}.views[{i}]", f"unknown view {v!r}", f"use one of {', '.join(VIEW_KEYS)}")
    code = None
    if "code" in m and not (isinstance(m["code"][1], yaml.ScalarNode) and _construct(m["code"][1]) is None):
        cm = _mapping(ctx, m["code"][1], f"{where}.code", {"system": True, "code": True, "display": True})
        code = {k: _str(ctx, v, f"{where}.code.{k}") for k, (_, v) in cm.items()}
    impression: dict[str, str] = {}
    order = None
    if "impression" in m:
        im = _mapping(ctx, m["impression"][1], f"{where}.impression", IMPRESSION_KEYS)
        impression = {k: _str(ctx, v, f"{where}.impression.{k}") for k, (_, v) in im.items() if k != "order"}
        if "order" in im:
            order = _float(ctx, im["order"][1], f"{where}.impression.order")
    cals = []
    if "thresholds" in m:
        cals = [_calibration(ctx, n, f"{where}.thresholds[{i}]") for i, n in enumerate(_list(ctx, m["thresholds"][1], f"{where}.thresholds"))]
    return Finding(
        id=fid,
        label=_str(ctx, m["label"][1], f"{where}.label"),
        description=_str(ctx, m["description"][1], f"{where}.description", nonempty=False) if "description" in m else "",
        prompts=_str_list(ctx, m["prompts"][1], f"{where}.prompts"),
        negative_prompts=_str_list(ctx, m["negative_prompts"][1], f"{where}.negative_prompts") if "negative_prompts" in m else [],
        severity=sev,
        views=views,
        code=code,
        calibrations=cals,
        notes=_str(ctx, m["notes"][1], f"{where}.notes", nonempty=False) if "notes" in m else "",
        references=_str_list(ctx, m["references"][1], f"{where}.references") if "references" in m else [],
        requires=[_requirement(ctx, n, f"{where}.requires[{i}]")
                  for i, n in enumerate(_list(ctx, m["requires"][1], f"{where}.requires"))] if "requires" in m else [],
        impression=impression,
        impression_order=order,
        line=node.start_mark.line + 1,
    )


def parse_bank(text: str, path: Path) -> PromptBank:
    """Validate and convert a bank's YAML text. Raises PromptBankError naming file, line and key."""
    ctx = _Ctx(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise PromptBankError(f"{path}:{line}: not valid YAML ({getattr(exc, 'problem', exc)})",
                              hint="check indentation and quotes around text containing ':'") from exc
    if root is None:
        raise PromptBankError(f"{path}:1: the file is empty", hint="start from prompts/cmr-findings.yaml")
    m = _mapping(ctx, root, "bank", BANK_KEYS)
    schema = _str(ctx, m["schema"][1], "schema")
    if schema != SCHEMA:
        raise ctx.fail(m["schema"][1], "schema", f"unsupported schema {schema!r}", f"write `schema: {SCHEMA}`")
    temperature, margin = 0.05, 0.01
    if "scoring" in m:
        sm = _mapping(ctx, m["scoring"][1], "scoring", {"temperature": False, "uncertain_margin": False})
        if "temperature" in sm:
            temperature = _float(ctx, sm["temperature"][1], "scoring.temperature")
            if temperature <= 0:
                raise ctx.fail(sm["temperature"][1], "scoring.temperature", "must be > 0", "use e.g. 0.05")
        if "uncertain_margin" in sm:
            margin = _float(ctx, sm["uncertain_margin"][1], "scoring.uncertain_margin")
    findings = [_finding(ctx, n, f"findings[{i}]") for i, n in enumerate(_list(ctx, m["findings"][1], "findings"))]
    if not findings:
        raise ctx.fail(m["findings"][1], "findings", "no findings", "add at least one finding")
    seen: dict[str, Finding] = {}
    for f in findings:
        if f.id in seen:
            raise PromptBankError(f"{path}:{f.line}: findings[{f.id}]: duplicate id (first at line {seen[f.id].line})",
                                  hint="give each finding its own id")
        seen[f.id] = f
    date = _scalar(ctx, m["date"][1], "date") if "date" in m else ""
    return PromptBank(
        name=_str(ctx, m["name"][1], "name"),
        version=_str(ctx, m["version"][1], "version"),
        authors=_str_list(ctx, m["authors"][1], "authors"),
        reviewers=_str_list(ctx, m["reviewers"][1], "reviewers", nonempty=False) if "reviewers" in m else [],
        date=str(date or ""),
        description=_str(ctx, m["description"][1], "description", nonempty=False) if "description" in m else "",
        temperature=temperature,
        uncertain_margin=margin,
        findings=findings,
        path=path,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )


def shipped_banks() -> dict[str, Path]:
    """Banks shipped with the package, by name (file stem)."""
    d = DATA_DIR / "prompts"
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def resolve_bank(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = shipped_banks()
    key = str(name_or_path).removesuffix(".yaml")
    if key in shipped:
        return shipped[key]
    raise PromptBankError(
        f"{name_or_path}: no such prompt bank file or shipped bank",
        hint=f"give a YAML path, or one of: {', '.join(shipped) or '(none shipped)'}",
    )


def load_bank(name_or_path: str | Path) -> PromptBank:
    """Load and validate a bank by path or shipped name (e.g. "cmr-findings")."""
    path = resolve_bank(name_or_path)
    return parse_bank(read_bank_text(path), path)


def read_bank_text(path: Path) -> str:
    """A bank file's text; a file that cannot be read (missing, a folder, no permission, not UTF-8) is a
    PromptBankError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptBankError(f"{path}:{_line_of(path, exc.start)}: not UTF-8 text (byte {exc.start})",
                              hint="save the bank as UTF-8") from exc
    except IsADirectoryError as exc:
        raise PromptBankError(f"{path}: is a folder, not a bank file", hint="give the bank's YAML file") from exc
    except FileNotFoundError as exc:
        raise PromptBankError(f"{path}: no such file", hint="check the path (it is case-sensitive)") from exc
    except OSError as exc:
        raise PromptBankError(f"{path}: cannot be read ({exc.strerror or exc})", hint="check the file's permissions") from exc


def _line_of(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as f:
            return f.read(offset).count(b"\n") + 1
    except OSError:
        return 1


_BANKS: dict[str, PromptBank] = {}


def get_bank(name_or_path: str | Path) -> PromptBank:
    """A prompt bank loaded once per process (reloaded when the file changes)."""
    p = resolve_bank(name_or_path)
    key = f"{p.resolve()}:{p.stat().st_mtime_ns}"
    if key not in _BANKS:
        _BANKS[key] = load_bank(p)
    return _BANKS[key]
