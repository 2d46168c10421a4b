"""README's "Command line" table and the parser agree both ways: every flag the table names
exists on that command's parser, and every flag of every command's parser is named in
the table, so neither can drift from the other."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from engine.cli import parser

README = Path(__file__).resolve().parent.parent / "README.md"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def table_rows() -> dict[str, str]:
    """The code cell of each row of README's command table, by command ("" for the
    root's options): `lockstep [--log-level ...] COMMAND ...` is the root's row."""
    section = README.read_text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = re.split(r"(?<!\\)\|", line)
        if len(cells) < 3 or not cells[1].strip().startswith("`lockstep"):
            continue
        code = cells[1].strip().strip("`").replace("\\|", "|")
        words = code.split()
        name = words[1] if len(words) > 1 and not words[1].startswith(("-", "[")) else ""
        assert name not in rows, f"README's table has two rows for {name or 'lockstep'}"
        rows[name] = code
    return rows


def flags_of(command: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in command._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def parsers() -> dict[str, argparse.ArgumentParser]:
    root = parser()
    commands = next(action for action in root._actions if isinstance(action, argparse._SubParsersAction))
    return {"": root, **commands.choices}


def test_readme_has_a_row_for_the_root_options_and_for_every_command():
    assert set(table_rows()) == set(parsers())


def test_every_flag_readme_names_exists_on_that_commands_parser():
    known = parsers()
    for name, code in table_rows().items():
        unknown = set(FLAG.findall(code)) - flags_of(known[name])
        assert not unknown, f"README names {sorted(unknown)} for lockstep {name}, which has no such option"


def test_every_flag_of_every_command_is_named_in_readme():
    rows = table_rows()
    for name, command in parsers().items():
        missing = flags_of(command) - set(FLAG.findall(rows.get(name, "")))
        assert not missing, f"README's row for lockstep {name} does not name {sorted(missing)}"
