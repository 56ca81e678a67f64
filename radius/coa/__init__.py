"""RFC 5176 enforcement: the dispatcher that sends queued CoA / Disconnect requests."""

from radius.coa.dispatcher import Dispatcher, dispatch_pending, drain, run_dispatcher

__all__ = ["Dispatcher", "dispatch_pending", "drain", "run_dispatcher"]
