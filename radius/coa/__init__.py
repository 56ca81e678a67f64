"""RFC 5176 on the wire: encode CoA / Disconnect requests, send them, report the answers.

The request state machine (queue, claim, retry, fallback) is the domain's
(`service.enforcement`); this package is its UDP `CoaSender` and the one place a sender is
chosen from settings (`sender_for`).
"""

from radius.coa.sender import UdpCoaSender, sender_for

__all__ = ["UdpCoaSender", "sender_for"]
