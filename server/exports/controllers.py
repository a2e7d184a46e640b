"""Training-data exports for admins: the JSONL files and manifest as one zip, or the manifest alone."""

from __future__ import annotations

from datetime import datetime

from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.response import Response
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.db.models import Channel, Role
from server.exports.services import ExportFilters, ExportService
from server.inputs import OptionalTextParam, time_window


def provide_export_service(db_session: AsyncSession, state: State) -> ExportService:
    return ExportService(db_session, state.settings.export_max_pairs_per_prompt)


def export_filters(
    since: datetime | None, until: datetime | None, model_version: str | None, channel: Channel | None = None
) -> ExportFilters:
    return ExportFilters(*time_window(since, until), model_version, channel.value if channel else None)


class ExportController(Controller):
    path = "/api/exports/training-data"
    tags = ["exports"]
    guards = [requires_role(Role.ADMIN)]
    dependencies = {"export_service": Provide(provide_export_service, sync_to_thread=False)}

    @get("", summary="Export training data (zip of TRL-ready JSONL files and a manifest)", media_type="application/zip")
    async def export(
        self,
        export_service: ExportService,
        since: datetime | None = None,
        until: datetime | None = None,
        model_version: OptionalTextParam = None,
        channel: Channel | None = None,
    ) -> Response[bytes]:
        """Answers whose feedback (vote or review decision) last changed in [`since`, `until`), optionally of one
        model version. Deterministic: the same store gives the same bytes; the `X-Ratchet-Export-Hash` header is
        the manifest's content hash."""
        export = await export_service.build(export_filters(since, until, model_version, channel))
        return Response(
            export.zip(),
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="ratchet-export-{export.content_hash[:12]}.zip"',
                "X-Ratchet-Export-Hash": export.content_hash,
            },
        )

    @get("/manifest", summary="What an export with these filters would contain: counts, removals, hashes")
    async def manifest(
        self,
        export_service: ExportService,
        since: datetime | None = None,
        until: datetime | None = None,
        model_version: OptionalTextParam = None,
        channel: Channel | None = None,
    ) -> dict[str, object]:
        return (await export_service.build(export_filters(since, until, model_version, channel))).manifest
