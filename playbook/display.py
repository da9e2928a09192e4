"""Tables of text (prompts, replies) that read well in JupyterLab, on GitHub and as plain text.

pandas right-aligns every cell and prints line breaks as ``\\n``; :func:`show_table` left-aligns, keeps line
breaks and wraps long text in HTML, and marks line breaks with ``↵`` in its plain-text form (what a terminal,
a diff or a test sees).
"""

from __future__ import annotations

import pandas as pd
from pandas.io.formats.style import Styler

LINE_BREAK = " ↵ "
TEXT_CELL_STYLE = [("text-align", "left"), ("white-space", "pre-wrap"), ("vertical-align", "top")]


class TextTable(Styler):
    """A Styler that also has a ``text/plain`` form: the table's repr with line breaks shown as ``↵``."""

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        plain = self.data.replace(r"\s*\n\s*", LINE_BREAK, regex=True)
        return {"text/html": self.to_html(), "text/plain": repr(plain)}


def show_table(frame: pd.DataFrame, max_width: str = "42em") -> TextTable:
    """``frame`` with its cells and headers left-aligned, line breaks kept and text wrapped at ``max_width``."""
    table = TextTable(frame).format(precision=3, escape="html")
    table.set_table_styles(
        [
            {"selector": "td", "props": [*TEXT_CELL_STYLE, ("max-width", max_width)]},
            {"selector": "th", "props": TEXT_CELL_STYLE},
        ]
    )
    return table
