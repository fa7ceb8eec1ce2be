"""``medgate audit verify`` and ``medgate export-training``: the data-governance commands.

``audit verify`` walks the audit log's hash chain; exit 0 when intact, 1 naming the first bad row
(edited, deleted, inserted or reordered), 1 also when ``--head SEQ:HASH`` (a head recorded
earlier) is no longer in the chain.  ``audit list`` prints the newest rows.
``export-training --since YYYY-MM-DD --out DIR`` writes the de-identified training export; with
``--with-feedback`` only studies with clinicians' verdicts, and each model's ``feedback.json`` (the
verdicts per image) that ``medgate train <model> --from-feedback DIR/<model>`` reads.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from serving.governance.audit import AuditLog
from serving.governance.export_training import export_training
from serving.governance.feedback_export import FILE as FEEDBACK_FILE
from kernel.database import store_location

COMMANDS = ("audit", "export-training")


def add_commands(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the audit log of patient-data access").add_subparsers(
        dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check the hash chain; non-zero exit names the first bad row")
    verify.add_argument("--head", help="SEQ:HASH of a head recorded earlier that must still be in the chain")
    listing = audit.add_parser("list", help="print the newest audit rows")
    listing.add_argument("--limit", type=int, default=20)
    export = sub.add_parser("export-training", help="de-identified images + model findings as labels")
    export.add_argument("--since", required=True, help="first day (YYYY-MM-DD, UTC) of studies to export")
    export.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per model)")
    export.add_argument("--salt-file", type=Path, help="reuse this salt (same UIDs/pseudonyms/date shifts)")
    export.add_argument("--with-feedback", action="store_true",
                        help="only studies with clinicians' verdicts; write <model>/feedback.json with them")


def _since(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SystemExit(f"medgate: --since must be a date like 2026-11-01, {value!r} is given") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def run(settings, args: argparse.Namespace) -> int:
    state_dir = settings.state_dir.resolve()
    if args.command == "export-training":
        report = export_training(state_dir, _since(args.since), args.out, salt_file=args.salt_file,
                                 with_feedback=args.with_feedback, store_url=settings.store.url)
        for model, n in sorted(report.images.items()):
            print(f"{model}: {n} de-identified images, datalist {args.out / model / 'dataset.json'}")
        for model, n in sorted(report.feedback_cases.items()):
            print(f"{model}: {n} images with clinicians' verdicts, {args.out / model / FEEDBACK_FILE}")
        for reason, n in report.feedback_skipped.items():
            print(f"verdicts not tied to an image ({reason}): {n}")
        for reason, n in report.excluded.items():
            print(f"excluded ({reason.replace('_', ' ')}): {n}")
        print(f"studies exported: {report.studies}; salt: {report.salt_path} (keep it private)")
        return 0
    log = AuditLog(store_location(settings.store.url, state_dir))  # the cluster's PostgreSQL, or the SQLite file
    try:
        if args.audit_command == "list":
            for row in log.rows(limit=args.limit, newest_first=True):
                print(f"{row['seq']:>7} {row['recorded']} {row['who']} ({row['role']}) {row['action']} "
                      f"{row['resource_type'] or ''}/{row['resource_id'] or row['study_uid'] or ''} "
                      f"{row['outcome']} from {row['client']}")
            return 0
        result = log.verify()
        rows = log.rows() if args.head else []
    finally:
        log.close()
    if not result.ok:
        print(f"audit log TAMPERED: first bad row seq {result.bad_seq}: {result.reason} "
              f"({result.rows} rows checked)")
        return 1
    if args.head:
        seq, _, expected = args.head.partition(":")
        found = next((r for r in rows if str(r["seq"]) == seq), None)
        if found is None or found["hash"] != expected:
            print(f"audit log TAMPERED: recorded head {seq} is missing or changed (rows removed from the end?)")
            return 1
    print(f"audit log intact: {result.rows} rows; head {result.head_seq}:{result.head_hash}")
    return 0
