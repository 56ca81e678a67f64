"""One exception hierarchy; each adapter translates it once (CLI line, HTTP status, RADIUS drop)."""

from __future__ import annotations


class SchoolgateError(Exception):
    """Base of every error a user may see. The message is one line, for a person."""


class NotFound(SchoolgateError):
    """A named thing (site, device, person, agreement) does not exist."""


class Invalid(SchoolgateError):
    """Input that cannot be accepted: a malformed MAC, an unknown class, a bad date."""


class Conflict(SchoolgateError):
    """The change clashes with what is stored: a duplicate device, a person already left."""


class PolicyError(Invalid):
    """A site policy file that does not validate; the message names the file and key."""
