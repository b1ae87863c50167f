"""`kit --help` and every subcommand's help, snapshotted: restructuring must not change what
users see (KIT_UPDATE_GOLDEN=1 rewrites the snapshot after an intended change)."""

import os

import click
from click.testing import CliRunner

from kit.cli import cli
from serving import ROOT

SNAPSHOT = ROOT / "tests" / "golden" / "help.txt"


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name in sorted(group.commands):
        command = group.commands[name]
        if isinstance(command, click.Group):
            paths += command_paths(command, prefix + (name,))
        else:
            paths.append(prefix + (name,))
    return paths


def all_help() -> str:
    runner = CliRunner()
    parts = []
    for path in command_paths(cli):
        result = runner.invoke(cli, [*path, "--help"], prog_name="kit", env={"COLUMNS": "100"})
        assert result.exit_code == 0, (path, result.output)
        parts.append(f"=== kit {' '.join(path)}\n{result.output}")
    return "\n".join(parts)


def test_help_is_unchanged():
    text = all_help()
    if os.environ.get("KIT_UPDATE_GOLDEN"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), f"help differs from {SNAPSHOT} (KIT_UPDATE_GOLDEN=1 rewrites it)"


def test_snapshot_covers_every_command():
    names = {line.removeprefix("=== kit ").strip() for line in SNAPSHOT.read_text().splitlines() if line.startswith("=== kit")}
    assert {"", "serve", "plan serve", "images lock", "chat", "logs"} <= names
    assert len(names) == len(command_paths(cli))
