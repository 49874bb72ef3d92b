"""pacs.yaml: the documented shape loads; every mistake is an error naming the file, the node and the fix; secrets
are read from the environment variables the file names and never shown; PACS addresses and queries are checked."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cmrdx.cli import app
from cmrdx.errors import EXIT_CODES, UsageError
from cmrdx.pacs.config import get_node, load_nodes, parse_address, parse_query

DOC = """\
nodes:
  - name: orthanc-web
    dicomweb: http://127.0.0.1:8042/dicom-web
    auth: {kind: basic, user_env: PACS_USER, password_env: PACS_PASSWORD}   # optional
  - name: orthanc-dimse
    aet: ORTHANC
    host: 127.0.0.1
    port: 4242
    calling_aet: CMRDX
"""


def test_the_documented_shape_loads(tmp_path):
    p = tmp_path / "pacs.yaml"
    p.write_text(DOC)
    nodes = load_nodes(p)
    web, dimse = nodes["orthanc-web"], nodes["orthanc-dimse"]
    assert (web.kind, web.dicomweb, web.auth.kind) == ("dicomweb", "http://127.0.0.1:8042/dicom-web", "basic")
    assert (dimse.kind, dimse.aet, dimse.host, dimse.port, dimse.calling_aet, dimse.retrieve) == \
           ("dimse", "ORTHANC", "127.0.0.1", 4242, "CMRDX", "get")


def test_default_location_is_cmrdx_home_or_the_env_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("CMRDX_PACS_CONFIG", raising=False)
    monkeypatch.setenv("CMRDX_HOME", str(tmp_path))
    (tmp_path / "pacs.yaml").write_text(DOC)
    assert get_node("orthanc-dimse").port == 4242
    other = tmp_path / "other.yaml"
    other.write_text(DOC.replace("4242", "4343"))
    monkeypatch.setenv("CMRDX_PACS_CONFIG", str(other))
    assert get_node("orthanc-dimse").port == 4343


@pytest.mark.parametrize("text, words", [
    ("nodes: [", ["pacs.yaml:", "YAML"]),
    ("something: 1", ["no `nodes:` list"]),
    ("nodes: [{name: a}]", ["node 1", "neither dicomweb nor aet, host, port"]),
    ("nodes: [{name: a, dicomweb: ftp://x}]", ["not an http(s) URL"]),
    ("nodes: [{name: a, aet: 'A\\\\B', host: h, port: 1}]", ["not an AE title"]),
    ("nodes: [{name: a, aet: A, host: h, port: 70000}]", ["port 70000"]),
    ("nodes: [{name: a, aet: A, host: h, port: 1}, {name: a, aet: B, host: h, port: 2}]", ["used twice"]),
    ("nodes: [{name: a, dicomweb: 'http://h', auth: {kind: basic, user_env: U, password: hunter2}}]",
     ["unknown key", "secrets are never written in this file"]),
    ("nodes: [{name: a, aet: A, host: h, port: 1, retrieve: move}]", ["move_port"]),
    ("nodes: [{name: a, aet: A, host: h, port: 1, colour: red}]", ["unknown key(s) colour"]),
])
def test_every_mistake_names_the_file_and_the_fix(tmp_path, text, words):
    p = tmp_path / "pacs.yaml"
    p.write_text(text)
    with pytest.raises(UsageError) as e:
        load_nodes(p)
    msg = e.value.message
    assert str(p) in msg and e.value.hint
    for w in words:
        assert w in msg, msg
    assert "hunter2" not in msg + (e.value.hint or "")


def test_missing_file_and_unknown_node(tmp_path):
    with pytest.raises(UsageError, match="no PACS configuration file"):
        load_nodes(tmp_path / "none.yaml")
    (tmp_path / "pacs.yaml").write_text(DOC)
    with pytest.raises(UsageError) as e:
        get_node("nope", tmp_path / "pacs.yaml")
    assert "orthanc-web" in e.value.message and "orthanc-dimse" in e.value.message


def test_secrets_come_from_the_environment_and_are_never_shown(tmp_path, monkeypatch):
    p = tmp_path / "pacs.yaml"
    p.write_text(DOC)
    node = get_node("orthanc-web", p)
    monkeypatch.delenv("PACS_USER", raising=False)
    with pytest.raises(UsageError, match="PACS_USER is not set"):
        node.auth.secrets(node.name)
    monkeypatch.setenv("PACS_USER", "alice")
    monkeypatch.setenv("PACS_PASSWORD", "s3cret-value")
    assert node.auth.secrets(node.name) == {"user": "alice", "password": "s3cret-value"}
    for args in (["pacs", "list", "--pacs-config", str(p)], ["pacs", "list", "--json", "--pacs-config", str(p)]):
        r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert r.exit_code == 0, r.output
        assert "s3cret-value" not in r.output and "PACS_PASSWORD" in r.output
    listed = json.loads(CliRunner().invoke(app, ["pacs", "list", "--json", "--pacs-config", str(p)]).output)
    assert [n["name"] for n in listed] == ["orthanc-web", "orthanc-dimse"]


def test_addresses_and_queries():
    a = parse_address("pacs://orthanc-web/1.2.840.113619.2.1")
    assert (a.node, a.study_uid, str(a)) == ("orthanc-web", "1.2.840.113619.2.1", "pacs://orthanc-web/1.2.840.113619.2.1")
    for bad in ("pacs://", "pacs://node/", "pacs://node/abc", "pacs://no de/1.2", "pacs://n/" + "1." * 40 + "1"):
        with pytest.raises(UsageError):
            parse_address(bad)
    assert parse_query(["StudyDate=20260101-20260131", "ModalitiesInStudy=MR"]) == \
           {"StudyDate": "20260101-20260131", "ModalitiesInStudy": "MR"}
    for bad, word in ((["StudyDat=2026"], "not a DICOM keyword"), (["StudyDate"], "KEYWORD=VALUE"),
                      (["StudyDate=1", "StudyDate=2"], "twice")):
        with pytest.raises(UsageError, match=word):
            parse_query(bad)


def test_cli_usage_errors_exit_2_without_traceback(tmp_path):
    p = tmp_path / "pacs.yaml"
    p.write_text(DOC)
    for args in (["pacs", "echo", "nope", "--pacs-config", str(p)],
                 ["pacs", "find", "orthanc-dimse", "--query", "Nonsense=1", "--pacs-config", str(p)],
                 ["inspect", "pacs://orthanc-dimse/x.y", "--pacs-config", str(p)]):
        r = CliRunner().invoke(app, args)
        assert getattr(r.exception, "exit_code", r.exit_code) == EXIT_CODES["UsageError"], (args, r.output)
        assert "Traceback" not in r.output
