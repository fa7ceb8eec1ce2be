"""benchmarks/scale_out.py without starting anything: arguments, wards, the table, PostgreSQL's cost."""
from __future__ import annotations

import pytest

from benchmarks.scale_out import HEADER, NOT_SUPPORTED, parse, postgres_cost, report_lines, table_rows, wards

LOAD = {"before": 1.2, "after": 3.4, "mean": 2.5, "max": 4.0}


def configuration(name: str, nodes: str, store: str, ingest: float, cxr_p50: float, vitals: float) -> dict:
    paced = {"msgs_per_s": 999.0, "p50_ms": 3.0, "p99_ms": 40.0, "lost": 0}
    return {"configuration": name, "nodes": nodes, "store": store,
            "ingest": {"instances": 200, "stored": 200, "instances_per_s": ingest},
            "cxr": {"n": 20, "p50_ms": cxr_p50, "p95_ms": cxr_p50 * 2},
            "vitals_saturated": {"msgs_per_s": vitals, "p50_ms": 900.0, "p99_ms": 2000.0, "lost": 0},
            "vitals_paced": paced}


RESULTS = [configuration("one node, SQLite", "1 (all)", "SQLite", 200.0, 100.0, 4000.0),
           configuration("one node, PostgreSQL", "1 (all)", "PostgreSQL", 100.0, 150.0, 2000.0),
           configuration("two nodes, PostgreSQL", "2 gateway+bridge, 1 models", "PostgreSQL", 90.0, 160.0, 1900.0)]


def test_quick_is_small_and_the_defaults_fit_ten_minutes():
    quick, full = parse(["--quick"]), parse([])
    assert quick.slices < full.slices and quick.studies < full.studies and quick.messages < full.messages
    assert (full.slices, full.studies, full.beds) == (200, 20, 200)


@pytest.mark.parametrize("argv, message", [(["--beds", "60"], "--beds must be at least 100"),
                                           (["--studies", "0"], "--studies must be positive, 0 is given")])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_the_wards_are_the_publishers_fifty_beds_each():
    assert wards(200) == ["w0", "w1", "w2", "w3"]
    assert wards(120) == ["w0", "w1", "w2"]


def test_one_row_per_configuration_in_the_headers_order():
    rows = table_rows(RESULTS)
    assert [len(row) for row in rows] == [len(HEADER)] * 3
    assert rows[0] == ["one node, SQLite", "1 (all)", "200", "100 / 200", "4,000", "999", "3 / 40", "0"]


def test_postgresql_cost_is_the_one_node_postgresql_run_against_the_sqlite_run():
    cost = postgres_cost(RESULTS)
    assert cost["ingest_ms_per_instance"] == {"sqlite": 5.0, "postgresql": 10.0, "extra_ms": 5.0, "ratio": 2.0}
    assert cost["cxr_ms_per_study"]["extra_ms"] == 50.0
    assert cost["vitals_us_per_message"] == {"sqlite": 250.0, "postgresql": 500.0, "extra_us": 250.0, "ratio": 2.0}
    assert postgres_cost(RESULTS[1:]) is None  # no SQLite run: no comparison


def test_the_report_says_what_is_not_supported_and_the_load():
    lines = report_lines(RESULTS, postgres_cost(RESULTS), LOAD)
    assert lines[0].startswith("| configuration |") and len(lines) == 2 + 3 + 3
    assert NOT_SUPPORTED in lines and "before 1.2, after 3.4" in lines[-1]
