"""`backup FILE` and `restore FILE`: the whole database (service/backup.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from service import backup as backups
from service.cli.common import console, err_console, fail, get_state


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore)


def _keys_note(key_dir: Path) -> None:
    names = ", ".join(str(key_dir / name) for name in backups.KEY_FILES)
    console.print(
        f"keys are not in the database: copy {names} too, kept apart from it", highlight=False
    )


def backup(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="Where to write the backup."),
    force: bool = typer.Option(False, "--force", help="Replace FILE if it exists."),
    print_only: bool = typer.Option(
        False, "--print", help="PostgreSQL: print the pg_dump command instead of running it."
    ),
) -> None:
    """Copy the database to FILE: SQLite through its online backup API (safe while the
    servers run), PostgreSQL with `pg_dump -Fc`."""
    settings = get_state(ctx).settings
    url = settings.database_url
    if backups.is_postgres(url):
        command = backups.pg_dump_command(url=url, dest=file)
        if print_only:
            console.print(command.shell(), highlight=False, markup=False, soft_wrap=True)
            return
        backups.backup_postgres(url=url, dest=file, force=force)
        console.print(f"backed up to {file} (pg_dump -Fc)", highlight=False)
    else:
        if print_only:
            fail("--print is for PostgreSQL; a SQLite database is copied by `schoolgate backup`")
        result = backups.backup_sqlite(url=url, dest=file, force=force)
        console.print(
            f"backed up to {result.path}: migration {result.revision}, {result.tables} tables, "
            f"{result.rows} rows",
            highlight=False,
        )
    _keys_note(settings.key_dir)


def restore(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file `schoolgate backup` wrote."),
    force: bool = typer.Option(
        False, "--force", help="Replace a database that holds data (stop the services first)."
    ),
    print_only: bool = typer.Option(
        False, "--print", help="PostgreSQL: print the pg_restore command instead of running it."
    ),
) -> None:
    """Replace the database with a backup, whole or not at all. Checks it is a schoolgate
    backup at a migration this version knows; refuses a database with data unless --force."""
    settings = get_state(ctx).settings
    url = settings.database_url
    if backups.is_postgres(url):
        if print_only:
            schemas = backups.dump_schemas(file) if file.is_file() else []
            produce, consume = backups.pg_restore_commands(url=url, source=file, schemas=schemas)
            console.print(
                backups.pipeline_text(produce, consume),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
            return
        revision = backups.restore_postgres(url=url, source=file, force=force)
        console.print(f"restored {file} (migration {revision})", highlight=False)
    else:
        if print_only:
            fail("--print is for PostgreSQL; a SQLite backup is restored by `schoolgate restore`")
        result = backups.restore_sqlite(url=url, source=file, force=force)
        console.print(
            f"restored {file} into {result.path}: migration {result.revision}, {result.rows} rows",
            highlight=False,
        )
    err_console.print(
        "next: `schoolgate db upgrade` (if the backup is older), then restart the services; "
        "restore the keys beside it",
        highlight=False,
        soft_wrap=True,
    )
