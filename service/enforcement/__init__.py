"""Enforcement: CoA / Disconnect requests (RFC 5176), from the change that needs one to its end.

Domain code only, no RADIUS here:

- `triggers`: `watch()` wraps a change and queues a durable `CoaRequest` row, in the change's
  transaction, for each open session whose (access, VLAN) it moved; `disconnect_device`,
  `queue_expired_grants`.
- `dispatcher`: the request state machine (`claim`, `settle`: retry with backoff, NAK ->
  Disconnect fallback, timeout, failure) and the `Dispatcher` that drives rows through it;
  `send_queued` (what an adapter calls after its commit), `drain`, `run_dispatcher`.
- `sending`: the `CoaSender` Protocol the dispatcher sends through (the UDP one is
  `radius.coa.sender.UdpCoaSender`, chosen by `radius.coa.sender_for(settings)`), and
  `NullCoaSender`.
- `workers`: the snapshot each RADIUS worker answers from (`report_worker`), so a request is
  sent only once every live worker has loaded its change (`lagging_workers`).
- `leader`: the dispatcher lock, so exactly one long-running dispatcher works per database
  (`run_dispatcher` takes it; `active_dispatcher` says who holds it).
- `records`: one transition recorded, listing, the `coa` export and retention.
"""

from __future__ import annotations

from service.enforcement.dispatcher import (
    Attempt,
    Dispatcher,
    Held,
    attempt_wait,
    claim,
    drain,
    due_request_ids,
    run_dispatcher,
    send_queued,
    settle,
)
from service.enforcement.leader import ActiveDispatcher, active_dispatcher, dispatcher_lock
from service.enforcement.records import (
    EXPORTS,
    export_coa,
    list_requests,
    purge,
    record,
    request_dict,
)
from service.enforcement.sending import (
    CoaAnswer,
    CoaReply,
    CoaSender,
    CoaTarget,
    NullCoaSender,
)
from service.enforcement.triggers import (
    PENDING_KEY,
    QUEUED_FLAG,
    disconnect_device,
    queue_expired_grants,
    watch,
)
from service.enforcement.workers import (
    WorkerReport,
    forget_worker,
    lagging_workers,
    list_workers,
    report_worker,
)

__all__ = [
    "EXPORTS",
    "PENDING_KEY",
    "QUEUED_FLAG",
    "ActiveDispatcher",
    "Attempt",
    "CoaAnswer",
    "CoaReply",
    "CoaSender",
    "CoaTarget",
    "Dispatcher",
    "Held",
    "NullCoaSender",
    "WorkerReport",
    "active_dispatcher",
    "attempt_wait",
    "claim",
    "disconnect_device",
    "dispatcher_lock",
    "drain",
    "due_request_ids",
    "export_coa",
    "forget_worker",
    "lagging_workers",
    "list_requests",
    "list_workers",
    "purge",
    "queue_expired_grants",
    "record",
    "report_worker",
    "request_dict",
    "run_dispatcher",
    "send_queued",
    "settle",
    "watch",
]
