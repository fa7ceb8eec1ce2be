"""benchmarks/readme_table.py: result JSONs -> the README block between the markers."""
from __future__ import annotations

import json

import pytest

from benchmarks.readme_table import END, NOT_MEASURED, START, main, render, replace_block

MACHINE = {"node": "ci", "machine": "x86_64", "cpus": 2, "cpu_model": "AMD EPYC", "python": "3.11.7"}


def write(folder, name, figures):
    (folder / f"{name}.json").write_text(json.dumps({"benchmark": name, "date": "2026-11-22T13:53:19+00:00",
                                                    "machine": MACHINE, **figures}))


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    write(folder, "cxr_latency", {"n": 20, "p50_ms": 301.7, "p95_ms": 354.6, "max_ms": 950.9,
                                  "target_p50_ms": 300.0, "latencies_ms": [1.0], "extra": {"ignored": True}})
    write(folder, "dicom_ingest", {"slices": 500, "size_px": 512, "load_average": [6, 7, 7],
                                   "targets": {"one_association_over_orthanc": 2.0, "4_associations_over_storescp": 0.8},
                                   "rows": [{"receiver": "DCMTK storescp", "associations": 1, "instances_per_s": 437.0,
                                             "ratio_to_storescp": 1.0, "ratio_to_orthanc": 4.37},
                                            {"receiver": "Orthanc (SyncStorageArea)", "associations": 1,
                                             "instances_per_s": 100.0, "ratio_to_storescp": 0.229,
                                             "ratio_to_orthanc": 1.0},
                                            {"receiver": "medgate", "associations": 4, "instances_per_s": 38.25,
                                             "ratio_to_storescp": 0.088, "ratio_to_orthanc": 0.38, "flushes": 70,
                                             "new_key": 1}],
                                   "writes": [{"writer": "slot (write, fdatasync, rename)", "ms_per_instance": 0.9},
                                              {"writer": "write_durably(fsync=True)", "ms_per_instance": 1.214}],
                                   "durability_ceiling_ratio": {"1": 0.612, "4": 0.7}})
    write(folder, "iomt_throughput", {
        "beds": 1000, "target": {"msgs_per_s": 10000, "p99_ms": 100},
        "load_average_1m": {"before": 10.72, "after": 11.32},
        "saturation": {"msgs_per_s": 553.1, "p50_ms": 22930.9, "p99_ms": 31204.5, "lost": 0},
        "paced": {"rate_msgs_per_s": 400.0, "msgs_per_s": 398.6, "p50_ms": 60.8, "p99_ms": 434.0, "lost": 0,
                  "repeats": 3, "worst_p99_ms": 512.25},
        "mosquitto_sub": {"messages": 20000, "received": 20000, "msgs_per_s": 1481.6}})
    return folder


def test_tables_name_machine_and_date_and_keep_only_known_keys(results):
    text = render(results)
    assert "\n".join([
        "### Single chest X-ray: C-STORE → SR at the PACS",
        "",
        "_2-core x86_64 (AMD EPYC), host `ci`, 2026-11-22_",
        "",
        "| studies | p50 ms | p95 ms | max ms | target p50 ms | met |",
        "|---|---|---|---|---|---|",
        "| 20 | 302 | 355 | 951 | 300 | no |",
    ]) in text
    assert "\n".join([
        "| receiver | associations | instances/s | ratio to storescp | ratio to Orthanc | flushes |",
        "|---|---|---|---|---|---|",
        "| DCMTK storescp | 1 | 437 | 1.00 | 4.37 | — |",
        "| Orthanc (SyncStorageArea) | 1 | 100 | 0.23 | 1.00 | — |",
        "| medgate | 4 | 38 | 0.09 | 0.38 | 70 |",
    ]) in text
    assert "_2-core x86_64 (AMD EPYC), host `ci`, 2026-11-22, load average 10.7 → 11.3_" in text
    assert "targets: one association over orthanc ≥ 2.0; 4 associations over storescp ≥ 0.8." in text
    assert "Durability ceiling 0.61 with 1 association(s), 0.70 with 4 association(s): the ratio of a receiver" \
           " that only ran the protocol path and one flush per instance. The durable write alone, no network:" \
           " 0.90 ms an instance into a pre-written slot, 1.21 ms as a new file (temp file, fsync, rename," \
           " directory fsync)." in text
    assert "| bridge, paced at 400/s, median of 3 runs (worst p99 512.2 ms) | 399 | 60.8 | 434.0 | 0 |" in text
    assert "| `mosquitto_sub` alone (same run) | 1,482 | — | — | 0 |" in text


def test_missing_and_unreadable_results_are_not_measured(results):
    (results / "model_core.json").write_text("{not json")
    text = render(results)
    for name in ("ct_latency", "serve_overhead", "soak"):
        assert f"_{NOT_MEASURED}_ (`{name}.json` missing)." in text
    assert f"_{NOT_MEASURED}_ (`model_core.json` is not valid JSON)." in text
    assert f"_{NOT_MEASURED}_" in render(results.parent / "nothing-here")


def test_block_replaced_between_markers_and_second_run_changes_nothing(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n## Benchmarks\n\n{START}\nold table\n{END}\n\n## Layout\ntext\n")
    args = ["--results", str(results), "--readme", str(readme)]
    assert main(args) == 0
    first = readme.read_text()
    assert first.startswith(f"# title\n\n## Benchmarks\n\n{START}\n")
    assert first.endswith(f"\n{END}\n\n## Layout\ntext\n")
    assert "old table" not in first and "| 20 | 302 | 355 | 951 | 300 | no |" in first
    assert main(args) == 0
    assert readme.read_text() == first


def test_readme_without_markers_is_refused():
    with pytest.raises(ValueError, match="bench:start"):
        replace_block("# no markers\n", "table")


def test_iomt_table_gives_the_warm_up_and_the_held_phase_drift(results):
    record = json.loads((results / "iomt_throughput.json").read_text())
    record["paced"].update(seconds=10.0, warmup_s=2.0, warmup_p99_ms=130.2)
    record["sustained"] = {"rate_msgs_per_s": 400.0, "seconds": 30.0, "msgs_per_s": 399.9, "p50_ms": 27.0,
                           "p99_ms": 184.1, "lost": 0, "warmup_s": 2.0, "warmup_p99_ms": 131.0,
                           "p99_ms_by_5s": [56.0, 85.3, 152.7]}
    (results / "iomt_throughput.json").write_text(json.dumps(record))
    text = render(results)
    assert ("| bridge, paced at 400/s for 10 s, median of 3 runs (worst p99 512.2 ms), after a 2 s warm-up"
            " (its p99 130 ms) | 399 | 60.8 | 434.0 | 0 |") in text
    assert ("| bridge, held at 400/s for 30 s (p99 per 5 s: 56, 85, 153 ms), after a 2 s warm-up (its p99"
            " 131 ms) | 400 | 27.0 | 184.1 | 0 |") in text
