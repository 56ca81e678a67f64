"""The `schoolgate` command line (the contract of DESIGN.md)."""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import typer
from typer.core import TyperGroup, TyperOption

from service.cli.common import CliState, argument_problem, default_actor, err_console
from service.config import database_url_from, load_settings
from service.errors import SchoolgateError
from service.logs import LOG_FORMATS

# Each area adds its commands with register(app). Its module is imported when one of its
# commands runs (or `--help` lists them all): a command pays only for its own imports, and
# `monitor run` starts capturing before SQLAlchemy is loaded (service/monitor/recording.py).
# tests/service/test_cli_areas.py checks this list against what the areas register.
COMMANDS: dict[str, tuple[str, ...]] = {
    "db": ("service.cli.admin",),
    "site": ("service.cli.admin",),
    "policy": ("service.cli.admin",),
    "nas": ("service.cli.admin",),
    "person": ("service.cli.people",),
    "device": ("service.cli.device", "service.cli.coa"),  # coa adds `device disconnect`
    "agreement": ("service.cli.agreement",),
    "exception": ("service.cli.agreement",),
    "export": ("service.cli.export",),
    "purge": ("service.cli.export",),
    "audit": ("service.cli.export",),
    "demo": ("service.cli.demo",),
    "radius": ("service.cli.radius",),
    "coa": ("service.cli.coa",),
    "portal": ("service.cli.portal",),
    "token": ("service.cli.portal",),
    "monitor": ("service.cli.monitor",),
    "serve": ("service.cli.serve",),
    "visitor": ("service.cli.visitor",),
    "who": ("service.cli.day",),
    "backup": ("service.cli.backup",),
    "restore": ("service.cli.backup",),
    "incident": ("service.cli.day",),
    "report": ("service.cli.report",),
}


class _Areas(TyperGroup):
    """The root command group: an area's commands are built when first asked for."""

    def list_commands(self, ctx: Any) -> list[str]:
        self._load(*(m for modules in COMMANDS.values() for m in modules))  # all, with help
        return super().list_commands(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self._load(*COMMANDS[cmd_name])
        return super().get_command(ctx, cmd_name)

    def _load(self, *modules: str) -> None:
        new = [name for name in dict.fromkeys(modules) if name not in _loaded]
        if not new:
            return
        for module_name in new:
            _loaded.add(module_name)
            import_module(module_name).register(app)
        for name, command in typer.main.get_group(app).commands.items():
            self.commands.setdefault(name, command)


_loaded: set[str] = set()


def _flag_type(self: TyperOption, ctx: Any) -> str | None:
    """Help shows `<str>`, `<path>`... for options that take a value, nothing for a flag
    (Typer would show `<bool>` beside every `--json`)."""
    if self.is_flag:
        return None
    return _typer_type(self, ctx)


_typer_type = TyperOption.display_type_rich
TyperOption.display_type_rich = _flag_type  # type: ignore[method-assign]


app = typer.Typer(
    name="schoolgate",
    help="Network access control for schools, from the school's own mobile-device policy.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=_Areas,
)


@app.callback()
def root(
    ctx: typer.Context,
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        envvar="SCHOOLGATE_DATABASE_URL",
        help="SQLAlchemy URL, or the path of a SQLite file; default schoolgate.db in the "
        "working directory.",
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
    log_format: str | None = typer.Option(
        None,
        "--log-format",
        help="text, or json: one JSON object per log line (the servers). "
        "Env: SCHOOLGATE_LOG_FORMAT.",
        show_default=False,
    ),
) -> None:
    if database_url is not None:
        database_url = database_url_from(database_url)
    overrides = {}
    if log_format is not None:
        if log_format not in LOG_FORMATS:
            raise typer.BadParameter(
                f"{log_format!r} is not text or json", param_hint="--log-format"
            )
        overrides["log_format"] = log_format
    settings = load_settings(config, database_url=database_url, **overrides)
    state = CliState(settings=settings, actor=actor or default_actor())
    state.after_commit_hooks.append(_flush_queued_coa)
    ctx.obj = state


def _flush_queued_coa(state: CliState) -> None:
    """Sends the CoA a command queued, once its transaction commits (service/cli/coa.py)."""
    from service.cli.coa import flush_queued

    flush_queued(state)


def main() -> None:
    """Entry point: one-line errors, never a traceback."""
    problem = argument_problem(sys.argv[1:])
    if problem is not None:
        err_console.print(f"error: {problem}", soft_wrap=True)
        sys.exit(2)
    try:
        app()
    except SchoolgateError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except Exception as exc:
        # SQLAlchemy is loaded by the commands that use the database (through service.db), not
        # by the CLI itself: without service.db loaded, no error can be a database error.
        if "service.db" not in sys.modules:
            raise
        from service.db import database_error_message

        message = database_error_message(exc)
        if message is None:
            raise
        err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
