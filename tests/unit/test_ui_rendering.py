"""What the pages render from untrusted text (Markdown through the sanitiser) and from figures (SVG charts)."""

from __future__ import annotations

from datetime import date, timedelta
from html.parser import HTMLParser

import pytest

from server.ui.charts import Series, line_chart
from server.ui.markdown import render_markdown

ATTACKS = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "<a href='javascript:alert(1)'>x</a>",
    "[click](javascript:alert(1))",
    "[click](data:text/html;base64,PHNjcmlwdD4=)",
    '<svg onload="alert(1)"></svg>',
    "<iframe src='https://evil.example'></iframe>",
    '<p style="background:url(https://evil.example)">x</p>',
    "![pixel](https://evil.example/track.png)",
]


class Elements(HTMLParser):
    """Every element and attribute a browser would build from the HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, dict(attrs)))


@pytest.mark.parametrize("attack", ATTACKS)
def test_markup_from_users_and_the_model_never_becomes_active_html(attack: str) -> None:
    parser = Elements()
    parser.feed(str(render_markdown(f"Look: {attack}")))
    for tag, attributes in parser.found:
        assert tag in {"p", "a"}
        assert set(attributes) <= {"href", "rel"}
        assert (attributes.get("href") or "https:").startswith("https:")


def test_markdown_formatting_survives_the_sanitiser() -> None:
    html = str(
        render_markdown(
            "**bold** and `code`\n\n```python\nprint('<b>')\n```\n\n- a\n- b\n\n[docs](https://x.example/a)"
        )
    )
    assert "<strong>bold</strong>" in html
    assert "<code>code</code>" in html
    assert "<pre><code>print('&lt;b&gt;')" in html
    assert "<li>a</li>" in html
    assert '<a href="https://x.example/a" rel="noopener noreferrer nofollow">docs</a>' in html


def test_a_chart_draws_one_line_per_version_breaks_on_days_without_data_and_has_a_table() -> None:
    days = [date(2026, 11, 1) + timedelta(days=offset) for offset in range(4)]
    html = str(
        line_chart(
            "up", "Up-rate <by version>", days, [Series("v1", [0.5, None, 1.0, 0.75]), Series("v2", [0.0] * 4)], True
        )
    )
    assert html.count("<polyline") == 2  # v1 is cut in two by its gap but its first part is a single point
    assert 'class="s0"' in html and 'class="s1"' in html
    assert "Up-rate &lt;by version&gt;" in html  # titles are escaped
    assert "<td>75%</td>" in html and "<td>-</td>" in html
    assert 'role="img"' in html
