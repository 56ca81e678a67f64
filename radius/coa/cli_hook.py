"""After a CLI command commits, send what it queued at once (the 'within a second' promise
holds even when no RADIUS server runs its dispatcher)."""

from __future__ import annotations

import logging

from radius.coa.dispatcher import dispatch_pending
from service.cli.common import CliState

FLUSH_DEADLINE_SECONDS = 2.0


def flush_after_command(state: CliState) -> None:
    if not state.settings.coa_enabled:
        return
    try:
        dispatch_pending(state.session_factory(), state.settings, deadline=FLUSH_DEADLINE_SECONDS)
    except Exception:  # the change is committed; the server's dispatcher will retry
        logging.getLogger("schoolgate.coa").exception("sending CoA after the command failed")
