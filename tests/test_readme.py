"""The README and the commands stay in step: every `qualcode …` line the README shows names a
real command, and every option it uses exists on that command (as sqlite-utils checks its
docs)."""

from __future__ import annotations

import re
import shlex

import click

from qualcode.cli import cli

from .conftest import ROOT


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`(qualcode [^`]+)`", text)
    lines = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        lines += [ln.split("#")[0].strip() for ln in joined.splitlines()]
    lines += inline
    commands = []
    for line in lines:
        if not line.startswith("qualcode "):
            continue
        try:
            words = shlex.split(line)
        except ValueError:
            words = line.split()
        commands.append(words[1:])
    return commands


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = cli
    rest = list(words)
    while isinstance(command, click.Group) and rest and rest[0] in command.commands:
        command = command.commands[rest.pop(0)]
    return command, rest


def test_readme_shows_many_commands():
    names = {resolve(words)[0].name for words in readme_commands()}
    assert {"segment", "label", "train", "classify", "review", "apply", "report"} <= names
    assert {"xlsx", "qdpx", "evaluate"} <= names


def test_every_readme_option_exists():
    for words in readme_commands():
        command, rest = resolve(words)
        known = {opt for p in command.params for opt in [*p.opts, *p.secondary_opts]}
        for word in rest:
            if word.startswith("--") and not word.startswith("--…"):
                option = word.split("=")[0].rstrip(",.)")
                assert option in known, f"README: `qualcode {' '.join(words)}`: {option} unknown"
