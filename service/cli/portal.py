"""`schoolgate portal serve` and `schoolgate token create|list|revoke`."""

from __future__ import annotations

import typer

from service.cli.common import (
    JsonOption,
    MetricsPortOption,
    fail,
    get_state,
    metrics_port,
    print_json,
    print_rows,
)
from service.errors import SchoolgateError


def register(app: typer.Typer) -> None:
    portal_app = typer.Typer(help="The captive portal and admin HTTP API.", no_args_is_help=True)
    token_app = typer.Typer(help="Bearer tokens for the admin HTTP API.", no_args_is_help=True)

    @portal_app.command("serve")
    def serve(
        ctx: typer.Context,
        host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on."),  # noqa: S104
        port: int = typer.Option(8080, "--port", help="TCP port (plain HTTP behind the redirect)."),
        trusted_proxy: str | None = typer.Option(
            None,
            "--trusted-proxy",
            help="IP of a TLS reverse proxy whose X-Forwarded-For gives the client's address.",
        ),
        metrics_port_option: int | None = MetricsPortOption,
    ) -> None:
        """Serve the captive portal and /api/v1 with uvicorn."""
        from portal.serve import run_portal, with_portal_url
        from radius.coa.sender import sender_for
        from service.cli.serve import refuse_weak_keys

        state = get_state(ctx)
        refuse_weak_keys(state.settings, host)
        settings = with_portal_url(state.settings, host=host, port=port).model_copy(
            update={"metrics_port": metrics_port(state, metrics_port_option)}
        )
        typer.echo(
            f"portal listening on {host}:{port}; the controller must redirect captive clients "
            f"to {settings.portal_url} (set SCHOOLGATE_PORTAL_URL to change it)"
        )
        try:
            run_portal(
                settings,
                host=host,
                port=port,
                trusted_proxy=trusted_proxy,
                session_factory=state.session_factory(),
                coa_sender=sender_for(settings),
            )
        except SchoolgateError as exc:  # the metrics port in use
            fail(str(exc))

    @token_app.command("create")
    def create(
        ctx: typer.Context,
        name: str = typer.Option("api", "--name", help="What the token is for."),
        scope: list[str] = typer.Option(
            [], "--scope", help="devices:read, devices:write, signatures:read, sessions:read"
        ),
        as_json: bool = JsonOption,
    ) -> None:
        """Create a token; its secret is printed once."""
        from service.tokens import create_token

        state = get_state(ctx)
        with state.transaction() as session:
            info, secret = create_token(session=session, name=name, scopes=scope, actor=state.actor)
            data = {"id": info.id, "name": info.name, "scopes": info.scopes, "token": secret}
        if as_json:
            print_json(data)
        else:
            typer.echo(f"token {data['id']} ({data['scopes']}): {secret}")
            typer.echo("keep it safe: it is not shown again")

    @token_app.command("list")
    def list_tokens(ctx: typer.Context, as_json: bool = JsonOption) -> None:
        """List tokens (never their secrets)."""
        from service.tokens import list_tokens as token_rows

        state = get_state(ctx)
        with state.reading() as session:
            rows = [
                {
                    "id": t.id,
                    "name": t.name,
                    "prefix": t.prefix,
                    "scopes": t.scopes,
                    "created_by": t.created_by,
                    "created_at": t.created_at.isoformat(),
                    "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                    "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                }
                for t in token_rows(session=session)
            ]
        print_rows(
            rows,
            ["id", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"],
            as_json,
            empty="no tokens",
        )

    @token_app.command("revoke")
    def revoke(
        ctx: typer.Context, token_id: int = typer.Argument(..., help="The token's id.")
    ) -> None:
        """Revoke a token at once."""
        from service.tokens import revoke_token

        state = get_state(ctx)
        with state.transaction() as session:
            revoke_token(session=session, token_id=token_id, actor=state.actor)
        typer.echo(f"token {token_id} revoked")

    app.add_typer(portal_app, name="portal")
    app.add_typer(token_app, name="token")
