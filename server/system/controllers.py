"""Liveness, readiness (vLLM and database reachable) and Prometheus metrics."""

from __future__ import annotations

from litestar import Controller, MediaType, get
from litestar.datastructures import State
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text


class SystemController(Controller):
    tags = ["system"]

    @get("/healthz", summary="The process is alive", media_type=MediaType.JSON)
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @get(
        "/readyz",
        summary="vLLM and the database are reachable, and vLLM has every live model version",
        media_type=MediaType.JSON,
    )
    async def readyz(self, state: State) -> Response[dict[str, object]]:
        checks: dict[str, str] = {}
        try:
            async with state.sessions() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as error:  # any driver error means "not ready"; the reason is reported
            checks["database"] = f"unreachable: {type(error).__name__}"
        down_reason = state.engine_down_reason()
        if down_reason:
            checks["vllm"] = down_reason
        else:
            healthy, reason = await state.engine.is_healthy()
            checks["vllm"] = "ok" if healthy else reason
        missing = state.reconciler.missing
        if missing is None:
            checks["models"] = "live model versions not checked in vLLM yet"
        else:
            checks["models"] = "; ".join(f"{name} not loaded ({why})" for name, why in missing.items()) or "ok"
        ready = all(value == "ok" for value in checks.values())
        return Response({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
    async def metrics(self) -> bytes:
        return generate_latest()
