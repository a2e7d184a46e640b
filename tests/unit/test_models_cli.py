"""`ratchet models …` on the real database: admins list, show and act from the command line with the same rules
as the API; vLLM unreachable leaves everything as it was."""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.cli import main
from server.db.engine import open_sessions
from server.models.services import ModelRouter
from server.settings import Settings, get_settings
from tests.unit.model_fixtures import model_settings, serving


async def a_gated_version(settings: Settings) -> None:
    async with open_sessions(settings) as sessions:
        await ModelRouter(sessions, settings).ensure_base_registered()
        await (await serving(settings, sessions)).gated("good", "ratchet-kto-1")


def test_admins_list_show_and_act_from_the_command_line(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    configured = model_settings(settings)
    for name, value in {
        "RATCHET_DATA_DIR": str(configured.data_dir),
        "RATCHET_DATABASE_URL": configured.database_url.get_secret_value(),
        "RATCHET_BASE_MODEL": str(configured.base_model),
        "RATCHET_BASE_MODEL_NAME": configured.base_model_name,
        "RATCHET_VLLM_URL": configured.vllm_url,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        asyncio.run(a_gated_version(configured))
        runner = CliRunner()
        listed = runner.invoke(main, ["models", "list"])
        assert listed.exit_code == 0, listed.output
        assert "ratchet" in listed.output

        shown = runner.invoke(main, ["models", "show", "ratchet-kto-1"])
        assert json.loads(shown.output)["status"] == "gated"

        down = runner.invoke(main, ["models", "promote", "ratchet-kto-1", "--reason", "canary"])
        assert down.exit_code == 1 and "unreachable" in down.output
        assert runner.invoke(main, ["models", "promote", "ratchet-kto-1"]).exit_code == 2  # no reason
        assert json.loads(runner.invoke(main, ["models", "show", "ratchet-kto-1"]).output)["status"] == "gated"

        retired = runner.invoke(main, ["models", "retire", "ratchet-kto-1", "--reason", "superseded", "--by", "alice"])
        assert retired.exit_code == 0, retired.output
        detail = json.loads(retired.output)
        assert detail["status"] == "retired"
        last = detail["transitions"][-1]
        assert (last["actor"], last["reason"]) == ("admin:alice", "superseded")
        missing = runner.invoke(main, ["models", "show", "no-such-version"])
        assert missing.exit_code == 1 and "no model version" in missing.output
    finally:
        get_settings.cache_clear()
