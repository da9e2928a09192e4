"""Turn the notebooks into reveal.js slide decks: `make slides`, or `python -m playbook.slides --out build/slides`.

What goes on a slide is decided per cell, so a notebook needs no slide markup to produce a sensible deck:

- a markdown cell that starts with a `#` or `##` heading opens a new slide; other markdown continues the slide;
- code is hidden (slides show prose and results); a code cell's *outputs* get a slide of their own when they
  hold a picture or a table;
- cell tags override this: `slides-skip` leaves a cell out, `slides-show` shows a code cell's outputs even when
  they are only text, `slides-new` starts a new slide at that cell.

Each deck is one self-contained HTML file titled by the notebook's first heading: reveal.js (from the
`sphinx-revealjs` package) and its stylesheets are inlined, nothing is fetched from a network, so a deck opens
from a USB stick in any browser. A slide taller or wider than the 960 x 700 stage is scaled down to fit.
"""

from __future__ import annotations

import argparse
import re
from importlib.resources import files
from pathlib import Path

import nbformat
from jinja2 import DictLoader
from nbconvert import SlidesExporter

from playbook.config import repository_root
from playbook.io import course_notebooks

SKIP, SHOW, NEW = "slides-skip", "slides-show", "slides-new"
_RICH_OUTPUTS = ("image/png", "image/svg+xml", "text/html")
WIDTH, HEIGHT = 960, 700

# Extends nbconvert's reveal template, replacing everything it loads from a CDN (reveal.js, require.js, jQuery,
# MathJax, mermaid, the widgets' embed script) with reveal.js inlined.
DECK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block header -%}
<!DOCTYPE html>
<html lang="{{ resources.language_code }}">
<head>
<meta charset="utf-8" />
<title>{{ nb.metadata.get('title', resources.metadata.name) | escape_html_keep_quotes }}</title>
<style type="text/css">{{ resources.offline_reveal.css }}</style>
{% for css in resources.inlining.css -%}<style type="text/css">{{ css }}</style>{% endfor %}
{{ resources.include_css("static/index.css") }}
{{ resources.include_css("static/theme-light.css") }}
{{ resources.include_css("static/custom_reveal.css") }}
<style type="text/css">
a.anchor-link { display: none; }
.jp-Notebook { padding: 0; }
:root { --jp-ui-font-size1: 20px; --jp-content-font-size1: 20px; --jp-code-font-size: 19px; }
.reveal .slides section { transform-origin: top center; }
.reveal .jp-RenderedHTMLCommon td, .reveal .jp-RenderedHTMLCommon th { text-align: left; }
</style>
</head>
{%- endblock header -%}
{% block footer_js %}
<script>{{ resources.offline_reveal.js }}</script>
<script>
function fitSlide(slide) {
  slide.style.transform = "";
  const scale = Math.min(1, WIDTH / slide.scrollWidth, HEIGHT / slide.scrollHeight);
  if (scale < 1) slide.style.transform = "scale(" + scale + ")";
}
const WIDTH = {{ resources.offline_reveal.width }}, HEIGHT = {{ resources.offline_reveal.height }};
Reveal.initialize({
  controls: true, progress: true, history: true, center: false, transition: "none",
  width: WIDTH, height: HEIGHT, margin: 0.04,
});
Reveal.on("ready", (event) => fitSlide(event.currentSlide));
Reveal.on("slidechanged", (event) => fitSlide(event.currentSlide));
</script>
{% endblock footer_js %}
"""


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
    if NEW in tags or rich:
        return "slide"
    return "fragment" if SHOW in tags else "skip"


def deck_title(notebook) -> str:
    """The text of the notebook's first heading (its title), or "" if it has none."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and (heading := re.match(r"\s*#+\s+(.+)", cell.source)):
            return heading.group(1).strip()
    return ""


def as_slides(notebook):
    """A copy of the notebook with every cell's slideshow metadata set by `slide_type`, titled by `deck_title`."""
    deck = nbformat.from_dict(notebook)
    for cell in deck.cells:
        cell.metadata["slideshow"] = {"slide_type": slide_type(cell)}
    deck.metadata["title"] = deck_title(deck) or "Slides"
    return deck


def offline_reveal() -> dict[str, str]:
    """reveal.js, its stylesheet and the white theme as text, to inline into a deck."""
    reveal = files("sphinx_revealjs") / "_static" / "revealjs"
    theme = (reveal / "dist" / "theme" / "white.css").read_text(encoding="utf-8")
    theme = re.sub(r"@import url\([^)]*\);", "", theme)  # web fonts: the browser's sans-serif stands in
    css = (reveal / "dist" / "reveal.css").read_text(encoding="utf-8") + theme
    return {
        "js": (reveal / "dist" / "reveal.js").read_text(encoding="utf-8"),
        "css": css,
        "width": WIDTH,
        "height": HEIGHT,
    }


def build_slides(out_dir: str | Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Write one self-contained `<notebook>.slides.html` per notebook into `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exporter = SlidesExporter(
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        extra_loaders=[DictLoader({"offline_deck.html.j2": DECK_TEMPLATE})],
        template_file="offline_deck.html.j2",
    )
    reveal = offline_reveal()
    written = []
    for path in notebooks or course_notebooks():
        deck = as_slides(nbformat.read(path, as_version=4))
        html, _ = exporter.from_notebook_node(deck, resources={"offline_reveal": reveal})
        target = out_dir / f"{path.stem}.slides.html"
        target.write_text(html, encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(repository_root() / "build" / "slides"))
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    for path in build_slides(args.out, args.notebooks or None):
        print(path)


if __name__ == "__main__":
    main()
