"""The Litestar application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar
from litestar.datastructures import State
from litestar.logging.config import LoggingConfig
from litestar.middleware.base import DefineMiddleware
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

from server.auth.middleware import TokenAuthenticationMiddleware
from server.auth.services import UserService
from server.chat.controllers import ChatController, ConversationController
from server.chat.conversations import ConversationService
from server.chat.regeneration import RegenerationService
from server.chat.services import ChatService
from server.chat.turns import TurnStore
from server.db.engine import build_db_config
from server.engine.client import EngineClient
from server.engine.fleet import EngineFleet
from server.engine.launcher import EngineState, VllmLauncher, serves_lora_merged
from server.engine.replicas import Replicas
from server.errors import EXCEPTION_HANDLERS
from server.exports.controllers import ExportController
from server.feedback.controllers import FeedbackController, UserDataController
from server.limits import STORE_NAME, rate_limit_middleware, rate_limit_store
from server.models.controllers import ModelController
from server.models.generation_defaults import served_defaults
from server.models.lifecycle import ModelLifecycle
from server.models.live_canary import LiveCanary
from server.models.loading import AdapterLoader
from server.models.merged_serving import MergedVersions
from server.models.reconciler import EngineReconciler
from server.models.registry import ModelRegistry
from server.models.services import ModelRouter
from server.models.soft_prompts import SoftPrompts
from server.models.upkeep import ServingUpkeep
from server.openapi import StrictStructSchemaPlugin
from server.rails.controllers import RailsController
from server.rails.registry import RailsRegistry, install_sighup_reload
from server.review.controllers import ReviewController
from server.settings import Settings, get_settings
from server.slack.controllers import SlackController
from server.slack.lifespan import slack_lifespan
from server.system.controllers import SystemController
from server.tuning_runs.controllers import TuningRunController
from server.ui.controllers import ui_routes
from server.ui.templating import template_config

log = logging.getLogger("ratchet")

# Slack cannot send a bearer token: its requests are verified by signature (server/slack/controllers.py).
PUBLIC_PATHS = ["^/healthz$", "^/readyz$", "^/metrics$", "^/schema", "^/slack/"]


@asynccontextmanager
async def serving_lifespan(app: Litestar) -> AsyncIterator[None]:
    """Build the long-lived services, start (or find) vLLM, and tear it all down on shutdown."""
    state = app.state
    settings: Settings = state.settings
    sessions = state.db_config.create_session_maker()
    router = ModelRouter(sessions, settings)
    await router.ensure_base_registered()
    engine = EngineClient(settings.engine_url, settings.vllm_request_timeout_s)
    launcher = VllmLauncher(settings) if settings.managed_vllm else None

    def engine_down_reason() -> str | None:
        if launcher is None or launcher.state == EngineState.READY:
            return None
        return launcher.reason

    replicas = Replicas(settings, engine)
    merged = MergedVersions(settings, EngineFleet(settings)) if serves_lora_merged(settings) else None
    loader = AdapterLoader([engine], replicas, merged)
    await loader.refresh_engines()
    state.registry = ModelRegistry(sessions, settings)
    state.lifecycle = ModelLifecycle(sessions, settings, loader)
    state.reconciler = EngineReconciler(sessions, settings, loader, router)
    upkeep = ServingUpkeep(settings, router, state.reconciler, LiveCanary(sessions, state.lifecycle))
    state.sessions = sessions
    state.router = router
    state.engine = engine
    state.launcher = launcher
    state.engine_down_reason = engine_down_reason
    state.users = UserService(sessions, settings.token_cache_ttl_s)
    state.conversations = ConversationService(sessions)
    state.rails = RailsRegistry(
        settings.rails_config, settings.data_dir, settings.rails_enabled, settings.vllm_request_timeout_s
    )
    await state.rails.start()
    uninstall_sighup = install_sighup_reload(state.rails)
    turns = TurnStore(sessions)
    soft_prompts = SoftPrompts.for_settings(settings)
    own_engine = merged.engine_for if merged is not None else None
    state.chat = ChatService(
        turns, engine, router, settings, engine_down_reason, state.rails, soft_prompts, own_engine=own_engine
    )
    state.regeneration = RegenerationService(
        sessions,
        turns,
        engine,
        router,
        engine_down_reason,
        state.rails,
        served_sampling=served_defaults(settings).sampling(),
        soft_prompts=soft_prompts,
        own_engine=own_engine,
    )
    failed = await turns.fail_stale_pending(settings.vllm_request_timeout_s)
    if failed:
        log.warning("marked %d answers left pending by an earlier process as failed", failed)
    if launcher is not None:
        await launcher.start()
    upkeep.start()
    try:
        yield
    finally:
        await upkeep.stop()
        uninstall_sighup()
        await state.rails.aclose()
        if launcher is not None:
            await launcher.stop()
        if merged is not None:
            await merged.close()
        await replicas.close()
        await engine.close()


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    db_config = build_db_config(settings)
    # Without Slack configured the app is exactly what it was: no Slack routes, nothing started.
    slack = settings.slack_enabled
    return Litestar(
        route_handlers=[
            *([SlackController] if slack else []),
            ChatController,
            ConversationController,
            SystemController,
            RailsController,
            FeedbackController,
            UserDataController,
            ReviewController,
            ExportController,
            TuningRunController,
            ModelController,
            *ui_routes(settings),
        ],
        template_config=template_config(),
        plugins=[SQLAlchemyPlugin(config=db_config), StrictStructSchemaPlugin()],
        middleware=[
            DefineMiddleware(TokenAuthenticationMiddleware, exclude=PUBLIC_PATHS),
            *rate_limit_middleware(settings),
        ],
        stores={STORE_NAME: rate_limit_store(settings)},
        request_max_body_size=settings.max_body_bytes,
        lifespan=[serving_lifespan, *([slack_lifespan] if slack else [])],
        state=State({"settings": settings, "db_config": db_config}),
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title="Ratchet",
            version="0.1.0",
            description="Self-hosted chat assistant that learns from its users. OpenAI-compatible under /v1.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin()],
        ),
        logging_config=LoggingConfig(
            root={"level": settings.log_level.upper(), "handlers": ["queue_listener"]},
            # httpx logs every request to vLLM at INFO: noise at this volume.
            loggers={
                "httpx": {"level": "WARNING", "propagate": True},
                # NeMo logs every Colang event at INFO: several lines per request.
                "nemoguardrails": {"level": "WARNING", "propagate": True},
            },
            log_exceptions="debug",
        ),
    )
