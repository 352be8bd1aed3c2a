"""The report's HTML: one autoescaping jinja2 environment over `templates/`, and figures embedded
as data URIs so report.html stays one file that opens offline."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import jinja2
from markupsafe import Markup

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                          keep_trailing_newline=False)


@dataclass(frozen=True)
class Figure:
    alt: str
    caption: str
    src: str  # a data: URI


def png_figure(png: bytes, alt: str, caption: str = "") -> Figure:
    return Figure(alt, caption, "data:image/png;base64," + base64.b64encode(png).decode("ascii"))


def file_figure(path: str | Path, caption: str = "") -> Optional[Figure]:
    """The PNG at `path`, or None when the stage did not draw it."""
    p = Path(path)
    return png_figure(p.read_bytes(), p.stem, caption) if p.is_file() else None


def render(template: str, **values: Any) -> Markup:
    """A template rendered with `values`; the result is markup, so a page can include it unescaped."""
    return Markup(_ENV.get_template(template).render(**values))
