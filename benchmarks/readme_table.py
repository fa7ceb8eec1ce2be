"""Regenerate the benchmark tables in README.md from ``benchmarks/results/*.json``.

The block between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is replaced; the rest of the
README is left as it is. Each table names the machine and the date of its JSON; a benchmark with
no JSON is "not measured". The output depends only on the JSON files, so a second run changes
nothing.

    python benchmarks/readme_table.py [--results benchmarks/results] [--readme README.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
NOT_MEASURED = "not measured"


def fmt(value: Any, digits: int = 0) -> str:
    """A number for a table cell: thousands separators, ``digits`` decimals; "—" when absent."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else str(value)
    return f"{value + 0.0 if round(value, digits) else 0.0:,.{digits}f}"  # no "-0.0"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def provenance(record: dict[str, Any]) -> str:
    """``2-core x86_64 (AMD EPYC), host `vm`, 2026-11-22`` and the load average when recorded."""
    m = record.get("machine") or {}
    text = f"{m.get('cpus', '?')}-core {m.get('machine', '?')}"
    if m.get("cpu_model"):
        text += f" ({m['cpu_model']})"
    if m.get("node"):
        text += f", host `{m['node']}`"
    text += f", {str(record.get('date', '?'))[:10]}"
    load = record.get("load_average_1m")
    if isinstance(load, dict) and "before" in load:
        text += f", load average {fmt(load.get('before'), 1)} → {fmt(load.get('after'), 1)}"
    elif isinstance(record.get("load_average"), list) and record["load_average"]:
        text += f", load average {fmt(record['load_average'][0], 1)}"
    return text


# -- one renderer per benchmark: record -> table lines ------------------------------------------
def ingest(r: dict) -> list[str]:
    rows = [[str(x.get("receiver", "?")), fmt(x.get("associations", 1)), fmt(x.get("instances_per_s"), 0),
             fmt(x.get("ratio_to_storescp"), 2), fmt(x.get("ratio_to_orthanc"), 2), fmt(x.get("flushes"))]
            for x in r.get("rows", [])]
    ceiling = r.get("durability_ceiling_ratio")
    if isinstance(ceiling, dict):
        ceiling = ", ".join(f"{fmt(v, 2)} with {k} association(s)" for k, v in ceiling.items())
    elif ceiling is not None:
        ceiling = fmt(ceiling, 2)
    writes = {w.get("writer"): w.get("ms_per_instance") for w in r.get("writes", []) if isinstance(w, dict)}
    slot, new_file = writes.get("slot (write, fdatasync, rename)"), writes.get("write_durably(fsync=True)")
    note = [] if ceiling is None else [
        "", f"Durability ceiling {ceiling}: the ratio of a receiver that only ran the protocol path "
        "and one flush per instance. The durable write alone, no network: "
        f"{fmt(slot, 2)} ms an instance into a pre-written slot, {fmt(new_file, 2)} ms as a new file "
        "(temp file, fsync, rename, directory fsync)."]
    targets = r.get("targets") or {"ratio to storescp": r.get("target_ratio")}
    target_text = "; ".join(f"{k.replace('_', ' ')} ≥ {fmt(v, 1)}" for k, v in targets.items() if v is not None)
    return [f"{fmt(r.get('slices'))} CT slices of {fmt(r.get('size_px'))}² by DCMTK storescu "
            f"(several associations: as many storescu processes at once); targets: {target_text}.", "",
            *table(["receiver", "associations", "instances/s", "ratio to storescp", "ratio to Orthanc",
                    "flushes"], rows), *note]


def cxr_latency(r: dict) -> list[str]:
    target = r.get("target_p50_ms")
    met = "yes" if isinstance(target, (int, float)) and isinstance(r.get("p50_ms"), (int, float)) \
        and r["p50_ms"] <= target else "no"
    return table(["studies", "p50 ms", "p95 ms", "max ms", "target p50 ms", "met"],
                 [[fmt(r.get("n")), fmt(r.get("p50_ms")), fmt(r.get("p95_ms")), fmt(r.get("max_ms")),
                   fmt(target), met]])


def ct_latency(r: dict) -> list[str]:
    series = r.get("series") or {}
    rows = []
    for label, key in (("C-STORE start → SEG and SR at PACS", "seg_and_sr"), ("→ FHIR Bundle at FHIR server", "fhir"),
                       ("storescu send", "send"), ("server inference + writing", "server_processing")):
        p = r.get(key) or {}
        rows.append([label, fmt(p.get("p50_ms")), fmt(p.get("p95_ms"))])
    failed = f"; {fmt(r.get('failed'))} failed" if r.get("failed") else ""
    return [f"{fmt(series.get('slices'))} slices of {fmt(series.get('rows'))}×{fmt(series.get('columns'))}, "
            f"{fmt(r.get('n'))} studies{failed}; completion: {r.get('completion', '—')}.", "",
            *table(["span", "p50 ms", "p95 ms"], rows)]


def model_core(r: dict) -> list[str]:
    rows = [[f"{x.get('model', '?')} {x.get('version', '')}".strip(), str(x.get("engine", "?")),
             str(x.get("device", r.get("device", "?"))), fmt(x.get("batch1_p50_ms"), 2),
             fmt(x.get("batch1_p99_ms"), 2), fmt(x.get("best_items_per_s"), 1), fmt(x.get("best_batch"))]
            for x in r.get("rows", [])]
    return table(["model", "engine", "device", "batch 1 p50 ms", "batch 1 p99 ms", "best items/s", "at batch"], rows)


def serve_overhead(r: dict) -> list[str]:
    rows = []
    for name, path in (r.get("paths") or {}).items():
        seq, conc = path.get("sequential") or {}, path.get("concurrent") or {}
        rows.append([name, fmt(seq.get("p50_ms"), 1), fmt(seq.get("p99_ms"), 1), fmt(seq.get("req_per_s"), 0),
                     fmt(conc.get("req_per_s"), 0), fmt(conc.get("p99_ms"), 0)])
    c = fmt(r.get("concurrency"))
    direct = r.get("direct_batches") or {}
    best = f" The direct engine's best: {fmt(direct.get('best_items_per_s'), 0)} items/s." if direct else ""
    goals = [f"{name.replace('_', ' ')}: {'pass' if g.get('pass') else 'not met' if g.get('pass') is False else '—'}"
             for name, g in (r.get("targets") or {}).items()]
    return [f"Model `{r.get('model', '?')}`, {fmt(r.get('n'))} requests per path.{best}", "",
            *table(["path", "sequential p50 ms", "p99 ms", "req/s", f"{c} concurrent req/s", "p99 ms"], rows),
            *(["", "Targets (issue 21): " + "; ".join(goals) + "."] if goals else [])]


def iomt(r: dict) -> list[str]:
    rows = []
    for label, key in (("bridge, saturation", "saturation"), ("bridge, paced", "paced"),
                       ("bridge, held", "sustained")):
        p = r.get(key)
        if isinstance(p, dict):
            rate = f" at {fmt(p['rate_msgs_per_s'])}/s" if "rate_msgs_per_s" in p else ""
            if key == "sustained":
                rate += f" for {fmt(p.get('seconds'))} s (p99 per 5 s: " \
                        f"{', '.join(fmt(v, 0) for v in p.get('p99_ms_by_5s') or [])} ms)"
            if "repeats" in p:
                rate += f" for {fmt(p['seconds'])} s," if "seconds" in p else ","
                rate += f" median of {fmt(p['repeats'])} runs" \
                        f" (worst p99 {fmt(p.get('worst_p99_ms'), 1)} ms)"
            if p.get("warmup_s"):
                rate += f", after a {fmt(p['warmup_s'])} s warm-up" \
                        f" (its p99 {fmt(p.get('warmup_p99_ms'), 0)} ms)"
            rows.append([label + rate, fmt(p.get("msgs_per_s"), 0), fmt(p.get("p50_ms"), 1), fmt(p.get("p99_ms"), 1),
                         fmt(p.get("lost"))])
    raw = r.get("mosquitto_sub")
    if isinstance(raw, dict):
        rows.append(["`mosquitto_sub` alone (same run)", fmt(raw.get("msgs_per_s"), 0), "—", "—",
                     fmt(raw["messages"] - raw["received"]) if "messages" in raw and "received" in raw else "—"])
    target = r.get("target") or {}
    return [f"{fmt(r.get('beds'))} beds → Mosquitto → bridge → stored Observations; target "
            f"{fmt(target.get('msgs_per_s'))} msg/s, p99 ≤ {fmt(target.get('p99_ms'))} ms.", "",
            *table(["phase", "msg/s", "p50 ms", "p99 ms", "lost"], rows)]


def soak(r: dict) -> list[str]:
    growth = r.get("growth_per_hour") or {}
    roles = [n for n in growth if n not in ("total", "state_dir") and "rss_mib" in growth[n]]
    roles.sort(key=lambda n: -(growth[n]["rss_mib"].get("end") or 0))
    rows = []
    for name in ["total", *roles[:6]]:
        g = growth.get(name) or {}
        rss, fds, threads = g.get("rss_mib") or {}, g.get("fds") or {}, g.get("threads") or {}
        rows.append([name, fmt(rss.get("end"), 0), fmt(rss.get("per_hour"), 1), fmt(fds.get("end")),
                     fmt(fds.get("per_hour"), 1), fmt(threads.get("end")), fmt(threads.get("per_hour"), 1)])
    lost = r.get("lost") or {}
    leaks = r.get("leaks")
    short = " (short run: indicative only)" if r.get("indicative_only") else ""
    var = (growth.get("state_dir") or {}).get("mib") or {}
    return [f"{fmt(r.get('minutes'), 1)} minutes{short}; lost studies {fmt(lost.get('studies'))}, lost vitals "
            f"{fmt(lost.get('vitals'))}, failed requests {fmt(r.get('failed_requests'))}; leaks: "
            + ("; ".join(leaks) if leaks else "none above the limits") + f"; state_dir "
            f"{fmt(var.get('per_hour'), 0)} MiB/h. Growth is a line fitted over the second half.", "",
            *table(["process", "RSS MiB", "RSS MiB/h", "fds", "fds/h", "threads", "threads/h"], rows)]


def gpu_check(r: dict) -> list[str]:
    if not r.get("gpu"):
        return [f"No CUDA GPU on the machine that ran it: {r.get('skipped', 'skipped')}."]
    gpu = r["gpu"]
    rows = []
    for model, m in (r.get("models") or {}).items():
        ceiling = m.get("ceiling") or {}
        for name, e in (m.get("engines") or {}).items():
            note = e.get("skipped") or e.get("error") or ""
            rows.append([model, name, fmt(e.get("batch1_p50_ms"), 2), fmt(e.get("batch1_vs_ceiling"), 2),
                         fmt(e.get("best_items_per_s"), 0), fmt(e.get("throughput_vs_ceiling"), 2), note[:60]])
        if ceiling:
            rows.append([model, "ceiling: torch CUDA graph fp16", fmt(ceiling.get("batch1_p50_ms"), 2), "1",
                         fmt(ceiling.get("best_items_per_s"), 0), "1", ""])
    ct = r.get("ct") or {}
    return [f"{gpu.get('name')}, torch {gpu.get('torch')}, CUDA {gpu.get('cuda')}. Chest CT "
            f"{fmt(ct.get('slices'))}×{fmt(ct.get('size_px'))}² to SEG + SR: {fmt(ct.get('total_s'), 2)} s "
            f"(target {fmt(ct.get('target_s'), 0)} s).", "",
            *table(["model", "engine", "batch 1 p50 ms", "× ceiling", "best items/s", "share of ceiling", "note"],
                   rows)]


#: (JSON name, title, renderer), in README order.
SECTIONS: list[tuple[str, str, Callable[[dict], list[str]]]] = [
    ("dicom_ingest", "DICOM ingest vs DCMTK storescp and Orthanc", ingest),
    ("cxr_latency", "Single chest X-ray: C-STORE → SR at the PACS", cxr_latency),
    ("ct_latency", "Chest CT study: C-STORE → SEG + SR at the PACS", ct_latency),
    ("model_core", "Model core (engine + preprocessing, no Ray)", model_core),
    ("serve_overhead", "Serving path: direct engine, Ray Serve handle, HTTP, LitServe, BentoML", serve_overhead),
    ("iomt_throughput", "IoMT vitals throughput", iomt),
    ("soak", "Soak: growth per hour under mixed load", soak),
    ("gpu_check", "GPU kit (`make gpu-check`)", gpu_check),
]


def render(results: Path) -> str:
    """The markdown between the markers, from the JSON files in ``results``."""
    lines = ["", "Generated by `benchmarks/readme_table.py` from `benchmarks/results/*.json` (`make bench`).", ""]
    for name, title, renderer in SECTIONS:
        path = results / f"{name}.json"
        lines.append(f"### {title}")
        lines.append("")
        if not path.is_file():
            lines += [f"_{NOT_MEASURED}_ (`{path.name}` missing).", ""]
            continue
        try:
            record = json.loads(path.read_text())
        except ValueError:
            lines += [f"_{NOT_MEASURED}_ (`{path.name}` is not valid JSON).", ""]
            continue
        plot = f" · [plot](benchmarks/results/{name}.png)" if path.with_suffix(".png").is_file() else ""
        lines += [f"_{provenance(record)}{plot}_", "", *renderer(record), ""]
    return "\n".join(lines)


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text between the markers replaced by ``block`` (markers kept).

    Raises
    ------
    ValueError
        When the markers are missing or out of order.
    """
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README must contain {START} followed by {END}")
    return readme[:start + len(START)] + "\n" + block.strip("\n") + "\n\n" + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)
    old = args.readme.read_text()
    new = replace_block(old, render(args.results))
    if new != old:
        args.readme.write_text(new)
    print(f"{args.readme}: benchmark tables {'updated' if new != old else 'unchanged'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
