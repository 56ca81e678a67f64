"""`export traffic|dns|tls|http --format zeek-json` (issue 14): Zeek's field names and types,
checked against the `#fields`/`#types` header of Zeek's own logs for the same captures, and
the records themselves against Zeek's."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from service.monitor.zeek_json import PREFIX
from tests.monitor.conftest import SHARED_PCAPS, shared
from tests.monitor.test_references import zeek_log

# A Zeek type -> the JSON values Zeek's JSON writer gives for it.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "time": (float, int),
    "interval": (float, int),
    "double": (float, int),
    "count": (int,),
    "int": (int,),
    "port": (int,),
    "addr": (str,),
    "string": (str,),
    "enum": (str,),
    "bool": (bool,),
}


def zeek_header(name: str) -> dict[str, str]:
    """Field name -> Zeek type, from a baseline log's #fields and #types lines."""
    path = SHARED_PCAPS / "zeek" / "baselines" / name
    if not path.is_file():
        pytest.skip(f"reference log {path} is absent")
    lines = path.read_text().splitlines()
    fields = next(x for x in lines if x.startswith("#fields")).split("\t")[1:]
    types = next(x for x in lines if x.startswith("#types")).split("\t")[1:]
    return dict(zip(fields, types, strict=True))


def assert_zeek_shaped(records: list[dict[str, Any]], header: dict[str, str]) -> None:
    """Every field is one of Zeek's for that log with a value of its type, or ours under the
    prefix; ts, uid and the connection id are always there."""
    assert records
    for record in records:
        for key in ("ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"):
            assert key in record, key
        assert re.fullmatch(r"C[0-9A-Za-z]{17}", record["uid"])
        for key, value in record.items():
            if key.startswith(PREFIX):
                continue
            assert key in header, f"{key} is not a field of Zeek's log"
            kind = header[key]
            if kind.startswith(("vector[", "set[")):
                inner = _JSON_TYPES[kind[kind.index("[") + 1 : -1]]
                assert isinstance(value, list), key
                assert all(isinstance(v, inner) for v in value), key
            else:
                assert isinstance(value, _JSON_TYPES[kind]), (key, value)
                assert not (kind in ("count", "port") and isinstance(value, bool)), key


def _export(run_cli, kind: str) -> list[dict[str, Any]]:
    out = run_cli("export", kind, "--format", "zeek-json").stdout
    return [json.loads(line) for line in out.splitlines()]


def _ids(records: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    return {
        (r["id.orig_h"], str(r["id.orig_p"]), r["id.resp_h"], str(r["id.resp_p"])) for r in records
    }


def test_zeek_json_matches_zeeks_logs(westgate, run_cli) -> None:
    wikipedia: Path = shared("zeek/wikipedia.pcap")
    tls = shared("zeek/tls-conn-with-extensions.pcap")
    for capture in (wikipedia, tls):
        run_cli("monitor", "run", "--read", str(capture), "--site", "westgate", "--quiet")

    conn = _export(run_cli, "traffic")
    assert_zeek_shaped(conn, zeek_header("wikipedia.conn.log"))
    zeek_conn = zeek_log("wikipedia.conn.log")
    # Every connection Zeek logged is ours too, with the same protocol and, for UDP (no
    # handshake to judge), the same state: S0 when nothing came back, SF when it did.
    by_id = {
        (r["id.orig_h"], str(r["id.orig_p"]), r["id.resp_h"], str(r["id.resp_p"])): r for r in conn
    }
    for line in zeek_conn:
        key = (line["id.orig_h"], line["id.orig_p"], line["id.resp_h"], line["id.resp_p"])
        ours = by_id.get(key)
        assert ours is not None, key
        assert ours["proto"] == line["proto"], key
        assert ours["orig_pkts"] == int(line["orig_pkts"]), key
        assert ours["orig_ip_bytes"] == int(line["orig_ip_bytes"]), key
        if line["proto"] == "udp":
            assert ours["conn_state"] == line["conn_state"], key
        if line["service"] != "-":
            assert ours["service"] == line["service"], key
    assert all(r[PREFIX + "site"] == "westgate" for r in conn)

    dns = _export(run_cli, "dns")
    assert_zeek_shaped(dns, zeek_header("wikipedia.dns.log"))
    assert {(r["id.orig_h"], r["query"]) for r in dns} == {
        (r["id.orig_h"], r["query"]) for r in zeek_log("wikipedia.dns.log")
    }
    answered = {
        (r["query"], tuple(r["answers"].split(",")))
        for r in zeek_log("wikipedia.dns.log")
        if r["answers"] != "-" and not r["answers"].startswith("TXT")
    }
    assert answered <= {(r["query"], tuple(r.get("answers", ()))) for r in dns}

    http = _export(run_cli, "http")
    assert_zeek_shaped(http, zeek_header("wikipedia.http.log"))
    zeek_http = {(*k, r["host"]) for r in zeek_log("wikipedia.http.log") for k in _ids([r])}
    assert zeek_http <= {(*k, r.get("host")) for r in http for k in _ids([r])}

    ssl = _export(run_cli, "tls")
    assert_zeek_shaped(ssl, zeek_header("tls-conn-with-extensions.ssl.log"))
    zeek_ssl = {
        (*k, r["server_name"])
        for r in zeek_log("tls-conn-with-extensions.ssl.log")
        for k in _ids([r])
    }
    assert zeek_ssl <= {(*k, r.get("server_name")) for r in ssl for k in _ids([r])}
    # The same flow has the same uid in conn.log and ssl.log, as in Zeek.
    conn_uids = {k: r["uid"] for r in conn for k in _ids([r])}
    assert all(conn_uids[k] == r["uid"] for r in ssl for k in _ids([r]))
    # TLS is "ssl" in Zeek's conn.log service field.
    ssl_ids = {line[:4] for line in zeek_ssl}
    assert {r.get("service") for r in conn for k in _ids([r]) if k in ssl_ids} == {"ssl"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # no database question in it
def test_zeek_json_is_for_the_zeek_logs_only(westgate, run_cli) -> None:
    result = run_cli("export", "visits", "--format", "zeek-json", check=False)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: --format zeek-json is for traffic, dns, tls, http, not visits"
    )


def test_a_terminal_table_keeps_what_the_export_is_for(westgate, run_cli) -> None:
    """At 80 columns `export tls --format table` keeps the server name (the column the export
    exists for) and leaves out ports and counters, naming them; `--wide` shows every one."""
    tls = shared("zeek/tls-conn-with-extensions.pcap")
    run_cli("monitor", "run", "--read", str(tls), "--site", "westgate", "--quiet")
    narrow = {"COLUMNS": "80"}
    table = run_cli("export", "tls", "--format", "table", env=narrow).stdout
    assert "server name" in table
    assert "ssl.gstatic.com" in table
    assert "orig port" not in table.split("(not shown:")[0]
    assert "(not shown:" in table
    assert "orig port" in table.split("(not shown:")[1]
    wide = run_cli("export", "tls", "--format", "table", "--wide", env=narrow).stdout
    assert "orig port" in wide
    assert "(not shown:" not in wide


def test_an_alert_table_keeps_its_evidence_at_80_columns(westgate, run_cli) -> None:
    """The evidence is what an alert is for: at 80 columns a long token in it (a tunnel's
    query name) is folded over lines rather than the column left out."""
    iodine = shared("ndpi/dns-tunnel-iodine.pcap")
    run_cli("monitor", "run", "--read", str(iodine), "--site", "westgate", "--quiet")
    table = run_cli("export", "alerts", "--format", "table", env={"COLUMNS": "80"}).stdout
    shown = table.split("(not shown:")[0]
    assert "evidence" in shown
    assert "DNS tunnel under" in shown
    assert "pirate.sea" in shown
    assert max(len(line) for line in table.splitlines()) <= 80
