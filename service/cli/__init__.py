"""The `schoolgate` command line (the contract of DESIGN.md)."""

from __future__ import annotations

import sys
from importlib import import_module

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from service.cli.common import CliState, default_actor, err_console
from service.config import load_settings
from service.errors import SchoolgateError

app = typer.Typer(
    name="schoolgate",
    help="Network access control for schools, from the school's own mobile-device policy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each area adds its commands with register(app). Core first, then the adapters.
AREAS = (
    "service.cli.admin",
    "service.cli.people",
    "service.cli.device",
    "service.cli.agreement",
    "service.cli.export",
    "service.cli.demo",
    "service.cli.radius",
    "service.cli.coa",
    "service.cli.portal",
    "service.cli.monitor",
    "service.cli.serve",
)


@app.callback()
def root(
    ctx: typer.Context,
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        envvar="SCHOOLGATE_DATABASE_URL",
        help="SQLAlchemy URL; default a SQLite file schoolgate.db in the working directory.",
    ),
    config: str | None = typer.Option(
        None, "--config", envvar="SCHOOLGATE_CONFIG", help="Optional TOML settings file."
    ),
    actor: str | None = typer.Option(
        None,
        "--actor",
        envvar="SCHOOLGATE_ACTOR",
        help="Who is making the change, for the audit log (default: your login name).",
    ),
) -> None:
    settings = load_settings(config, database_url=database_url)
    state = CliState(settings=settings, actor=actor or default_actor())
    from service.cli.coa import flush_queued  # sends what a command queued, once it commits

    state.after_commit_hooks.append(flush_queued)
    ctx.obj = state


def _register_areas() -> None:
    for name in AREAS:
        try:
            module = import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_areas()


def main() -> None:
    """Entry point: one-line errors, never a traceback."""
    try:
        app()
    except SchoolgateError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except (OperationalError, ProgrammingError) as exc:
        text = str(exc.orig) if exc.orig is not None else str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        hint = ""
        if "no such table" in first or "does not exist" in first:
            hint = " (run `schoolgate db upgrade` first)"
        err_console.print(f"error: database: {first}{hint}", markup=False, highlight=False)
        sys.exit(1)
    except SQLAlchemyError as exc:
        err_console.print(
            f"error: database: {type(exc).__name__}: {str(exc).splitlines()[0]}",
            markup=False,
            highlight=False,
        )
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
