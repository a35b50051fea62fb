"""A plain-text table that fits a terminal: the first (text) column wraps, long notes go below.

pandas' ``to_string`` puts every cell on one line, so a long method name and its notes made the
main job's rows 183 characters wide.
"""
from __future__ import annotations

import textwrap
from typing import Callable, Mapping, Sequence

__all__ = ["text_table", "TABLE_WIDTH"]

TABLE_WIDTH = 120


def text_table(rows: Sequence[Mapping], text_column: str, columns: Sequence[str],
               formats: Mapping[str, Callable[[object], str]], notes_column: str | None = None,
               width: int = TABLE_WIDTH) -> str:
    """``rows`` as aligned text at most ``width`` characters wide.

    Args:
        rows: one mapping per row.
        text_column: the left-aligned column, wrapped to the width the other columns leave.
        columns: the right-aligned columns, in order; ``formats[c](value)`` renders a cell.
        notes_column: a column shown as numbered notes below the table (``[1] ...``), the
            row's text cell marked with its number; empty notes are left out.
        width: the widest line (the numbered notes wrap to it too).
    """
    cells = [[formats[c](row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    text_width = max(12, width - sum(w + 1 for w in widths) - 1)
    notes, lines = [], []
    header = text_column.ljust(text_width) + " " + " ".join(c.rjust(w) for c, w in zip(columns, widths))
    lines.append(header.rstrip())
    for row, line in zip(rows, cells):
        text = str(row.get(text_column, ""))
        note = str(row.get(notes_column) or "") if notes_column else ""
        if note:
            notes.append(note)
            text += f" [{len(notes)}]"
        wrapped = textwrap.wrap(text, text_width, subsequent_indent="  ") or [""]
        lines.append(wrapped[0].ljust(text_width) + " " + " ".join(v.rjust(w) for v, w in zip(line, widths)))
        lines.extend(wrapped[1:])
    if notes:
        lines.append("")
    for number, note in enumerate(notes, 1):
        lines.extend(textwrap.wrap(f"[{number}] {note}", width, subsequent_indent="    "))
    return "\n".join(lines)
