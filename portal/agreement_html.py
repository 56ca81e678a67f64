"""Agreements as accessible HTML: the published Markdown rendered by markdown-it-py.

Raw HTML in the source is disabled (shown as text), so a published agreement cannot put markup
or script on the portal; links are limited to http(s) and mailto by markdown-it's validator.
Headings move down one level (`#` becomes `<h2>`) because the page's own `<h1>` names the
journey. What a person signs is still the published source text: its hash is recorded, not
this rendering.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt
from markupsafe import Markup

_SHIFT = 1  # the page's <h1> is the journey; an agreement's "#" is a section of it


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


@lru_cache(maxsize=32)
def agreement_html(text: str) -> Markup:
    """The agreement's Markdown as HTML (headings from `<h2>`), safe to put in a page."""
    md = _parser()
    tokens = md.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            level = min(6, int(token.tag[1]) + _SHIFT)
            token.tag = f"h{level}"
    return Markup(md.renderer.render(tokens, md.options, {}))  # noqa: S704 - escaped by markdown-it


def starts_with_heading(text: str) -> bool:
    """Whether the agreement names itself in its first line (then the page adds no title)."""
    return text.lstrip().startswith("#")
