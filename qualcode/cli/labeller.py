"""The terminal labeller: the screen and key loop over a
:class:`~qualcode.labelling.LabellingSession` (plain terminal: no curses, no mouse)."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from qualcode.labelling import LabellingSession, SessionResult

if TYPE_CHECKING:
    import pandas as pd

    from qualcode.codebook import Codebook

_HELP = """\
Keys (then Enter):
  Enter        accept the suggestion shown in [brackets]
  1 … {n}       pick a theme by number{multi}; a theme id or label works too
  s            skip this segment (asked again after all others, in a later session)
  u            undo the last answer (it is removed from the labels file)
  ?            this help and the theme descriptions
  q            quit (every answer is already saved; run the same command to resume)"""


class Labeller:
    """An interactive, line-based labelling session in the terminal.

    Takes the arguments of :class:`~qualcode.labelling.LabellingSession`, and ``ask`` and
    ``echo``: line input and output (default: ``input`` and ``click.echo``).
    """

    def __init__(
        self,
        segments: pd.DataFrame,
        codebook: Codebook,
        output: str | Path,
        *,
        ask: Callable[[str], str] | None = None,
        echo: Callable[[str], None] | None = None,
        **settings: Any,
    ):
        self.session = LabellingSession(segments, codebook, output, **settings)
        self.ask = ask or input
        self.echo = echo or click.echo
        self._prompt = "Theme: "

    def parse(self, answer: str, suggestion: Sequence[str]) -> list[str] | str:
        """See :meth:`LabellingSession.parse`."""
        return self.session.parse(answer, suggestion)

    # ------------------------------------------------------------------ display
    @staticmethod
    def _width() -> int:
        return max(40, min(shutil.get_terminal_size((100, 24)).columns, 110))

    def _show(self, i: int, suggestion: list[str], confidence: float, source: str) -> None:
        s = self.session
        seg = s.segments.iloc[i]
        width = self._width()
        where = " › ".join(p for p in (str(seg["document"]), str(seg["section"])) if p)
        start, end = str(seg.get("line_start", "")), str(seg.get("line_end", ""))
        if where and start:
            where += f"  (line {start})" if end in ("", start) else f"  (lines {start}–{end})"
        self.echo("")
        self.echo(
            click.style(
                f"── {s.labelled}/{len(s.segments)} labelled by {s.coder} ── {seg['segment_id']} ",
                bold=True,
            )
            + "─" * max(0, width - 30 - len(str(seg["segment_id"])))
        )
        if where:
            self.echo(click.style(where, fg="cyan"))
        if s.respondent_columns:
            about = " · ".join(f"{c}: {seg[c]}" for c in s.respondent_columns if str(seg[c]))
            if about:
                self.echo(click.style(f"  {about}", dim=True))
        prev, nxt = (None, None) if s.respondent_columns else s.neighbours[i]

        def neighbour(j: int | None, arrow: str) -> None:
            if j is not None:
                text = textwrap.shorten(s.segments.at[j, "text"], width - 6, placeholder=" …")
                self.echo(click.style(f"  {arrow} {text}", dim=True))

        neighbour(prev, "↑")
        for line in textwrap.wrap(str(seg["text"]), width - 4) or [""]:
            self.echo(click.style("  ▌ " + line, bold=True))
        neighbour(nxt, "↓")
        self.echo("")
        for n, theme in enumerate(s.codebook.themes, start=1):
            mark = "*" if theme.id in suggestion else " "
            count = s.mine_per_theme.get(theme.id, 0)
            line = f" {mark}{n:>2}  {theme.id:<24} {theme.label}"
            self.echo(line[: width - 6] + click.style(f"  ({count})", dim=True))
        keys = f"1-{len(s.ids)}" + (" (several: 1 3)" if s.multi_label else "")
        default = " ".join(str(s.ids.index(t) + 1) for t in suggestion)
        self.echo(
            click.style(
                f"suggested: {', '.join(suggestion)} ({confidence:.2f}, {source})"
                f" · {keys}, s skip, u undo, ? help, q quit",
                dim=True,
            )
        )
        self._prompt = f"Theme [{default}]: "

    def _help(self) -> None:
        s = self.session
        multi = " (several allowed: 1 3)" if s.multi_label else ""
        self.echo(_HELP.format(n=len(s.ids), multi=multi))
        width = self._width()
        for k, theme in enumerate(s.codebook.themes, start=1):
            self.echo(click.style(f"{k:>2} {theme.id} – {theme.label}", bold=True))
            self.echo(
                textwrap.fill(
                    theme.description, width - 5, initial_indent="     ", subsequent_indent="     "
                )
            )

    def _read(self) -> str | None:
        try:
            return self.ask(self._prompt)
        except (EOFError, KeyboardInterrupt):
            self.echo("")
            return None

    # ------------------------------------------------------------------ main loop
    def run(self) -> SessionResult:
        """Label until every segment is answered or the coder quits."""
        session = self.session
        with session:
            if session.store.repaired:
                self.echo(
                    click.style(
                        f"removed a row torn by a crash from the end of "
                        f"{session.store.path.name} (backup: {session.store.repaired.name})",
                        fg="yellow",
                    )
                )
            self.echo(click.style("loading the encoder and embedding the segments …", dim=True))
            session.prepare()
            shown_model: int | None = None
            shown_error: str | None = None
            done = False
            while not done:
                i = session.next_segment()
                if i is None:
                    session.finish()
                    self.echo(click.style("every segment has an answer — done.", fg="green"))
                    break
                error = session.trainer.error
                if error and error != shown_error:
                    shown_error = error
                    self.echo(
                        click.style(
                            f"could not retrain the suggestion model ({error}); keeping the "
                            "previous suggestions",
                            fg="yellow",
                        )
                    )
                trained = session.suggestion_model()
                if trained is not None and trained.labels != shown_model:
                    shown_model = trained.labels
                    f1 = "" if trained.macro_f1 is None else f", CV macro-F1 {trained.macro_f1:.2f}"
                    self.echo(
                        click.style(
                            f"suggestions now from a model trained on {trained.labels} labels{f1}",
                            dim=True,
                        )
                    )
                suggestion, confidence, source = session.suggest(i)
                self._show(i, suggestion, confidence, source)
                done = self._answer(i, suggestion)
        return session.result

    def _answer(self, i: int, suggestion: list[str]) -> bool:
        """Read keys until row ``i`` is answered, skipped or undone; True to quit."""
        while True:
            typed = self._read()
            if typed is None:
                return True
            answer = self.session.parse(typed, suggestion)
            if answer == "q":
                return True
            if answer == "?":
                self._help()
                continue
            if isinstance(answer, str) and answer.startswith("!"):
                self.echo(click.style(answer[2:], fg="red"))
                continue
            if answer == "u":
                undone = self.session.undo(i)
                if undone is None:
                    self.echo(click.style("nothing to undo", fg="red"))
                    continue
                self.echo(click.style(f"undone: {undone}", fg="yellow"))
                return False
            themes = [] if answer == "s" else list(answer)
            self.session.record(i, themes)
            if themes:
                self.echo(click.style(f"saved: {';'.join(themes)}", fg="green"))
            else:
                self.echo(click.style("skipped", fg="yellow"))
            return False
