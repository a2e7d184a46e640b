"""Slack's request URLs (Events API and interactivity). They are public (Slack cannot send a bearer token):
every request is verified by its signature instead, by slack_bolt, before anything is stored."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.response import Response
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest


class SlackController(Controller):
    path = "/slack"
    include_in_schema = False

    @post(["/events", "/interactions"], status_code=200)
    async def receive_slack_request(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Hand the raw request to slack_bolt (it needs the exact bytes to check the signature)."""
        bolt: AsyncApp = request.app.state.slack_bolt
        body = await request.body()
        bolt_request = AsyncBoltRequest(
            # Bytes that are not UTF-8 cannot carry a valid signature: replaced, they fail verification (401).
            body=body.decode("utf-8", errors="replace"),
            query=request.url.query,
            headers={name: value for name, value in request.headers.items()},
        )
        answer = await bolt.async_dispatch(bolt_request)
        return Response(
            content=(answer.body or "").encode(),
            status_code=answer.status,
            headers=answer.first_headers_without_set_cookie(),
        )
