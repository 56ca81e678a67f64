"""Run the portal with uvicorn (for `portal serve` and the core's all-in-one `serve`)."""

from __future__ import annotations

from portal.app import create_app
from service.config import Settings
from service.db import SessionFactory
from service.enforcement import CoaSender


def run_portal(
    settings: Settings,
    *,
    host: str = "0.0.0.0",  # noqa: S104 - the walled garden reaches it from client VLANs
    port: int = 8080,
    trusted_proxy: str | None = None,
    session_factory: SessionFactory | None = None,
    coa_sender: CoaSender | None = None,
) -> None:
    """Blocks until SIGINT/SIGTERM. `trusted_proxy`: the one address whose X-Forwarded-For is
    believed (a TLS reverse proxy on the portal host). `coa_sender`: the composition root's
    choice (`radius.coa.sender.sender_for(settings)`); the null sender when not given."""
    import uvicorn

    uvicorn.run(
        create_app(settings, session_factory=session_factory, coa_sender=coa_sender),
        host=host,
        port=port,
        log_level="info",
        proxy_headers=trusted_proxy is not None,
        forwarded_allow_ips=trusted_proxy,
    )
