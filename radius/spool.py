"""The spool: a local append-only file of what could not reach the database, replayed in order.

When the database cannot be reached, a RADIUS worker appends accounting records (its writer
thread, radius/writer.py) and decision rows (its decision-log process, radius/decision_log.py)
to one file each, `<state_dir>/spool/<node>-<auth port>-w<worker>-<kind>.spool`, and replays
them in order, in batches, once the database answers again; then the file is truncated. A
record is acknowledged (the Accounting-Response sent) only after its batch is written and
fsync'd, so an acknowledged record survives a crash of the process; a process that starts with
a non-empty spool replays it first (everything new goes behind it, to keep the order).

Format: one record per line, `<crc32 of the JSON, 8 hex digits> <JSON>\\n`. A torn last line
(a crash in the middle of a write, never acknowledged) fails its checksum or has no newline: it
is skipped with one log line and cut off when the file is opened. The file is capped at
`radius_spool_max_bytes`: past it, `append` refuses (accounting is then not answered, so the
NAS retransmits; decision rows are counted lost), logged once per outage.

Replaying twice is harmless: every record carries its key (`AcctRecord.key`, the decision's
`log_key`) and the database stores each key once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import zlib
from collections.abc import Sequence
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from service.accounting import AcctRecord
from service.errors import Invalid

log = logging.getLogger("schoolgate.radius.spool")

_ACCT_FIELDS = tuple(f.name for f in fields(AcctRecord))


def spool_path(state_dir: Path, *, auth_port: int, worker: int, kind: str) -> Path:
    """Where worker `worker` of the server on `auth_port` of this machine spools `kind`
    ("accounting" or "decisions"): stable across restarts of the worker, so a restarted worker
    replays what its predecessor left, and one file per server (`claim_ports` keeps two servers
    off one port)."""
    node = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    return state_dir / "spool" / f"{node}-{auth_port}-w{worker}-{kind}.spool"


def encode_record(record: AcctRecord) -> dict[str, Any]:
    data = asdict(record)
    data["at"] = record.at.isoformat()
    return data


def decode_record(data: dict[str, Any]) -> AcctRecord:
    values: dict[str, Any] = {name: data.get(name) for name in _ACCT_FIELDS}
    values["at"] = datetime.fromisoformat(data["at"])
    return AcctRecord(**values)


class SpoolFull(Exception):
    """The spool would grow past its cap."""


class Spool:
    """One append-only spool file, written and replayed by one thread of one process (an
    exclusive `flock` keeps a restarted worker off the file until its predecessor's writer
    has let go of it)."""

    def __init__(self, path: Path, *, max_bytes: int, what: str) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.what = what
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise Invalid(
                f"cannot open the RADIUS spool {path}: {exc.strerror}; the state directory "
                "(SCHOOLGATE_STATE_DIR) must be writable by the service user"
            ) from exc
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for a predecessor still writing
        self._fd = fd
        self._read_offset = 0  # where replay resumes (records before it are stored)
        self.depth = 0  # records waiting
        self._full_logged = False
        self._open_existing()

    # --- opening --------------------------------------------------------------------------

    def _open_existing(self) -> None:
        """Count the records waiting; cut off a torn last line (never acknowledged)."""
        size = self._size()
        if size == 0:
            return
        good_end = 0
        records = 0
        offset = 0
        with self.path.open("rb") as reader:
            for line in reader:
                offset += len(line)
                if _decode_line(line) is not None:
                    records += 1
                    good_end = offset
                elif offset < size:
                    log.error("%s: %s: a damaged record skipped", self.what, self.path)
        if good_end < size:
            log.error(
                "%s: %s: a torn last record (%d bytes, never acknowledged) skipped",
                self.what,
                self.path,
                size - good_end,
            )
            os.ftruncate(self._fd, good_end)
            os.fsync(self._fd)
        self.depth = records
        if records:
            log.warning(
                "%s: %d records left in %s by an earlier run: replaying them first",
                self.what,
                records,
                self.path,
            )

    # --- writing --------------------------------------------------------------------------

    def append(self, items: Sequence[Any]) -> None:
        """Append `items` (JSON values), flushed and fsync'd when this returns; all or none:
        raises `SpoolFull` past the cap (logged once until the spool drains)."""
        if not items:
            return
        lines = []
        for item in items:
            payload = json.dumps(item, separators=(",", ":")).encode()
            lines.append(b"%08x %s\n" % (zlib.crc32(payload), payload))
        blob = b"".join(lines)
        size = self._size()
        if size + len(blob) > self.max_bytes:
            if not self._full_logged:
                self._full_logged = True
                log.error(
                    "%s: spool %s is full (%d of %d bytes): not keeping more until the "
                    "database is back (logged once)",
                    self.what,
                    self.path,
                    size,
                    self.max_bytes,
                )
            raise SpoolFull(self.path)
        written = 0
        while written < len(blob):  # O_APPEND: at the end, whatever the offset
            written += os.write(self._fd, blob[written:])
        os.fsync(self._fd)
        self.depth += len(items)

    # --- replaying ------------------------------------------------------------------------

    def peek(self, limit: int) -> tuple[list[Any], int]:
        """Up to `limit` records from where replay stands, in order, and the offset after
        them (hand it to `consumed` once they are stored)."""
        items: list[Any] = []
        offset = self._read_offset
        with self.path.open("rb") as reader:
            reader.seek(offset)
            for line in reader:
                if not line.endswith(b"\n"):
                    break  # not ours: appends are whole lines
                offset += len(line)
                item = _decode_line(line)
                if item is None:
                    log.error("%s: %s: a damaged record skipped", self.what, self.path)
                    continue
                items.append(item)
                if len(items) >= limit:
                    break
        return items, offset

    def consumed(self, offset: int, records: int) -> None:
        """The records up to `offset` are stored; empty the file once all are."""
        self._read_offset = offset
        self.depth = max(0, self.depth - records)
        if offset >= self._size():
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
            self._read_offset = 0
            self.depth = 0
            self._full_logged = False

    def _size(self) -> int:
        return os.fstat(self._fd).st_size

    def close(self) -> None:
        os.close(self._fd)  # releases the flock


def _decode_line(line: bytes) -> Any | None:
    """The record of one line, or None when it is torn or damaged."""
    if len(line) < 10 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    payload = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        return json.loads(payload)
    except ValueError:
        return None
