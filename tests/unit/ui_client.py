"""Driving the web UI through the test client as a browser would: pages, their CSRF tokens and forms."""

from __future__ import annotations

import re

from httpx import Response
from litestar.testing import AsyncTestClient

CSRF_INPUT = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_of(page: Response) -> str:
    match = CSRF_INPUT.search(page.text)
    assert match, f"no CSRF token on {page.url}"
    return match.group(1)


async def form_token(client: AsyncTestClient, path: str = "/ui/login") -> str:
    return csrf_of(await client.get(path))


async def sign_in(client: AsyncTestClient, token: str) -> Response:
    response = await client.post(
        "/ui/login",
        data={"_csrf_token": await form_token(client), "token": token, "next": "/ui/chat/"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return response


async def post_form(
    client: AsyncTestClient, path: str, data: dict[str, str | list[str]], page: str = "/ui/chat/"
) -> Response:
    """A form post with the token of a page the user has open, as the browser sends it."""
    return await client.post(path, data={"_csrf_token": await form_token(client, page), **data}, follow_redirects=False)
