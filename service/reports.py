"""`schoolgate report weekly`: what the IT lead, the safeguarding lead and the DPO want to
know on Monday, from what the database already records.

Only counts and short top-N lists: never traffic content (no server names, no queries). The
report is a plain dict (`weekly_report`), so `--json` prints it as it is and `render_text`
turns it into the page a person reads. The window is half-open, `since <= t < until`, like
the exports, so two consecutive weekly reports never count an event twice.

Some things the brief for this report asks about are not recorded anywhere yet (which exports
were made, what the RADIUS spool replayed): the report says "not recorded" for them rather
than a zero that would read as "none happened".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from service import audit
from service.config import Settings
from service.enums import AgreementKind, AuditTag, CoaState, IncidentKind
from service.errors import Invalid, NotFound
from service.models import (
    AccountingSession,
    Agreement,
    Approval,
    AuditEntry,
    DecisionRecord,
    Device,
    Incident,
    NasClient,
    Person,
    Signature,
    Site,
)
from service.models.coa import CoaRequest
from service.models.traffic import TrafficAlert
from service.sites import list_sites

TOP = 5  # how long each top-N list is
NOT_RECORDED = "not recorded"
# The device transitions the audit log records, by the name the report gives them.
DEVICE_TAGS = {
    "approved": AuditTag.DEVICE_APPROVE,
    "revoked": AuditTag.DEVICE_REVOKE,
    "lost": AuditTag.DEVICE_LOST,
    "exited": AuditTag.DEVICE_EXIT,
}


@dataclass(frozen=True, slots=True)
class Window:
    """The report's half-open window [since, until) in UTC, and the zone it was made in."""

    since: datetime
    until: datetime
    zone: str

    @property
    def first_day(self) -> str:
        """The first local day the window covers (`report-<site>-<first day>.txt`)."""
        return self.since.astimezone(ZoneInfo(self.zone)).date().isoformat()


def report_zone(*, session: Session, site: str | None) -> str:
    """The time zone the window is counted in: the site's; for every site, the one zone they
    all share, else UTC (a trust across zones gets one window, so the sections add up)."""
    sites = list_sites(session=session)
    if site is not None:
        for summary in sites:
            if summary.code == site:
                return summary.timezone
        raise NotFound(f"no site {site!r} (known: {', '.join(s.code for s in sites) or 'none'})")
    zones = {s.timezone for s in sites}
    return zones.pop() if len(zones) == 1 else "UTC"


def parse_moment(value: str, zone: str, option: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is local time in `zone`."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise Invalid(
            f"{option}: not an ISO 8601 date or date-time: {value!r} (e.g. 2026-11-16)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.astimezone(UTC)


def weekly_window(
    *, zone: str, now: datetime, since: str | None = None, until: str | None = None
) -> Window:
    """The window asked for; by default the last 7 whole days ending at the start of today
    in `zone`. With only one end given, the other is 7 days from it."""
    tz = ZoneInfo(zone)
    today = datetime.combine(now.astimezone(tz).date(), time(), tzinfo=tz)
    end = parse_moment(until, zone, "--until") if until else None
    start = parse_moment(since, zone, "--since") if since else None
    if start is None and end is None:
        end = today.astimezone(UTC)
    if end is None:
        assert start is not None
        end = _days_after(start, tz, 7)
    if start is None:
        start = _days_after(end, tz, -7)
    if start >= end:
        raise Invalid(f"--since must be before --until (got {since or start} and {until or end})")
    return Window(start, end, zone)


def _days_after(moment: datetime, tz: ZoneInfo, days: int) -> datetime:
    """`days` local days on (a week across a clock change is 167 or 169 hours)."""
    return (moment.astimezone(tz) + timedelta(days=days)).astimezone(UTC)


def weekly_report(
    session: Session,
    *,
    window: Window,
    settings: Settings,
    site: str | None = None,
    top: int = TOP,
) -> dict[str, Any]:
    """The report for `site` (or every site, one section each) over `window`, with the
    audit chain checked exactly as `schoolgate audit verify` does."""
    sites = [s for s in list_sites(session=session) if site is None or s.code == site]
    if site is not None and not sites:
        raise NotFound(f"no site {site!r}")
    result = audit.verify_configured(session, settings=settings)
    counts = _Counts(session, window, top)
    return {
        "report": "weekly",
        "site": site or "all",
        "since": window.since.isoformat(),
        "until": window.until.isoformat(),
        "timezone": window.zone,
        "audit": {
            "ok": result.ok,
            "entries": result.entries,
            "keyed": result.keyed,
            "anchors": result.anchors,
            "first_bad_id": result.first_bad_id,
            "problem": result.problem,
            "entries_in_window": counts.audit_entries(),
        },
        "retention": counts.retention(),
        "exports_made": NOT_RECORDED,
        "sites": [counts.site_section(s.code, s.name) for s in sites],
    }


class _Counts:
    """The queries behind one report: each counts within the window, for one site."""

    def __init__(self, session: Session, window: Window, top: int) -> None:
        self.session = session
        self.since = window.since
        self.until = window.until
        self.top = top

    def _in(self, column: Any) -> Any:
        return (column >= self.since) & (column < self.until)

    def _grouped(self, query: Any) -> dict[str, int]:
        """{key: count} from a (key, count) query, biggest first."""
        rows = [
            (("(none)" if k is None else str(k)), int(n)) for k, n in self.session.execute(query)
        ]
        return dict(sorted(rows, key=lambda kv: (-kv[1], kv[0])))

    def _top(self, query: Any) -> list[dict[str, Any]]:
        return [{"name": k, "count": n} for k, n in list(self._grouped(query).items())[: self.top]]

    # ---------------------------------------------------------------- the whole database
    def audit_entries(self) -> int:
        return self._count(select(func.count()).where(self._in(AuditEntry.at)))

    def retention(self) -> dict[str, Any]:
        """What `schoolgate purge` removed in the window, from its audit entries."""
        details = self.session.scalars(
            select(AuditEntry.detail).where(
                AuditEntry.tag == AuditTag.RETENTION_PURGE.value, self._in(AuditEntry.at)
            )
        )
        runs = 0
        removed: dict[str, int] = {}
        for detail in details:
            runs += 1
            for table, count in (detail or {}).get("removed", {}).items():
                removed[table] = removed.get(table, 0) + int(count)
        return {"runs": runs, "removed": dict(sorted(removed.items()))}

    def _count(self, query: Any) -> int:
        return int(self.session.scalar(query) or 0)

    # ---------------------------------------------------------------- one site
    def site_section(self, code: str, name: str) -> dict[str, Any]:
        it = self.it_lead(code)
        safeguarding = self.safeguarding(code)
        dpo = self.dpo(code)
        empty = (
            it["decisions"]["total"] == 0
            and not any(it["devices"].values())
            and not it["coa"]
            and safeguarding["alerts"]["total"] == 0
            and safeguarding["incidents"]["total"] == 0
            and safeguarding["visitor_aua_signatures"] == 0
        )
        return {
            "code": code,
            "name": name,
            "empty": empty,
            "it_lead": it,
            "safeguarding": safeguarding,
            "dpo": dpo,
        }

    def it_lead(self, code: str) -> dict[str, Any]:
        decided = (DecisionRecord.site_code == code) & self._in(DecisionRecord.decided_at)
        nas = func.coalesce(DecisionRecord.nas_name, DecisionRecord.nas_ip)
        total = self._count(select(func.count()).where(decided))
        by_access = self._grouped(
            select(DecisionRecord.access, func.count())
            .where(decided)
            .group_by(DecisionRecord.access)
        )
        by_nas = self._grouped(select(nas, func.count()).where(decided).group_by(nas))
        refusals = self._top(
            select(DecisionRecord.reason, func.count())
            .where(decided, DecisionRecord.access == "none")
            .group_by(DecisionRecord.reason)
        )
        registration = self._count(
            select(func.count(func.distinct(DecisionRecord.mac))).where(
                decided, DecisionRecord.access == "registration"
            )
        )
        return {
            "decisions": {
                "total": total,
                "by_access": by_access,
                "by_nas": by_nas,
                "top_refusal_reasons": refusals,
            },
            "devices": self.devices(code),
            "registration_network_devices": registration,
            "coa": self.coa(code),
            "unanswered_nas": self.unanswered_nas(code),
            "silent_nas": self.silent_nas(code),
            "spool_replay": NOT_RECORDED,
        }

    def devices(self, code: str) -> dict[str, int]:
        """Devices added (created, by any route: CLI, import, portal) and the transitions the
        audit log recorded, each counted as often as it happened."""
        site_id = select(Site.id).where(Site.code == code).scalar_subquery()
        counts = {
            "added": self._count(
                select(func.count()).where(Device.site_id == site_id, self._in(Device.created_at))
            )
        }
        for label, tag in DEVICE_TAGS.items():
            if tag is AuditTag.DEVICE_APPROVE:  # approvals have their own table
                counts[label] = self._count(
                    select(func.count())
                    .select_from(Approval)
                    .join(Device, Approval.device_id == Device.id)
                    .where(Device.site_id == site_id, self._in(Approval.approved_at))
                )
                continue
            counts[label] = self._count(
                select(func.count())
                .select_from(AuditEntry)
                .join(Device, Device.mac == AuditEntry.subject)
                .where(AuditEntry.tag == tag.value, Device.site_id == site_id)
                .where(self._in(AuditEntry.at))
            )
        return counts

    def _coa_of_site(self, code: str) -> Any:
        """CoA requests for this site's NAS (or, without a NAS row, its accounting session)."""
        nas_site = aliased(Site)
        return (
            select(CoaRequest)
            .outerjoin(NasClient, CoaRequest.nas_id == NasClient.id)
            .outerjoin(nas_site, NasClient.site_id == nas_site.id)
            .outerjoin(AccountingSession, CoaRequest.session_row_id == AccountingSession.id)
            .where(
                func.coalesce(nas_site.code, AccountingSession.site_code) == code,
                self._in(CoaRequest.created_at),
            )
            .subquery()
        )

    def coa(self, code: str) -> dict[str, int]:
        """Requests made in the window, by the state they are in now (queued, sent, ack, nak,
        timeout, failed, fallback)."""
        rows = self._coa_of_site(code)
        return self._grouped(select(rows.c.state, func.count()).group_by(rows.c.state))

    def unanswered_nas(self, code: str) -> list[dict[str, Any]]:
        """The NAS whose CoA requests timed out: the controller did not answer on its CoA port."""
        rows = self._coa_of_site(code)
        nas = select(NasClient.name).where(NasClient.id == rows.c.nas_id).scalar_subquery()
        label = func.coalesce(nas, rows.c.nas_ip)
        return self._top(
            select(label, func.count())
            .where(rows.c.state == CoaState.TIMEOUT.value)
            .group_by(label)
        )

    def silent_nas(self, code: str) -> list[str]:
        """The site's NAS clients that sent no request the whole window (neither a decision
        nor accounting): a controller pointed elsewhere, or down."""
        decided = select(DecisionRecord.nas_name).where(
            DecisionRecord.site_code == code,
            DecisionRecord.nas_name.is_not(None),
            self._in(DecisionRecord.decided_at),
        )
        accounted = select(AccountingSession.nas_id).where(
            AccountingSession.nas_id.is_not(None),
            or_(self._in(AccountingSession.updated_at), self._in(AccountingSession.started_at)),
        )
        query = (
            select(NasClient.name)
            .join(Site, NasClient.site_id == Site.id)
            .where(Site.code == code)
            .where(NasClient.name.not_in(decided), NasClient.id.not_in(accounted))
            .order_by(NasClient.name)
        )
        return list(self.session.scalars(query))

    def safeguarding(self, code: str) -> dict[str, Any]:
        raised = (TrafficAlert.site_code == code) & self._in(TrafficAlert.raised_at)
        device = func.coalesce(Device.name, TrafficAlert.mac, TrafficAlert.client_ip)
        by_device = (
            select(device, func.count())
            .select_from(TrafficAlert)
            .outerjoin(Device, Device.id == TrafficAlert.device_id)
            .where(raised)
            .group_by(device)
        )
        by_person = (
            select(Person.name, func.count())
            .select_from(TrafficAlert)
            .join(Person, Person.id == TrafficAlert.person_id)
            .where(raised)
            .group_by(Person.name)
        )
        incidents = self._incidents(code)
        return {
            "alerts": {
                "total": self._count(select(func.count()).where(raised)),
                "by_kind": self._grouped(
                    select(TrafficAlert.kind, func.count())
                    .where(raised)
                    .group_by(TrafficAlert.kind)
                ),
                "by_category": self._grouped(
                    select(TrafficAlert.category, func.count())
                    .where(raised)
                    .group_by(TrafficAlert.category)
                ),
                "top_devices": self._top(by_device),
                "top_people": self._top(by_person),
            },
            "incidents": {"total": sum(incidents.values()), "by_kind": incidents},
            "visitor_aua_signatures": self._visitor_signatures(code),
        }

    def _incidents(self, code: str, kinds: Iterable[IncidentKind] | None = None) -> dict[str, int]:
        query = (
            select(Incident.kind, func.count())
            .join(Device, Incident.device_id == Device.id)
            .join(Site, Device.site_id == Site.id)
            .where(Site.code == code, self._in(Incident.reported_at))
            .group_by(Incident.kind)
        )
        if kinds is not None:
            query = query.where(Incident.kind.in_(list(kinds)))
        return self._grouped(query)

    def _visitor_signatures(self, code: str) -> int:
        signer = aliased(Person)
        device_site = aliased(Site)
        person_site = aliased(Site)
        query = (
            select(func.count())
            .select_from(Signature)
            .join(Agreement, Signature.agreement_id == Agreement.id)
            .outerjoin(Device, Signature.device_id == Device.id)
            .outerjoin(device_site, Device.site_id == device_site.id)
            .outerjoin(signer, Signature.person_id == signer.id)
            .outerjoin(person_site, signer.site_id == person_site.id)
            .where(
                Agreement.kind == AgreementKind.VISITOR_AUA,
                func.coalesce(device_site.code, person_site.code) == code,
                self._in(Signature.signed_at),
            )
        )
        return self._count(query)

    def dpo(self, code: str) -> dict[str, Any]:
        """Lost and stolen devices reported (seeds 000, 001: logged with the DPO), and how many
        of those reports the DPO has been told of."""
        lost = (IncidentKind.LOST, IncidentKind.STOLEN)
        notified = self._count(
            select(func.count())
            .select_from(Incident)
            .join(Device, Incident.device_id == Device.id)
            .join(Site, Device.site_id == Site.id)
            .where(Site.code == code, self._in(Incident.reported_at))
            .where(Incident.kind.in_(lost), Incident.dpo_notified_at.is_not(None))
        )
        reports = self._incidents(code, lost)
        return {
            "lost_device_reports": sum(reports.values()),
            "lost_device_reports_by_kind": reports,
            "dpo_notified": notified,
        }


# ---------------------------------------------------------------- the page a person reads
def render_text(report: dict[str, Any]) -> str:
    """The report as plain text: the audit result first, then one section per site."""
    zone = ZoneInfo(report["timezone"])

    def local(value: str) -> str:
        return datetime.fromisoformat(value).astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")

    lines: list[str] = []
    audit_part = report["audit"]
    if not audit_part["ok"]:
        lines += [
            f"!! AUDIT LOG BROKEN: entry {audit_part['first_bad_id']}: {audit_part['problem']}",
            "!! Nothing in this report can be taken as the whole record: run "
            "`schoolgate audit verify` and tell the DPO.",
            "",
        ]
    lines += [
        f"schoolgate weekly report: {report['site']}",
        f"from {local(report['since'])} to {local(report['until'])} (until is not included)",
        "",
        "Data protection (all sites)",
        "  audit chain: "
        + (
            f"verified, {audit_part['entries']} entries ({audit_part['keyed']} keyed, "
            f"{audit_part['anchors']} anchors checked)"
            if audit_part["ok"]
            else f"DOES NOT VERIFY ({audit_part['entries']} entries read)"
        ),
        f"  audit entries in this period: {audit_part['entries_in_window']}",
    ]
    retention = report["retention"]
    if retention["runs"]:
        removed = ", ".join(f"{t} {n}" for t, n in retention["removed"].items() if n) or "nothing"
        lines.append(f"  retention purge: {retention['runs']} run(s), removed {removed}")
    else:
        lines.append("  retention purge: did not run in this period")
    lines.append(f"  exports made: {report['exports_made']}")
    if not report["sites"]:
        lines += ["", "No sites."]
    for section in report["sites"]:
        lines += ["", *_site_lines(section)]
    return "\n".join(lines) + "\n"


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in values.items()) or "none"


def _tops(values: list[dict[str, Any]]) -> str:
    return "; ".join(f"{v['name']} ({v['count']})" for v in values) or "none"


def _site_lines(section: dict[str, Any]) -> list[str]:
    it, sg, dpo = section["it_lead"], section["safeguarding"], section["dpo"]
    title = f"== {section['name']} ({section['code']}) =="
    if section["empty"]:
        return [title, "  Nothing was recorded at this site in this period."]
    decisions = it["decisions"]
    devices = it["devices"]
    return [
        title,
        "IT lead",
        f"  RADIUS decisions: {decisions['total']}",
        f"    by access level: {_counts(decisions['by_access'])}",
        f"    by NAS: {_counts(decisions['by_nas'])}",
        f"    top refusal reasons: {_tops(decisions['top_refusal_reasons'])}",
        "  devices: " + ", ".join(f"{k} {v}" for k, v in devices.items()),
        f"  devices seen on the registration network: {it['registration_network_devices']}",
        f"  CoA requests: {_counts(it['coa'])}",
        f"  NAS that did not answer CoA: {_tops(it['unanswered_nas'])}",
        f"  NAS that sent nothing in this period: {', '.join(it['silent_nas']) or 'none'}",
        f"  spool replay: {it['spool_replay']}",
        "Safeguarding lead",
        f"  alerts: {sg['alerts']['total']}",
        f"    by kind: {_counts(sg['alerts']['by_kind'])}",
        f"    by category: {_counts(sg['alerts']['by_category'])}",
        f"    top devices: {_tops(sg['alerts']['top_devices'])}",
        f"    top people: {_tops(sg['alerts']['top_people'])}",
        f"  incidents: {sg['incidents']['total']} ({_counts(sg['incidents']['by_kind'])})",
        f"  visitor AUA signatures: {sg['visitor_aua_signatures']}",
        "DPO",
        f"  lost or stolen device reports: {dpo['lost_device_reports']}"
        f" (DPO notified of {dpo['dpo_notified']})",
    ]
