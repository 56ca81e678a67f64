"""Snapshot benchmark at a trust's size: full build, memory, a change patched in place, and
RADIUS latency while changes stream in (issue 13).

    python bench/snapshot.py [--database-url URL] [--devices 200000] [--sites 40]
                             [--people 60000] [--rate 2000] [--seconds 10] [--changes 10]

1. Generates the trust with bulk inserts (not the CLI): `--sites` sites, each with its own
   copy of Westgate's policy and a NAS (the first site's at 127.0.0.1), `--people` people
   (staff with logins, pupils, visitors), `--devices` devices of every class spread over the
   sites (personal ones owned), signed AUAs and BYOD statements, a few hundred exceptions.
   SQLite in a temporary directory unless `--database-url` names a PostgreSQL database (its
   tables are created by `db upgrade`; give an empty database).
2. In a fresh process: the full build (`radius.snapshot.load_state`) time and the resident
   memory it adds, then `--apply-samples` changes made through the service functions, each
   read from the change log and patched into that state (`load_delta` + `patch_state`): the
   apply time.
3. Starts `schoolgate radius serve --workers 1` (bench/radius_load.py's launcher) and
   measures, over UDP, the time from a change's commit to the server answering it (a revoke:
   the next MAB is rejected), `--apply-samples` times. On SQLite the server polls the change
   counter (every `radius_snapshot_poll_seconds`, 0.25 s): that wait is most of it; on
   PostgreSQL LISTEN/NOTIFY wakes it at once.
4. Sends MAB at `--rate` requests/s for `--seconds` with no change, then the same load while
   another process commits `--changes` changes a second (revokes and approvals of devices in
   the load), and prints p50/p99 of both. The worker's resident memory is read from /proc.

Targets (issue 13): one change applied in under 50 ms; p99 under 5 ms at 2,000 requests/s
while 10 changes a second stream in.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import radius_load  # noqa: E402  (the load generator and launcher: reused, not copied)

from radius import codec  # noqa: E402
from service.mac import format_mac  # noqa: E402

SECRET = radius_load.SECRET
CLASSES = (
    ("school_single", 0.35),
    ("school_shared", 0.15),
    ("learner_owned", 0.20),
    ("staff_owned", 0.15),
    ("visitor_owned", 0.15),
)
PERSONAL = {"learner_owned": "learner", "staff_owned": "staff", "visitor_owned": "visitor"}


def site_code(index: int) -> str:
    return f"school-{index:02d}"


def device_mac(index: int) -> str:
    return radius_load.device_mac(index)


# ---------------------------------------------------------------- 1. the trust
def generate(db_url: str, devices: int, sites: int, people: int, seed: int) -> float:
    """Build the trust; the seconds it took."""
    from sqlalchemy import insert, select

    from service import audit, registry
    from service.db import make_engine, make_session_factory, transaction, upgrade
    from service.enums import AgreementKind
    from service.models import AccessException, Agreement, Device, Person, Signature, Site

    started = time.perf_counter()
    rng = random.Random(seed)
    upgrade(db_url)
    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    policy = (REPO / "deploy" / "policies" / "westgate.toml").read_text()
    now = datetime.now(UTC)
    with transaction(factory) as session:
        for i in range(sites):
            registry.store_policy(
                session,
                text=policy.replace('site = "westgate"', f'site = "{site_code(i)}"'),
                source=f"{site_code(i)}.toml",
                actor="bench",
            )
            registry.add_nas(
                session,
                site_code=site_code(i),
                name=f"nas-{i:02d}",
                address="127.0.0.1" if i == 0 else f"10.{i}.0.1",
                secret=SECRET.decode(),
                vendor="generic",
                actor="bench",
            )
        for kind in AgreementKind:
            registry.publish_agreement(
                session,
                kind=kind,
                text=(REPO / "deploy" / "agreements" / f"{kind.value}.md").read_text(),
                actor="bench",
            )
        site_ids = [
            session.scalar(select(Site.id).where(Site.code == site_code(i))) for i in range(sites)
        ]
        roles = ["learner"] * 6 + ["staff"] * 3 + ["visitor"]
        person_rows = []
        for n in range(people):
            role = roles[n % len(roles)]
            person_rows.append(
                {
                    "site_id": site_ids[n % sites],
                    "role": role,
                    "name": f"Person {n}",
                    "username": f"user{n}" if role == "staff" else None,
                    "active": n % 97 != 0,
                    "failed_logins": 0,
                }
            )
        session.execute(insert(Person), person_rows)
        by_site_role: dict[tuple[int, str], list[int]] = {}
        for pid, sid, role in session.execute(select(Person.id, Person.site_id, Person.role)):
            by_site_role.setdefault((sid, str(role)), []).append(pid)
        names = [c[0] for c in CLASSES]
        weights = [c[1] for c in CLASSES]
        device_rows = []
        for i in range(devices):
            sid = site_ids[i % sites]
            cls = rng.choices(names, weights)[0]
            owners = by_site_role.get((sid, PERSONAL.get(cls, "")), [])
            device_rows.append(
                {
                    "site_id": sid,
                    "mac": device_mac(i),
                    "device_class": cls,
                    "owner_id": rng.choice(owners) if owners else None,
                    "status": "pending" if rng.random() < 0.05 else "active",
                    "needs_reassignment": False,
                }
            )
        for start in range(0, len(device_rows), 20_000):
            session.execute(insert(Device), device_rows[start : start + 20_000])
        agreements = {
            str(kind): (aid, sha)
            for aid, kind, sha in session.execute(
                select(Agreement.id, Agreement.kind, Agreement.sha256)
            )
        }
        signatures = []
        for did, cls, owner in session.execute(
            select(Device.id, Device.device_class, Device.owner_id)
        ):
            if str(cls) == "visitor_owned" and rng.random() < 0.5:
                aid, sha = agreements["visitor_aua"]
                signatures.append((aid, sha, owner, did, now + timedelta(hours=8)))
        for pid in (p for (sid, role), ids in by_site_role.items() if role == "staff" for p in ids):
            if rng.random() < 0.5:
                aid, sha = agreements["staff_byod"]
                signatures.append((aid, sha, pid, None, None))
        session.execute(
            insert(Signature),
            [
                {
                    "agreement_id": aid,
                    "agreement_sha256": sha,
                    "person_id": pid,
                    "device_id": did,
                    "signed_at": now,
                    "typed_name": "Bench Signer",
                    "valid_until": until,
                    "source": "portal",
                }
                for aid, sha, pid, did, until in signatures
            ],
        )
        granted = rng.sample(range(1, devices + 1), min(500, devices))
        session.execute(
            insert(AccessException),
            [
                {
                    "device_id": did,
                    "access": "internet",
                    "reason": "bench exception",
                    "approved_by": "head",
                    "valid_from": now - timedelta(days=1),
                    "valid_until": now + timedelta(days=30),
                }
                for did in granted
            ],
        )
        audit.bump_change(session)
    engine.dispose()
    return time.perf_counter() - started


def school_macs(db_url: str) -> list[str]:
    """The first site's active school devices without exceptions (its NAS is 127.0.0.1):
    the MACs of the load and of the changes, each accepted on the full VLAN until revoked."""
    from sqlalchemy import select

    from service.db import make_engine, make_session_factory
    from service.models import AccessException, Device, Site

    engine = make_engine(db_url)
    with make_session_factory(engine)() as session:
        macs = list(
            session.scalars(
                select(Device.mac)
                .join(Site, Device.site_id == Site.id)
                .where(
                    Site.code == site_code(0),
                    Device.device_class.in_(["school_single", "school_shared"]),
                    Device.status == "active",
                    Device.id.not_in(select(AccessException.device_id)),
                )
                .order_by(Device.mac)
            )
        )
    engine.dispose()
    return macs


# ---------------------------------------------------------------- 2. build and apply
def rss_kib(pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def toggle(factory: Any, mac: str, *, revoke: bool) -> None:
    """One change through the service functions, committed."""
    from service import registry
    from service.db import transaction

    with transaction(factory) as session:
        if revoke:
            registry.revoke_device(session, mac=mac, reason="bench", actor="bench")
        else:
            registry.approve_device(session, mac=mac, actor="bench", anyway=True)


def measure_build(db_url: str, samples: int, macs: list[str]) -> dict[str, Any]:
    """Run in a fresh process (`--measure-build`): what one worker pays."""
    from radius.snapshot import load_state, patch_state
    from service.db import make_engine, make_session_factory
    from service.facts import load_delta

    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    with factory() as session:  # connect and import before measuring
        session.connection()
    gc.collect()
    before = rss_kib()
    started = time.perf_counter()
    state = load_state(factory)
    build = time.perf_counter() - started
    gc.collect()
    after = rss_kib()
    rng = random.Random(3)
    applies = []
    fallbacks = 0
    mac = macs[0]
    for n in range(samples):
        if n % 2 == 0:
            mac = rng.choice(macs)
        toggle(factory, mac, revoke=n % 2 == 0)  # a revoke, then its approval
        started = time.perf_counter()
        with factory() as session:
            delta = load_delta(session=session, snapshot=state.snapshot)
        if delta is None:
            fallbacks += 1
            continue
        patch_state(state, delta)
        applies.append(time.perf_counter() - started)
    engine.dispose()
    return {
        "devices": len(state.snapshot.devices),
        "people_with_login": len(state.snapshot.credentials),
        "build_s": build,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "apply_ms": [a * 1000 for a in applies],
        "fallbacks": fallbacks,
    }


# ---------------------------------------------------------------- 3. commit -> answer
def mab(mac: str, ident: int) -> bytes:
    bare = format_mac(mac, "bare")
    attrs = b"".join(
        (
            codec.attr_text(codec.USER_NAME, bare),
            codec.attr(
                codec.USER_PASSWORD, codec.encrypt_user_password(bare.encode(), SECRET, bytes(16))
            ),
            codec.attr_text(codec.CALLING_STATION_ID, format_mac(mac, "hyphen-upper")),
            codec.attr_int(codec.SERVICE_TYPE, codec.SERVICE_TYPE_CALL_CHECK),
            codec.attr_text(codec.NAS_IDENTIFIER, "AP-HALL-03"),
        )
    )
    return codec.encode_request(codec.ACCESS_REQUEST, ident & 0xFF, attrs, SECRET)


def answer_code(sock: socket.socket, mac: str, ident: int) -> int | None:
    sock.send(mab(mac, ident))
    try:
        return sock.recv(4096)[0]
    except TimeoutError:
        return None


def commit_to_answer(db_url: str, port: int, macs: list[str], samples: int) -> list[float]:
    """Seconds from a revoke's commit to the server rejecting the device, and from the
    approval's commit to it being accepted again."""
    from service.db import make_engine, make_session_factory

    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    rng = random.Random(5)
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.connect(("127.0.0.1", port))
        ident = 0
        for n in range(samples):
            mac = rng.choice(macs)
            for revoke in (True, False):
                want = codec.ACCESS_REJECT if revoke else codec.ACCESS_ACCEPT
                toggle(factory, mac, revoke=revoke)
                committed = time.perf_counter()
                while True:
                    ident += 1
                    if answer_code(sock, mac, ident) == want:
                        break
                    if time.perf_counter() - committed > 10:
                        raise SystemExit(f"change {n} on {mac} not answered in 10 s")
                    time.sleep(0.001)
                out.append(time.perf_counter() - committed)
    engine.dispose()
    return out


# ---------------------------------------------------------------- 4. latency under changes
def stream_changes(db_url: str, seconds: float, per_second: float, macs: list[str]) -> int:
    """Run in its own process (`--stream`): changes at a steady rate; how many."""
    from service.db import make_engine, make_session_factory

    engine = make_engine(db_url)
    factory = make_session_factory(engine)
    rng = random.Random(11)
    revoked: list[str] = []
    started = time.perf_counter()
    made = 0
    while True:
        due = started + made / per_second
        now = time.perf_counter()
        if due - started >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        if revoked and (len(revoked) > 20 or rng.random() < 0.5):
            toggle(factory, revoked.pop(0), revoke=False)
        else:
            mac = rng.choice(macs)
            toggle(factory, mac, revoke=True)
            revoked.append(mac)
        made += 1
    for mac in revoked:  # leave the school as it was
        toggle(factory, mac, revoke=False)
    engine.dispose()
    return made


def process_tree_rss(pid: int) -> dict[int, int]:
    out = {pid: rss_kib(pid)}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out.update(process_tree_rss(int(child)))
    return out


def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="schoolgate-snapshot-bench-"))
    db_url = args.database_url or f"sqlite:///{workdir / 'trust.db'}"
    print(f"database: {db_url.split('@')[-1]}")
    if args.generated:
        generated = 0.0
    else:
        generated = generate(db_url, args.devices, args.sites, args.people, seed=1)
    print(
        f"generated {args.devices} devices, {args.people} people, {args.sites} sites "
        f"in {generated:.1f} s"
    )
    school = school_macs(db_url)

    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--measure-build",
            db_url,
            "--devices",
            str(args.devices),
            "--sites",
            str(args.sites),
            "--apply-samples",
            str(args.apply_samples),
        ],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    built = json.loads(child.stdout.strip().splitlines()[-1])

    # A trust's full build takes its time on a busy machine: wait for the first answer longer
    # than radius_load's 60 s.
    radius_load.wait_status.__defaults__ = (args.start_timeout,)
    process, port = radius_load.start_schoolgate(db_url, 1, workdir)
    try:
        rss = process_tree_rss(process.pid)
        worker_rss = max(rss.values())
        lags = commit_to_answer(db_url, port, school, args.apply_samples)
        requests = int(args.rate * args.seconds)
        packets = radius_load.build_requests(school, requests, args.sockets, seed=1)
        quiet = radius_load.run_rate(port, packets, args.rate, args.sockets)
        streamer = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--stream",
                db_url,
                "--devices",
                str(args.devices),
                "--sites",
                str(args.sites),
                "--seconds",
                str(args.seconds),
                "--changes",
                str(args.changes),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.2)  # the streamer's imports
        packets = radius_load.build_requests(school, requests, args.sockets, seed=2)
        busy = radius_load.run_rate(port, packets, args.rate, args.sockets)
        out, _ = streamer.communicate(timeout=120)
        streamed = int(out.strip().splitlines()[-1])
        worker_rss_after = max(process_tree_rss(process.pid).values())
    finally:
        radius_load.stop(process)
    log = (workdir / "schoolgate.log").read_text()
    rebuilds = log.count("loaded in")

    apply = built["apply_ms"]
    rows = [
        ("full build (one worker)", f"{built['build_s'] * 1000:.0f} ms", "", ""),
        (
            "snapshot memory (build adds)",
            f"{(built['rss_after_kib'] - built['rss_before_kib']) / 1024:.0f} MiB",
            "",
            "",
        ),
        (
            "worker RSS (radius serve)",
            f"{worker_rss / 1024:.0f} MiB -> {worker_rss_after / 1024:.0f} MiB",
            "",
            "",
        ),
        (
            "one change applied (load_delta+patch), median",
            f"{statistics.median(apply):.1f} ms",
            "< 50 ms",
            _met(statistics.median(apply) < 50),
        ),
        ("one change applied, max", f"{max(apply):.1f} ms", "< 50 ms", _met(max(apply) < 50)),
        (
            "commit -> answered over UDP, median",
            f"{statistics.median(lags) * 1000:.0f} ms",
            "(poll/LISTEN)",
            "",
        ),
        ("commit -> answered over UDP, max", f"{max(lags) * 1000:.0f} ms", "", ""),
        (
            f"p50 / p99 at {args.rate:.0f}/s, no changes",
            f"{quiet.pct(0.5):.2f} / {quiet.pct(0.99):.2f} ms",
            "p99 < 5 ms",
            _met(quiet.pct(0.99) < 5),
        ),
        (
            f"p50 / p99 at {args.rate:.0f}/s, {streamed / args.seconds:.1f} changes/s",
            f"{busy.pct(0.5):.2f} / {busy.pct(0.99):.2f} ms",
            "p99 < 5 ms",
            _met(busy.pct(0.99) < 5),
        ),
        (
            "answered (no changes / changes)",
            f"{quiet.answered}/{quiet.sent} / {busy.answered}/{busy.sent}",
            "",
            "",
        ),
        ("full rebuilds in the server after start", str(rebuilds), "0", _met(rebuilds == 0)),
    ]
    print(
        f"\n{built['devices']} devices in the snapshot, {built['people_with_login']} logins; "
        f"{len(apply)} changes applied, {built['fallbacks']} fell back to a full build\n"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>26}  {'target':<14} met")
    for name, value, target, met in rows:
        print(f"{name:<{width}}  {value:>26}  {target:<14} {met}")
    if args.keep:
        print(f"\nkept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", help="an empty PostgreSQL database (default: SQLite)")
    parser.add_argument("--devices", type=int, default=200_000)
    parser.add_argument("--sites", type=int, default=40)
    parser.add_argument("--people", type=int, default=60_000)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--changes", type=float, default=10, help="changes a second")
    parser.add_argument("--sockets", type=int, default=4)
    parser.add_argument("--apply-samples", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    parser.add_argument(
        "--generated", action="store_true", help="The database already holds the trust."
    )
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--measure-build", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--stream", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_build:
        macs = school_macs(args.measure_build)
        print(json.dumps(measure_build(args.measure_build, args.apply_samples, macs)))
    elif args.stream:
        macs = school_macs(args.stream)
        print(stream_changes(args.stream, args.seconds, args.changes, macs))
    else:
        run(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
