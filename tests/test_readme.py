"""The README and the commands stay in step: every `qualcode …` line the README shows names a
real command, and every option it uses exists on that command (as sqlite-utils checks its
docs)."""

from __future__ import annotations

import re
import shlex

import click
import pytest

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


def all_commands(command: click.Command = cli, path: tuple[str, ...] = ()):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from all_commands(sub, (*path, name))
    else:
        yield path, command


def test_every_command_and_option_is_in_the_readme():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = []
    for path, command in all_commands():
        if f"qualcode {' '.join(path)}" not in text:
            missing.append(f"command `qualcode {' '.join(path)}`")
        for param in command.params:
            names = [*param.opts, *param.secondary_opts]
            if isinstance(param, click.Option) and "--help" not in names:
                if not any(re.search(rf"(?<![\w-]){re.escape(n)}\b", text) for n in names):
                    missing.append(f"`qualcode {' '.join(path)}` option {names[0]}")
    assert not missing, "not in the README: " + "; ".join(missing)


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    library = text[text.index("## Library") :]
    code = re.search(r"```python\n(.*?)```", library, flags=re.S).group(1)
    (tmp_path / "corpora").symlink_to(ROOT / "corpora")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "models" / "samverkan" / "model.json").exists()
    assert (tmp_path / "out" / "rapport.html").stat().st_size > 10_000
