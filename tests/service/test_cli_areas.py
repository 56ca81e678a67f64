"""The CLI loads a command's area when the command is asked for: the table of commands matches
what the areas register, `--help` still lists them all, and `monitor run` starts without the
database libraries (the writer process imports them)."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import typer

from service.cli import COMMANDS


def test_the_command_table_is_what_the_areas_register() -> None:
    modules = dict.fromkeys(m for owners in COMMANDS.values() for m in owners)
    for module_name in modules:
        area = typer.Typer()
        import_module(module_name).register(area)
        names = {group.name for group in area.registered_groups}
        names |= {command.name for command in area.registered_commands}
        # Each command lists the module that registers it first (then any that extend it).
        assert names == {name for name, owners in COMMANDS.items() if owners[0] == module_name}


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def _help(*command: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "service", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        check=True,
    ).stdout


def test_help_lists_every_command() -> None:
    shown = _help()
    for name in COMMANDS:
        assert f" {name} " in shown, name


def test_monitor_run_reaches_the_capture_without_the_database_libraries() -> None:
    """What `schoolgate monitor run` imports in the capturing process, up to the capture."""
    code = (
        "import sys\n"
        "import service.cli, service.cli.monitor, service.monitor.run\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sqlalchemy', 'alembic', 'psycopg', 'fastapi', 'pyrad') or m == 'service.models')\n"
        "print(','.join(heavy))\n"
    )
    loaded = _python(code)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == ""


def test_a_group_extended_by_another_area_has_all_its_commands() -> None:
    shown = _help("device")
    assert " disconnect " in shown
    assert " add " in shown


def test_a_command_loads_only_its_own_area() -> None:
    code = (
        "import sys\n"
        "from service.cli import main\n"
        "sys.argv = ['schoolgate', 'monitor', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('service.cli.')))\n"
    )
    loaded = _python(code)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip().splitlines()[-1] == "['service.cli.common', 'service.cli.monitor']"
