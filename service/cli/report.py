"""`report weekly`: the Monday report for the IT lead, the safeguarding lead and the DPO
(service/reports.py), and with `--output-dir` the week's CSV exports beside it."""

from __future__ import annotations

import json
import os
import sys
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import typer

from service import reports
from service.cli.common import JsonOption, console, fail, get_state
from service.exports import ExportQuery, all_exporters, export_zones, write_rows
from service.text import json_visible

report_app = typer.Typer(
    help="Reports for the school's IT lead, DSL and DPO.", no_args_is_help=True
)

# The exports written beside the report with --output-dir, for the same site and window.
WEEK_EXPORTS = ("alerts", "incidents", "coa")
# Exit status when the report was written but the audit chain does not verify: distinct from
# 1 (bad input, no report) and 2 (a usage error), so the timer's unit fails for this reason.
AUDIT_BROKEN_EXIT = 3


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")


@report_app.command("weekly")
def weekly(
    ctx: typer.Context,
    site: str | None = typer.Option(None, "--site", help="One site (default: every site)."),
    since: str | None = typer.Option(
        None,
        "--since",
        help="ISO 8601 date or date-time, site-local without an offset "
        "(default: 7 days before --until).",
    ),
    until: str | None = typer.Option(
        None, "--until", help="Not included (default: the start of today, site-local)."
    ),
    as_json: bool = JsonOption,
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the report here."),
    output_dir: Path | None = typer.Option(
        None,
        "--output-dir",
        help="Write report-<site|all>-<first day>.txt (.json with --json) and the week's "
        "alerts, incidents and coa CSV exports here.",
    ),
) -> None:
    """The week in counts: RADIUS decisions, devices, CoA, alerts, incidents, visitor
    signatures, retention, and the audit chain checked as `audit verify` does. Exits 3 (after
    writing the report) if the audit chain does not verify."""
    state = get_state(ctx)
    if output is not None and output_dir is not None:
        fail("give -o FILE or --output-dir DIR, not both")
    if output_dir is not None and not output_dir.is_dir():
        fail(f"--output-dir {output_dir} is not a directory")
    if output is not None and not output.parent.is_dir():
        fail(f"cannot write {output}: no directory {output.parent}")
    written: list[Path] = []
    with state.reading() as session:
        zone = reports.report_zone(session=session, site=site)
        window = reports.weekly_window(zone=zone, now=datetime.now(UTC), since=since, until=until)
        report = reports.weekly_report(session, window=window, settings=state.settings, site=site)
        body = (
            json_visible(json.dumps(report, indent=2, ensure_ascii=False)) + "\n"
            if as_json
            else reports.render_text(report)
        )
        files: dict[Path, str | None] = {}
        if output is not None:
            files[output] = body
        elif output_dir is not None:
            stem = f"{site or 'all'}-{window.first_day}"
            files[output_dir / f"report-{stem}.{'json' if as_json else 'txt'}"] = body
            for name in WEEK_EXPORTS:
                files[output_dir / f"{name}-{stem}.csv"] = None
        if files:
            query = ExportQuery(since=window.since, until=window.until, site=site)
            zone_for = export_zones(session=session, site=site)
            exporters = all_exporters()
            parts: list[Path] = []
            try:
                for path, text in files.items():
                    part = path.with_name(path.name + ".part")
                    parts.append(part)
                    with part.open("w", encoding="utf-8", newline="") as handle:
                        if text is not None:
                            handle.write(text)
                        else:
                            name = path.name.split("-", 1)[0]
                            write_rows(
                                exporters[name](session, query), handle, "csv", zone_for=zone_for
                            )
                # Every file is complete before any takes its name: all or nothing.
                for part, path in zip(parts, files, strict=True):
                    os.replace(part, path)
                    written.append(path)
            except OSError as exc:
                fail(f"cannot write {exc.filename or output or output_dir}: {exc.strerror}")
            finally:
                for part in parts:
                    with suppress(OSError):
                        part.unlink()
    if written:
        for path in written:
            console.print(f"wrote {path}", highlight=False)
    else:
        sys.stdout.write(body)
    if not report["audit"]["ok"]:
        raise typer.Exit(AUDIT_BROKEN_EXIT)
