"""The admins' model pages: every version with its up-rate over time, and one version's lineage, gate results,
canary figures and transitions, with the promote / roll back / retire actions the models API has (a reason and a
confirmation each; the registry's rules decide, as they do for the API and the CLI)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.di import Provide
from litestar.exceptions import ClientException
from litestar.response import Redirect, Template

from server.auth.guards import requires_role
from server.db.models import Role
from server.models.dependencies import provide_lifecycle, provide_registry
from server.models.lifecycle import ModelLifecycle
from server.models.registry import ModelRegistry
from server.tuning_runs.services import TuningRunService
from server.ui.charts import Series, line_chart
from server.ui.controllers.admin import provide_tuning_runs, provide_usage_stats
from server.ui.controllers.forms import form_of, text
from server.ui.stats import UsageStats

MAX_REASON_CHARS = 2000
# What each action is called on the page, and the statuses it is offered for (the registry still decides).
ACTIONS = {
    "promote": {"gated": "Start a canary", "canary": "Promote to active"},
    "rollback": {"canary": "Roll the canary back", "active": "Roll back to the version it replaced"},
    "retire": {"gated": "Retire", "canary": "Retire"},
}


def offered_actions(status: str, replaced_one: bool) -> list[tuple[str, str]]:
    """(action, label) pairs the page offers for a version in `status`; an active version rolls back only when it
    replaced one."""
    offered = [(action, labels[status]) for action, labels in ACTIONS.items() if status in labels]
    return [(action, label) for action, label in offered if replaced_one or (action, status) != ("rollback", "active")]


class ModelPagesController(Controller):
    path = "/admin/models"
    guards = [requires_role(Role.ADMIN)]
    dependencies = {
        "registry": Provide(provide_registry, sync_to_thread=False),
        "lifecycle": Provide(provide_lifecycle, sync_to_thread=False),
        "tuning_runs": Provide(provide_tuning_runs, sync_to_thread=False),
        "stats": Provide(provide_usage_stats, sync_to_thread=False),
    }

    @get("/")
    async def versions(
        self, request: Request[Any, Any, Any], stats: UsageStats, tuning_runs: TuningRunService
    ) -> Template:
        versions = await stats.versions(await tuning_runs.newest(500))
        figures = await stats.daily(30)
        up_rate = line_chart(
            "version-up-rate",
            "Up-rate per model version per day (last 30 days)",
            figures.days,
            [Series(name, figures.up_rate(name)) for name in figures.versions],
            percent=True,
        )
        return Template(
            "admin_models.html.j2",
            context={"user": request.user, "versions": versions, "up_rate": up_rate},
        )

    @get("/{name:str}")
    async def version(
        self, request: Request[Any, Any, Any], name: str, registry: ModelRegistry, done: str = ""
    ) -> Template:
        detail = await registry.describe(name)
        replaced_one = any(
            alias.version_name == name and alias.previous_version_name for alias in await registry.aliases()
        )
        return Template(
            "admin_model.html.j2",
            context={
                "user": request.user,
                "model": detail,
                "actions": offered_actions(detail.status, replaced_one),
                "done": done if done in ACTIONS else "",
            },
        )

    @post("/{name:str}/{action:str}", status_code=303)
    async def act(self, request: Request[Any, Any, Any], name: str, action: str, lifecycle: ModelLifecycle) -> Redirect:
        """One admin action with its reason; refused (400) unless the confirmation box is ticked."""
        if action not in ACTIONS:
            raise ClientException(f"`{action}` is not an action: promote, rollback or retire.")
        form = await form_of(request)
        reason = text(form, "reason", MAX_REASON_CHARS, required=True).strip()
        if text(form, "confirm", 10) != "yes":
            raise ClientException("Tick the confirmation box: this changes what users are answered with.")
        actor = f"admin:{request.user.name}"
        if action == "promote":
            await lifecycle.promote(name, actor, reason)
        elif action == "rollback":
            await lifecycle.rollback(name, actor, reason)
        else:
            await lifecycle.retire(name, actor, reason)
        return Redirect(f"/ui/admin/models/{name}?done={action}", status_code=303)
