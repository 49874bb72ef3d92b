"""Every series type of a real CMR examination, from five vendors: each series of the labelled protocol fixture
(tests/helpers/protocols.py, table in tests/helpers/protocols.md) gets its role and view, with the deciding
evidence in the reason; PSIR pairs give one LGE view; perfusion is never taken for LGE or cine."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cmrdx.study.assemble import assemble_study, inspect_study
from cmrdx.vocab import MODEL_ROLES, ROLES, Role
from helpers.protocols import (
    SOURCES,
    VENDORS,
    Spec,
    all_specs,
    build_protocols,
    cine,
    molli_5_3_3,
    perfusion_spec,
    render_table,
    write_spec,
)

TABLE = Path(__file__).parent / "helpers" / "protocols.md"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_protocols(tmp_path_factory.mktemp("protocols"))


@pytest.fixture(scope="module")
def inspections(built):
    return {v: inspect_study(p) for v, p in built.studies.items()}


def test_fixture_spans_five_vendors_every_series_type_and_documents_each_label():
    specs = all_specs()
    assert len(specs) >= 60
    per_vendor = Counter(s.vendor for s in specs)
    assert set(per_vendor) == set(VENDORS) and min(per_vendor.values()) >= 10
    assert len({s.key for s in specs}) == len(specs)
    # every series type is represented, the model's and the others
    assert {s.role for s in specs} == set(ROLES)
    for s in specs:
        assert s.role in ROLES and s.evidence and s.decides and s.source in SOURCES, s.key
        assert (s.view is not None) == (s.role in MODEL_ROLES), s.key
    # series with no name at all, decided by tags alone, for each kind of tag evidence the reader relies on
    unnamed = {s.role for s in specs if not s.description}
    assert {"cine", "lge", "perfusion", "t1_mapping", "t1_map", "ti_scout", "t2_mapping", "t2star", "t2w",
            "flow"} <= unnamed


def test_table_is_the_fixture():
    """tests/helpers/protocols.md is generated from the fixture's list; regenerate it with render_table()."""
    assert TABLE.read_text() == render_table()


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_every_series_gets_its_labelled_role_view_and_evidence(built, inspections, vendor):
    insp = inspections[vendor]
    specs = built.specs[vendor]
    assert {s.number for s in insp.series} == set(specs)
    wrong = []
    for s in insp.series:
        spec = specs[s.number]
        missing = [w for w in spec.evidence if w not in s.reason]
        if (s.role, s.view) != (spec.role, spec.view) or missing:
            wrong.append((s.number, spec.description, (s.role, s.view), (spec.role, spec.view), s.reason, missing))
    assert not wrong, "\n".join(map(str, wrong))


def test_inspect_json_shows_each_type_and_its_evidence_as_plain_strings(built):
    from cmrdx.cli import app

    r = CliRunner().invoke(app, ["inspect", str(built.studies["ge"]), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    by_number = {s["series_number"]: s for s in d["series"]}
    perf = by_number[6]
    assert (perf["description"], perf["role"], perf["view"]) == ("", "perfusion", None)
    assert "79 dynamics over 55 s" in perf["reason"]
    assert type(perf["role"]) is str
    assert set(d["views_found"]) == {"cine:SAX", "cine:2CH", "cine:3CH", "cine:4CH", "lge:SAX", "lge:4CH"}


def test_ge_first_pass_perfusion_without_names_is_not_lge(built, inspections):
    """The reported case: a GE first-pass perfusion with empty names, 79 dynamics at one short-axis position,
    TriggerTime counting from the start of the run up to 55 s, saturation-prepared with an InversionTime set."""
    s = next(s for s in inspections["ge"].series if s.number == 6)
    assert (s.description, s.protocol, s.sequence_name) == ("", "", "")
    assert s.inversion_time == 100.0 and max(f.trigger_time for f in s.frames) == pytest.approx(55000.0)
    assert (s.n_positions, len(s.frames)) == (1, 79)
    assert s.role == Role.PERFUSION and s.view is None
    assert "TriggerTime counting from the start of the run" in s.reason


def test_perfusion_series_are_never_lge_or_cine(built, inspections):
    got = {(v, s.number): s.role for v, insp in inspections.items() for s in insp.series}
    perf = [spec.key for spec in all_specs() if spec.role == "perfusion"]
    assert len(perf) >= 7 and {k[0] for k in perf} == set(VENDORS)
    assert {k: got[k] for k in perf} == dict.fromkeys(perf, "perfusion")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(30, 90), step=st.floats(0.45, 1.5), from_trigger=st.booleans(),
       ti=st.one_of(st.none(), st.floats(60.0, 200.0)), positions=st.integers(1, 4))
def test_unnamed_perfusion_of_any_timing_is_perfusion(tmp_path_factory, n, step, from_trigger, ti, positions):
    """Dynamics counted in TriggerTime (GE) or in AcquisitionTime (the others), with or without the saturation
    delay in InversionTime, one to four slices: perfusion, never LGE or cine."""
    spec = perfusion_spec(n, round(step, 3), from_trigger=from_trigger, ti=ti, positions=positions)
    root = tmp_path_factory.mktemp("perf")
    write_spec(spec, root / "S090", "1.2.826.0.1.3680043.8.498.1", VENDORS["ge"][1])
    (s,) = inspect_study(root).series
    assert s.role == "perfusion", s.reason
    assert f"{n} dynamics" in s.reason


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(phases=st.integers(8, 40), rr=st.floats(450.0, 1300.0), positions=st.integers(1, 5))
def test_unnamed_cine_of_any_heart_rate_is_cine(tmp_path_factory, phases, rr, positions):
    spec = Spec("siemens", 91, "", "cine", "SAX", (), "", "ps33", positions=positions, images=cine(phases, rr))
    root = tmp_path_factory.mktemp("cine")
    write_spec(spec, root / "S091", "1.2.826.0.1.3680043.8.498.2", rr)
    (s,) = inspect_study(root).series
    assert s.role == "cine" and f"{phases} phases over the RR interval" in s.reason, s.reason


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rr=st.floats(500.0, 1300.0), first=st.floats(80.0, 150.0))
def test_unnamed_molli_at_any_heart_rate_is_t1_mapping_not_lge(tmp_path_factory, rr, first):
    spec = Spec("philips", 92, "", "t1_mapping", None, (), "", "molli", images=molli_5_3_3(rr, first, first + 80.0),
                scanning=("GR", "IR"))
    root = tmp_path_factory.mktemp("molli")
    write_spec(spec, root / "S092", "1.2.826.0.1.3680043.8.498.3", rr)
    (s,) = inspect_study(root).series
    assert s.role == "t1_mapping" and "8 (" in s.reason and "inversion times" in s.reason, s.reason


def _decision(study, number: int, built, vendor: str):
    uid = built.series_uids[(vendor, number)]
    return next(d for d in study.manifest.decisions if d.series_uid == uid)


def test_psir_pair_in_two_series_gives_one_lge_view_from_the_magnitude(built):
    study = assemble_study(built.studies["siemens"])
    sax = study.get("lge", "SAX")
    assert sax.series_uids == [built.series_uids[("siemens", 22)]]  # SAX_DE_..._MAG, not its _PSIR companion
    assert sax.n_slices == 4
    psir = _decision(study, 23, built, "siemens")
    assert psir.used_as is None and "PSIR pair: the magnitude image (#22) is used for lge:SAX" in psir.reason
    assert any("magnitude image #22 used" in n for n in sax.notes)
    # the magnitude pixels (value 100 + slice), not the phase-sensitive ones (2000 + slice)
    assert sax.pixels().max() < 1000
    ge = assemble_study(built.studies["ge"])
    assert ge.get("lge", "4CH").series_uids == [built.series_uids[("ge", 9)]]  # MAG:DE_4CH, not PS:DE_4CH
    assert _decision(ge, 10, built, "ge").used_as is None


def test_psir_pair_in_one_series_uses_its_magnitude_images(built):
    study = assemble_study(built.studies["philips"])
    for view, number in (("SAX", 5), ("LAX", 6)):
        sv = study.get("lge", view)
        assert sv.series_uids == [built.series_uids[("philips", number)]]
        assert sv.n_phases == 1 and sv.n_slices == (4 if view == "SAX" else 1)
        arr = sv.pixels()
        # magnitude images hold 100 + slice + pattern; the real images of the pair 3000 + ...
        assert arr.max() < 1000 and np.all(arr >= 100), view
        assert any("magnitude images are used" in n for n in sv.notes)


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_assembly_takes_only_cine_and_lge_series(built, vendor):
    study = assemble_study(built.studies[vendor])
    specs = built.specs[vendor]
    for d in study.manifest.decisions:
        if d.used_as is not None:
            assert d.role in MODEL_ROLES and d.used_as == f"{d.role}:{d.view}", d
            assert specs[d.series_number].role in MODEL_ROLES
    assert all(v.role in MODEL_ROLES for v in study.views.values())
