"""Input types the domains' schemas and controllers share, bounded so that no value a client sends fails in the
database (each of these answered 500 on SQLite, PostgreSQL or both before)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from litestar.exceptions import ClientException
from litestar.params import Parameter
from msgspec import Meta

MAX_OFFSET = 10**9

Offset = Annotated[int, Parameter(ge=0, le=MAX_OFFSET, description="How many rows to skip.")]

# PostgreSQL cannot store the NUL character in text; refusing it everywhere keeps both stores alike.
NO_NUL = r"^[^\x00]*$"

Text = Annotated[str, Meta(pattern=NO_NUL)]
"""Free text in a request body."""

# What `str.isspace()` calls whitespace, spelled out: `\s` means a different set to Python and to the JSON Schema
# (ECMA) regex engines, and the document must allow exactly what the API takes.
_WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

NonBlankText = Annotated[str, Meta(pattern=rf"^[^\x00]*[^\x00{_WHITESPACE}][^\x00]*$")]
"""Free text in a request body that must say something (not empty, not only whitespace)."""

TextParam = Annotated[str, Parameter(pattern=NO_NUL)]
"""Free text in a path or query parameter."""

OptionalTextParam = Annotated[str | None, Parameter(pattern=NO_NUL)]
"""Free text in an optional query parameter (a constraint inside `X | None` would not be applied)."""


def time_window(since: datetime | None, until: datetime | None) -> tuple[datetime | None, datetime | None]:
    """`since`/`until` filters in UTC (a time without offset is read as UTC); 400 for a time that UTC cannot
    represent (year 1 at +14:00) or an empty window."""

    def utc(value: datetime | None, name: str) -> datetime | None:
        if value is None:
            return None
        try:
            return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:
            raise ClientException(f"`{name}` is out of range: {value.isoformat()}.") from None

    since, until = utc(since, "since"), utc(until, "until")
    if since and until and since >= until:
        raise ClientException("`since` must be before `until`.")
    return since, until
