"""Turn the notebooks into reveal.js slide decks: `make slides`, or `python -m playbook.slides --out build/slides`.

What goes on a slide is decided per cell, so a notebook needs no slide markup to produce a sensible deck:

- a markdown cell that starts with a `#` or `##` heading opens a new slide; other markdown continues the slide;
- code is hidden (slides show prose and results); a code cell's *outputs* appear when they hold a picture or a
  table, as a fragment;
- cell tags override this: `slides-skip` leaves a cell out, `slides-show` shows a code cell's outputs even when
  they are only text, `slides-new` starts a new slide at that cell.

The decks load reveal.js from a CDN unless `reveal_prefix` points to a local copy (for rooms without internet).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbconvert import SlidesExporter

from playbook.config import repository_root
from playbook.io import course_notebooks

SKIP, SHOW, NEW = "slides-skip", "slides-show", "slides-new"
_RICH_OUTPUTS = ("image/png", "image/svg+xml", "text/html")


def slide_type(cell) -> str:
    """The reveal.js role of one cell: "slide", "-" (same slide), "fragment" or "skip"."""
    tags = set(cell.get("metadata", {}).get("tags", []))
    if SKIP in tags:
        return "skip"
    if cell.cell_type == "markdown":
        opens_slide = cell.source.lstrip().startswith(("# ", "## ")) or NEW in tags
        return "slide" if opens_slide else "-"
    if cell.cell_type != "code":
        return "skip"
    rich = any(kind in output.get("data", {}) for output in cell.get("outputs", []) for kind in _RICH_OUTPUTS)
    if NEW in tags:
        return "slide"
    return "fragment" if rich or SHOW in tags else "skip"


def as_slides(notebook):
    """A copy of the notebook with every cell's slideshow metadata set by `slide_type`."""
    deck = nbformat.from_dict(notebook)
    for cell in deck.cells:
        cell.metadata["slideshow"] = {"slide_type": slide_type(cell)}
    return deck


def build_slides(out_dir: str | Path, notebooks: list[Path] | None = None, reveal_prefix: str | None = None):
    """Write one `<notebook>.slides.html` per notebook into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = SlidesExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    if reveal_prefix:
        exporter.reveal_url_prefix = reveal_prefix
    written = []
    for path in notebooks or course_notebooks():
        deck = as_slides(nbformat.read(path, as_version=4))
        html, _ = exporter.from_notebook_node(deck)
        target = out_dir / f"{path.stem}.slides.html"
        target.write_text(html, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(repository_root() / "build" / "slides"))
    parser.add_argument("--reveal-prefix", default=None, help="URL or path of a local reveal.js copy")
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    for path in build_slides(args.out, args.notebooks or None, args.reveal_prefix):
        print(path)


if __name__ == "__main__":
    main()
