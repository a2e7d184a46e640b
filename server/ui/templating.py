"""The UI's templates: a Jinja environment that escapes everything, with the Markdown sanitiser as a filter and
static files addressed by a content hash (so browsers may cache them for a year)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.template.config import TemplateConfig

from server.db.models import Role, VoteReason
from server.ui.markdown import render_markdown

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PREFIX = "/ui"


REASON_LABELS = {
    VoteReason.WRONG: "Wrong or inaccurate",
    VoteReason.UNHELPFUL: "Not helpful",
    VoteReason.UNSAFE: "Unsafe or inappropriate",
    VoteReason.OFF_TOPIC: "Off topic",
    VoteReason.TOO_LONG: "Too long",
    VoteReason.TOO_SHORT: "Too short",
    VoteReason.REFUSED: "Refused when it should not have",
    VoteReason.OTHER: "Something else",
}


def shown(value: object) -> str:
    """A figure of a run record as a table cell shows it."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _static_versions() -> dict[str, str]:
    """A short content hash per static file: its URL changes when it does, so browsers may cache it for a year."""
    return {
        str(path.relative_to(STATIC_DIR)): hashlib.sha256(path.read_bytes()).hexdigest()[:10]
        for path in STATIC_DIR.rglob("*")
        if path.is_file()
    }


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    versions = _static_versions()
    environment.filters["markdown"] = render_markdown
    environment.globals["static"] = lambda name: f"{PREFIX}/static/{name}?v={versions[name]}"
    environment.globals["Role"] = Role
    environment.globals["vote_reasons"] = list(REASON_LABELS.items())
    environment.filters["shown"] = shown
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))
