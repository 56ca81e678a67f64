"""The engine's row tuples and the batch writer's SQLite conversions agree with the traffic
tables and with what SQLAlchemy itself would store."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, insert, select

from service.monitor.records import FIELDS, TIME_COLUMNS, with_datetimes
from service.monitor.writer import TABLES, _json_lists, _SqlitePlan


@pytest.mark.parametrize("kind", sorted(FIELDS))
def test_row_fields_are_the_table_columns_in_order(kind: str) -> None:
    columns = [c.name for c in TABLES[kind].columns if c.name != "id"]
    assert list(FIELDS[kind]) == columns
    assert set(TIME_COLUMNS[kind]) <= set(FIELDS[kind])


def _unexpected(value: object) -> str:
    return "fallback:" + json.dumps(value)


@given(st.lists(st.text()))
def test_json_list_of_strings_is_what_json_dumps_gives(value: list[str]) -> None:
    assert _json_lists(_unexpected)(value) == json.dumps(value)


@given(st.lists(st.integers()))
def test_json_list_of_integers_is_what_json_dumps_gives(value: list[int]) -> None:
    assert _json_lists(_unexpected)(value) == json.dumps(value)


@pytest.mark.parametrize("value", [None, ["a", 1], [True, 2], [1, True], [1.5], {"a": 1}, "x"])
def test_json_anything_else_goes_to_sqlalchemy(value: object) -> None:
    assert _json_lists(_unexpected)(value) == _unexpected(value)


def test_a_dns_row_reads_back_as_written() -> None:
    engine = create_engine("sqlite://")
    table = TABLES["dns"]
    table.create(engine)
    row = (
        "westgate",
        1_795_000_000.25,
        "10.0.0.5",
        50000,
        "10.0.0.1",
        53,
        4660,
        "bbc.co.uk",
        1,
        "A",
        0,
        "NOERROR",
        0.012,
        ["151.101.0.81", "caf\u00e9.example", 'quote"d'],
        [300, 0, 2**40],
        "02:00:00:00:00:05",
        7,
        None,
    )
    plan = _SqlitePlan("dns", engine.dialect, 999)
    with engine.begin() as conn:
        plan.write(conn, [row, row])
        stored = [dict(r._mapping) for r in conn.execute(select(table))]
    expected = with_datetimes("dns", row)
    assert [{k: v for k, v in r.items() if k != "id"} for r in stored] == [expected, expected]
    # And what SQLAlchemy writes itself reads back the same.
    with engine.begin() as conn:
        conn.execute(table.delete())
        conn.execute(insert(table), [expected])
        again = dict(conn.execute(select(table)).one()._mapping)
    assert {k: v for k, v in again.items() if k != "id"} == expected
