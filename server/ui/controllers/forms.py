"""Reading the UI's urlencoded forms: every field checked here, so a bad post gets a 400 and changes nothing."""

from __future__ import annotations

import enum
from typing import Any, TypeVar
from uuid import UUID

from litestar import Request
from litestar.datastructures import FormMultiDict
from litestar.exceptions import ClientException

E = TypeVar("E", bound=enum.Enum)


async def form_of(request: Request[Any, Any, Any]) -> FormMultiDict:
    return await request.form()


def text(form: FormMultiDict, name: str, max_chars: int, required: bool = False) -> str:
    value = form.get(name, "")
    if not isinstance(value, str):
        raise ClientException(f"`{name}` must be text.")
    if required and not value.strip():
        raise ClientException(f"`{name}` cannot be empty.")
    if len(value) > max_chars:
        raise ClientException(f"`{name}` is longer than {max_chars} characters.")
    return value


def optional_uuid(form: FormMultiDict, name: str) -> UUID | None:
    value = text(form, name, 64).strip()
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError as error:
        raise ClientException(f"`{name}` is not an id.") from error


def choice(enum_type: type[E], value: str, name: str) -> E:
    try:
        return enum_type(value)
    except ValueError as error:
        allowed = ", ".join(str(member.value) for member in enum_type)
        raise ClientException(f"`{name}` must be one of {allowed}.") from error


def choices(form: FormMultiDict, enum_type: type[E], name: str) -> list[E]:
    return [choice(enum_type, value, name) for value in form.getall(name, []) if isinstance(value, str)]


def wants_fragment(request: Request[Any, Any, Any]) -> bool:
    """The page's script asks for the changed part only; without script the browser gets a redirect."""
    return "x-ratchet-fetch" in request.headers
