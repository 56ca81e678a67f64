"""Policy engine throughput: decisions per second on one core.

A generated trust of 30,000 devices across 10 sites, each site with the SPT working-hours rule
(excepted staffroom and SLT offices), a BYOD-free changing room and an exam-season rule, asked
from a mix of access points through a school week. Target (issue 2): >= 100,000 decisions/s.

    python bench/policy.py [--devices 30000] [--decisions 300000]
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from service.enums import DeviceClass, DeviceStatus
from service.policy import NO_EXPIRY, AccessRequest, DeviceFacts, decide, load_policy_text

SPT = (Path(__file__).resolve().parents[1] / "deploy" / "policies" / "spt.toml").read_text()
EXTRA = """
[[locations]]
name = "changing-rooms"
match = ["AP-CHANGING-*"]

[[locations]]
name = "exam-hall"
match = ["AP-HALL-*"]

[[rules]]
name = "changing rooms are BYOD free"
classes = ["staff_owned", "visitor_owned", "learner_owned"]
locations = ["changing-rooms"]
access = "none"

[[rules]]
name = "exams"
classes = ["staff_owned", "visitor_owned", "learner_owned"]
locations = ["exam-hall"]
days = "mon-fri"
between = "08:00-17:00"
from = "2026-05-10T00:00"
until = "2027-06-26T00:00"
access = "none"
"""
APS = ["AP-CLASS-{}", "AP-STAFFROOM-{}", "AP-SLT-{}", "AP-CHANGING-{}", "AP-HALL-{}", "AP-LIB-{}"]
CLASSES = list(DeviceClass)


def build(devices: int, sites: int, rng: random.Random) -> tuple[list, dict]:
    policies = {}
    for i in range(sites):
        text = SPT.replace('site = "spt"', f'site = "site{i}"') + EXTRA
        policies[f"site{i}"] = load_policy_text(text, f"site{i}.toml")
    facts = []
    for n in range(devices):
        cls = rng.choice(CLASSES)
        facts.append(
            DeviceFacts(
                mac=":".join(f"{b:02x}" for b in (2, 0, *n.to_bytes(4, "big"))),
                device_class=cls,
                status=rng.choice(
                    [DeviceStatus.ACTIVE] * 8 + [DeviceStatus.PENDING, DeviceStatus.LOST]
                ),
                site_code=f"site{n % sites}",
                aua_valid_until=rng.choice([None, NO_EXPIRY, 1.9e9]),
                byod_valid_until=rng.choice([None, NO_EXPIRY]),
            )
        )
    return facts, policies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=30_000)
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--decisions", type=int, default=300_000)
    args = parser.parse_args()
    rng = random.Random(7)
    facts, policies = build(args.devices, args.sites, rng)
    start = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)  # a Monday; the day runs over the rules
    work = []
    for i in range(args.decisions):
        device = facts[rng.randrange(len(facts))] if i % 20 else None  # 5% unknown devices
        site = device.site_code if device else "site0"
        ap = rng.choice(APS).format(rng.randrange(40))
        when = start + timedelta(seconds=i * 36_000 / args.decisions)  # 07:00 to 17:00
        work.append(
            (
                AccessRequest(mac=device.mac if device else "02:ff:ff:ff:ff:ff", nas_identifier=ap),
                device,
                policies[site],
                when,
            )
        )
    for request, device, policy, when in work[:10_000]:  # warm the memo tables
        decide(request, device, policy, when)
    began = time.perf_counter()
    for request, device, policy, when in work:
        decide(request, device, policy, when)
    elapsed = time.perf_counter() - began
    rate = args.decisions / elapsed
    print(
        f"policy engine: {args.decisions:,} decisions over {args.devices:,} devices, "
        f"{args.sites} sites in {elapsed:.2f} s = {rate:,.0f} decisions/s "
        f"({1e6 / rate:.1f} µs each); target 100,000/s: {'met' if rate >= 100_000 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
