"""Report tables that fit the terminal: fewer columns, never squeezed ones.

Why: rich squeezes a table wider than the terminal by truncating every column, so at 80 columns
``emulate``'s numbers all read ``…``.  A :class:`FitTable` instead drops its least important
columns (and says which, under the table) until the rest fit whole; :class:`Fit` renders the first
of several layouts that fits.  ``--json`` and ``--csv`` always carry every number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from rich.console import Console, ConsoleOptions, RenderableType
from rich.table import Table

HIDDEN_NOTE = "Hidden at this width: {names} (a wider terminal, --json or --csv show them)."


@dataclass(frozen=True)
class Column:
    """A column; ``drop`` 0 is always shown, and when the table is too wide the columns of the
    highest ``drop`` go first."""

    header: str
    drop: int = 0
    justify: str = "right"


class Fit:
    """Renders the first candidate (a callable building a renderable) that fits the width it is
    given, else the last (rich then squeezes it as it must)."""

    def __init__(self, *candidates: Callable[[], RenderableType]) -> None:
        self.candidates = candidates

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[RenderableType]:
        unbounded = options.update(max_width=1_000_000)  # rich clamps a measure to the width
        for make in self.candidates:
            table = make()
            if console.measure(table, options=unbounded).maximum <= options.max_width:
                break
        yield table


class FitTable(Fit):
    """A table of :class:`Column`\\ s and rows of cell strings (rich markup allowed) that drops
    columns, least important first, to fit."""

    def __init__(self, columns: Sequence[Column], *, title: str = "", caption: str = "") -> None:
        self.columns = list(columns)
        self.title, self.caption = title, caption
        self.rows: list[list[str]] = []
        levels = sorted({c.drop for c in self.columns if c.drop}, reverse=True)
        super().__init__(lambda: self.table(), *(lambda lv=lv: self.table(lv) for lv in levels))

    def add_row(self, *cells: str) -> None:
        assert len(cells) == len(self.columns), "one cell per column"
        self.rows.append(list(cells))

    def table(self, drop_from: int | None = None) -> Table:
        """The table without the columns whose ``drop`` is ``drop_from`` or more."""
        keep = [i for i, c in enumerate(self.columns) if drop_from is None or not c.drop
                or c.drop < drop_from]
        hidden = [c.header.replace("\n", " ") for i, c in enumerate(self.columns) if i not in keep]
        caption = "\n".join(x for x in (self.caption, HIDDEN_NOTE.format(names=", ".join(hidden))
                                        if hidden else "") if x)
        t = Table(title=self.title or None, header_style="bold", caption=caption or None,
                  caption_justify="left")
        for i in keep:
            c = self.columns[i]
            t.add_column(c.header, justify=c.justify, no_wrap=True)  # type: ignore[arg-type]
        for row in self.rows:
            t.add_row(*(row[i] for i in keep))
        return t
