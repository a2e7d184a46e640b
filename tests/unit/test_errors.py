"""The one exception mapping: any domain's `RatchetError` reaches the client with its own status and code, in
OpenAI's shape under /v1 and Litestar's elsewhere; anything else is a logged 500 that says nothing inside."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from server.errors import EXCEPTION_HANDLERS
from server.exceptions import ConflictError, NotFoundError, UnavailableError


class GadgetNotFoundError(NotFoundError):
    code = "gadget_not_found"


class GadgetBusyError(ConflictError):
    pass


@get("/v1/gadgets/missing")
async def missing_openai() -> None:
    raise GadgetNotFoundError("No gadget 7.")


@get("/api/gadgets/missing")
async def missing_api() -> None:
    raise GadgetNotFoundError("No gadget 7.")


@get("/api/gadgets/busy")
async def busy() -> None:
    raise GadgetBusyError("Gadget 7 is being moved.")


@get("/v1/gadgets/down")
async def down() -> None:
    raise UnavailableError("The gadget store is down.")


@get("/api/gadgets/broken")
async def broken() -> None:
    raise KeyError("secret internals")


def gadget_app() -> Litestar:
    return Litestar(
        route_handlers=[missing_openai, missing_api, busy, down, broken], exception_handlers=EXCEPTION_HANDLERS
    )


async def test_a_domain_error_unknown_to_the_mapping_answers_with_its_own_status_and_code() -> None:
    async with AsyncTestClient(gadget_app()) as client:
        openai = await client.get("/v1/gadgets/missing")
        api = await client.get("/api/gadgets/missing")
        conflict = await client.get("/api/gadgets/busy")
        unavailable = await client.get("/v1/gadgets/down")
    assert openai.status_code == 404
    assert openai.json() == {
        "error": {"message": "No gadget 7.", "type": "not_found_error", "param": None, "code": "gadget_not_found"}
    }
    assert api.status_code == 404 and api.json() == {"status_code": 404, "detail": "No gadget 7."}
    assert conflict.status_code == 409 and conflict.json()["detail"] == "Gadget 7 is being moved."
    assert unavailable.status_code == 503 and unavailable.json()["error"]["code"] == "unavailable"


async def test_an_unexpected_error_is_a_500_that_does_not_leak_its_message() -> None:
    async with AsyncTestClient(gadget_app()) as client:
        response = await client.get("/api/gadgets/broken")
    assert response.status_code == 500
    assert response.json() == {"status_code": 500, "detail": "Internal server error"}
