"""Notifications (email to a visitor's sponsor) behind a `Notifier` protocol.

The null notifier is chosen when no SMTP server is configured (`SCHOOLGATE_SMTP_HOST` unset):
it logs that a message would have gone and sends nothing. The SMTP one speaks to the school's
relay with the standard library's `smtplib` (tested against a real SMTP server on loopback).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

from service.config import Settings
from service.errors import SchoolgateError

log = logging.getLogger("schoolgate.notify")


class NotifyFailed(SchoolgateError):
    """The message could not be handed to the mail server."""


class Notifier(Protocol):
    def send(self, *, to: str, subject: str, body: str) -> None:
        """Send one plain-text message; raise `NotifyFailed` with a one-line reason."""


class NullNotifier:
    """Sends nothing (no SMTP server configured); logs who would have been told."""

    def __init__(self) -> None:
        self.sent = 0

    def send(self, *, to: str, subject: str, body: str) -> None:
        del body
        self.sent += 1
        log.info("notify: no SMTP server configured; not sent to %s: %s", to, subject)


@dataclass(frozen=True)
class SmtpNotifier:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = 10.0

    def send(self, *, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = to
        message["Subject"] = subject
        message.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyFailed(
                f"cannot send email through {self.host}:{self.port}: {exc}".splitlines()[0]
            ) from exc
        log.info("notify: sent to %s: %s", to, subject)


def notifier_for(settings: Settings) -> Notifier:
    """The SMTP notifier when `smtp_host` is set, else the null one."""
    if not settings.smtp_host:
        return NullNotifier()
    return SmtpNotifier(
        host=settings.smtp_host,
        port=settings.smtp_port,
        sender=settings.smtp_from,
        username=settings.smtp_username,
        password=(settings.smtp_password.get_secret_value() if settings.smtp_password else None),
        starttls=settings.smtp_starttls,
        timeout=settings.smtp_timeout_seconds,
    )
