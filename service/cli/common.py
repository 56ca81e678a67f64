"""What every command shares: settings, the session, one-line errors, tables or JSON."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn
from zoneinfo import ZoneInfo

import typer
from rich.cells import cell_len
from rich.console import Console, HighlighterType, JustifyMethod, OverflowMethod
from rich.style import Style
from rich.table import Table
from rich.text import Text

from service.config import Settings
from service.errors import Invalid
from service.logs import configure_logging
from service.text import find_control, json_visible, visible

if TYPE_CHECKING:  # the database is imported by the commands that use it (service/cli/__init__)
    from service.db import Engine, Session, SessionFactory
    from service.enforcement import CoaSender


def _width() -> int | None:
    """A terminal sets its own width; piped into grep or a file, tables must not wrap at 80."""
    return None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 200


class PlainConsole(Console):
    """A console that never interprets what it prints: no markup (`[/x]` in a visitor's
    name once crashed `device list`), no `:emoji:` codes, and control characters shown as
    escapes (`\\x1b`), not sent to the terminal. Every string the CLI prints, in a line or a
    table cell, passes through `render_str`; styles are given as `Text` or `style=`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        justify: JustifyMethod | None = None,
        overflow: OverflowMethod | None = None,
        emoji: bool | None = None,
        markup: bool | None = None,
        highlight: bool | None = None,
        highlighter: HighlighterType | None = None,
    ) -> Text:
        del emoji, markup  # never: a caller's markup=True must not bring them back
        return super().render_str(
            visible(text),
            style=style,
            justify=justify,
            overflow=overflow,
            emoji=False,
            markup=False,
            highlight=highlight,
            highlighter=highlighter,
        )


console = PlainConsole(width=_width())
err_console = PlainConsole(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print JSON instead of a table.")
# `--dry-run` of the imports: what would change, changing nothing.
DryRunOption = typer.Option(
    False, "--dry-run", help="Show what the import would change; change nothing."
)


@dataclass
class CliState:
    settings: Settings
    actor: str
    _engine: Engine | None = None
    _factory: SessionFactory | None = None
    _coa_sender: CoaSender | None = None
    # Called after a command's transaction commits, e.g. to send CoA for what it queued.
    after_commit_hooks: list[Callable[[CliState], None]] = field(default_factory=list)
    # The committed session's `info` dict, for the hooks (e.g. "did it queue any CoA?").
    last_info: dict[str, Any] = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from service.db import make_engine

            self._engine = make_engine(self.settings.database_url)
        return self._engine

    def session_factory(self) -> SessionFactory:
        """Sessions that write the audit chain with the audit key (service/audit.py)."""
        if self._factory is None:
            from service.audit import chain_for
            from service.db import make_session_factory

            self._factory = make_session_factory(self.engine, audit_chain=chain_for(self.settings))
        return self._factory

    def use_settings(self, settings: Settings) -> None:
        """Switch to `settings` (e.g. with the keys `db upgrade` just generated)."""
        self.settings = settings
        self._factory = None

    @property
    def coa_sender(self) -> CoaSender:
        """The CoA sender, chosen once from the settings when a command first sends: commands
        that queue nothing never import the RADIUS code."""
        if self._coa_sender is None:
            from radius.coa import sender_for

            self._coa_sender = sender_for(self.settings)
        return self._coa_sender

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One command, one transaction; then the after-commit hooks run."""
        from service.db import transaction

        with transaction(self.session_factory()) as session:
            yield session
            self.last_info = dict(session.info)
        for hook in self.after_commit_hooks:
            hook(self)

    @contextmanager
    def reading(self) -> Iterator[Session]:
        session = self.session_factory()()
        try:
            yield session
        finally:
            session.close()


def get_state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    state = root.obj
    if not isinstance(state, CliState):
        raise RuntimeError("the root callback did not set the CLI state")
    return state


def default_actor() -> str:
    return os.environ.get("SCHOOLGATE_ACTOR") or os.environ.get("SUDO_USER") or _login()


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "admin"


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def argument_problem(argv: Sequence[str]) -> str | None:
    """The CLI's boundary for typed text: a one-line problem if an argument carries a control
    character (ESC, NUL, a bidi override; tab and newline are allowed), else None. Names the
    option, never the value: it may be a secret."""
    for i, arg in enumerate(argv):
        char = find_control(arg, multiline=True)
        if char is None:
            continue
        option, _, value = arg.partition("=")
        if arg.startswith("--") and value:
            where = f"the value of {option}"
        elif i > 0 and argv[i - 1].startswith("-"):
            where = f"the value of {argv[i - 1]}"
        else:
            where = f"argument {i + 1}"
        return f"{where} contains a control character (U+{ord(char):04X}); type it without it"
    return None


def print_json(data: Any) -> None:
    text = json.dumps(data, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write(json_visible(text) + "\n")


WideOption = typer.Option(False, "--wide", help="Show every column, however wide.")
WHOLE_TOKEN = 40  # a cell without spaces up to this long (a MAC, a time, an email) stays whole
WRAPPED_MIN = 12  # a column of text with spaces may wrap down to this, or its longest word
# ... but a word longer than this in such a column (a tunnel's query name in an alert's
# evidence) is folded rather than costing the table the whole column.
FOLDED_WORD = 20


def print_rows(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    as_json: bool,
    *,
    title: str | None = None,
    empty: str = "nothing to show",
    wide: bool = False,
    drop_order: Sequence[str] | None = None,
) -> None:
    """A table, or JSON. A table fits the terminal by leaving out columns, in `drop_order`
    (default: from the last), and by wrapping text at spaces, never by splitting a MAC, a time
    or an address over lines; it says which columns it left out. `wide`: every column. JSON
    always has every key."""
    if as_json:
        print_json(list(rows))
        return
    if not rows:
        console.print(empty, highlight=False)
        return
    cells = {c: ["" if r.get(c) is None else visible(str(r.get(c))) for r in rows] for c in columns}
    shown = list(columns)
    if not wide:
        order = list(drop_order) if drop_order is not None else list(reversed(columns[1:]))
        for column in order:
            if 1 + sum(_least_width(c, cells[c]) + 3 for c in shown) <= console.width:
                break
            if column in shown and len(shown) > 2:
                shown.remove(column)
    table = Table(title=title, show_lines=False)
    for column in shown:
        table.add_column(column.replace("_", " "), overflow="fold", no_wrap=_whole(cells[column]))
    for i in range(len(rows)):
        table.add_row(*[cells[c][i] for c in shown])
    if wide:  # as wide as the cells need, even past the terminal's edge
        natural = 1 + sum(max([cell_len(c), *map(cell_len, cells[c])]) + 3 for c in shown)
        PlainConsole(width=max(console.width, natural)).print(table)
    else:
        console.print(table)
    hidden = [c.replace("_", " ") for c in columns if c not in shown]
    if hidden:
        note = f"(not shown: {', '.join(hidden)}; --wide shows them)"
        if cell_len(note) > console.width:  # the hint on a line of its own, never split
            note = f"(not shown: {', '.join(hidden)};\n --wide shows them)"
        console.print(note, highlight=False)


def _whole(values: Sequence[str]) -> bool:
    """A column of single tokens (MACs, times, addresses): its cells are never split."""
    return all(" " not in v and cell_len(v) <= WHOLE_TOKEN for v in values)


def _least_width(column: str, values: Sequence[str]) -> int:
    """How narrow a column can be: its widest cell and header if it is kept whole, else its
    longest word (or WRAPPED_MIN; a word past FOLDED_WORD is folded), and at least its
    header's longest word."""
    widest = max(cell_len(v) for v in values)
    if _whole(values):
        return max(cell_len(column), widest)
    header = max(cell_len(word) for word in column.split("_"))
    longest_word = max((cell_len(w) for v in values for w in v.split()), default=0)
    return max(header, min(widest, max(min(longest_word, FOLDED_WORD), WRAPPED_MIN)))


def parse_when(value: str | None, tz_name: str = "Europe/London") -> datetime | None:
    """ISO 8601; without an offset it is the site's local time."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise Invalid(f"not an ISO 8601 date-time: {value!r} (e.g. 2026-11-23T10:00)") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(tz_name))
    return moment.astimezone(UTC)


def local_text(value: datetime | None, tz_name: str = "Europe/London") -> str | None:
    if value is None:
        return None
    return value.astimezone(ZoneInfo(tz_name)).strftime("%Y-%m-%d %H:%M %Z")


def all_of(items: Iterable[Any]) -> list[Any]:
    return list(items)


# --- what the long-running commands share for being observed (issue 13) ---------------------

MetricsPortOption = typer.Option(
    None,
    "--metrics-port",
    help="Serve /metrics, /healthz and /readyz on this TCP port of SCHOOLGATE_METRICS_HOST "
    "(default 127.0.0.1); 0, the default, serves none. Env: SCHOOLGATE_METRICS_PORT.",
    show_default=False,
)


def metrics_port(state: CliState, option: int | None) -> int:
    """The option when given, else the settings' (`SCHOOLGATE_METRICS_PORT`)."""
    port = state.settings.metrics_port if option is None else option
    if not 0 <= port < 65536:
        fail(f"--metrics-port {port} is not a TCP port (0 for none)")
    return port


def setup_logging(state: CliState, level_name: str = "info") -> int:
    """Configure the root logger in the settings' format; returns the level."""
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {level_name!r} (debug, info, warning, error)")
    configure_logging(level, log_format=state.settings.log_format)
    return level
