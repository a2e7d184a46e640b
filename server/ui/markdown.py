"""Markdown to safe HTML for what users and the model wrote. Both are untrusted: raw HTML in the source is shown
as text (markdown-it's `html` off), and the rendered HTML then goes through an allow-list sanitiser (nh3, the
Ammonia crate), so nothing a user or the model writes can add a script, a handler, a style or a form."""

from __future__ import annotations

import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

_parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li", "a",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"align"}, "td": {"align"}}


def render_markdown(text: str) -> Markup:
    """Sanitised HTML for one message. Images are not kept: an answer must not make the reader's browser fetch
    anything (the page's CSP would refuse it too)."""
    html = _parser.render(text)
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    # Marked safe only after nh3 kept nothing outside the allow-list.
    return Markup(clean)
