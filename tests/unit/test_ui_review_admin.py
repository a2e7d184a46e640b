"""The review desk and the admin pages through the real app and database: what ops and admins see and do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from litestar.testing import AsyncTestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from server.db.models import ModelVersion, RailEvent, ReviewDecision, ReviewState, Role, VoteReason, VoteValue
from server.feedback.services import FeedbackService
from server.ui.templating import REASON_LABELS
from tests.unit.feedback_store import exchange, person
from tests.unit.test_tuning_runs_api import a_finished_run
from tests.unit.ui_client import form_token, sign_in

RUN_ID = "20261128-010000-abcd"


async def test_the_queue_shows_counts_per_reason_and_filters(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-desk")
    olivia = await person(sessions, "olivia-desk", Role.OPS)
    wrong = await exchange(sessions, alice, "Capital of France?", "Berlin.")
    long = await exchange(sessions, alice, "Say hi", "Hi " * 50, channel="api")
    feedback = FeedbackService(sessions)
    await feedback.set_vote(alice.principal, wrong.answer_id, VoteValue.DOWN, [VoteReason.WRONG], "It is Paris")
    await feedback.set_vote(
        alice.principal, long.answer_id, VoteValue.DOWN, [VoteReason.TOO_LONG, VoteReason.WRONG], ""
    )
    await sign_in(client, olivia.token)
    page = (await client.get("/ui/review/")).text
    assert "2 items" in page
    assert "Wrong or inaccurate <strong>2</strong>" in page
    assert "Too long <strong>1</strong>" in page
    by_reason = (await client.get("/ui/review/", params={"reason": "too_long"})).text
    assert "1 item" in by_reason and "Hi Hi" in by_reason and "Berlin" not in by_reason
    by_channel = (await client.get("/ui/review/", params={"channel": "web"})).text
    assert "Berlin" in by_channel and "Hi Hi" not in by_channel
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert "0 items" in (await client.get("/ui/review/", params={"since": tomorrow})).text
    assert (await client.get("/ui/review/", params={"reason": "boring"})).status_code == 400
    assert (await client.get("/ui/review/", params={"since": "yesterday"})).status_code == 400


async def test_an_item_shows_context_vote_verdicts_and_version_and_a_correction_moves_to_the_next(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-item")
    olivia = await person(sessions, "olivia-item", Role.OPS)
    first = await exchange(sessions, alice, "Capital of France?", "Berlin.")
    second = await exchange(sessions, alice, "And of Spain?", "Lisbon.", after=first)
    feedback = FeedbackService(sessions)
    await feedback.set_vote(alice.principal, first.answer_id, VoteValue.DOWN, [VoteReason.WRONG], "It is Paris")
    await feedback.set_vote(alice.principal, second.answer_id, VoteValue.DOWN, [VoteReason.WRONG], "")
    async with sessions.begin() as session:
        session.add(RailEvent(message_id=second.answer_id, direction="output", rail="pii", verdict="pass"))
    await sign_in(client, olivia.token)
    item = (await client.get(f"/ui/review/{second.answer_id}")).text
    for shown in ["Capital of France?", "Berlin.", "And of Spain?", "Lisbon.", "pii", "smollm2-135m-instruct"]:
        assert shown in item
    decided = await client.post(
        f"/ui/review/{second.answer_id}/decide",
        data={
            "_csrf_token": await form_token(client, f"/ui/review/{second.answer_id}"),
            "decision": "correct",
            "correction": "Madrid.",
            "note": "geography",
            "status": "open",
        },
        follow_redirects=False,
    )
    assert decided.status_code == 303
    assert decided.headers["location"].startswith(f"/ui/review/{first.answer_id}?")
    async with sessions() as session:
        state = await session.scalar(select(ReviewState).where(ReviewState.message_id == second.answer_id))
        assert (state.decision, state.correction, state.trainable) == ("correct", "Madrid.", True)
    trail = (await client.get(f"/ui/review/{second.answer_id}")).text
    assert "olivia-item" in trail and "Madrid." in trail and "geography" in trail


async def test_a_correction_without_text_is_a_400_and_records_nothing(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    alice = await person(sessions, "alice-empty")
    olivia = await person(sessions, "olivia-empty", Role.OPS)
    turn = await exchange(sessions, alice, "Q", "A")
    await sign_in(client, olivia.token)
    response = await client.post(
        f"/ui/review/{turn.answer_id}/decide",
        data={"_csrf_token": await form_token(client, "/ui/review/"), "decision": "correct", "correction": "  "},
    )
    assert response.status_code == 400
    async with sessions() as session:
        assert (await session.scalars(select(ReviewDecision))).all() == []


async def test_admin_pages_show_runs_reports_models_and_daily_charts(
    client: AsyncTestClient, sessions: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    admin = await person(sessions, "admin-pages", Role.ADMIN)
    alice = await person(sessions, "alice-pages")
    run_dir = tmp_path / "runs" / RUN_ID
    await a_finished_run(sessions, run_dir)
    async with sessions.begin() as session:
        session.add(ModelVersion(name="base-v1", kind="base", base_model="/models/base"))
        session.add(
            ModelVersion(
                name="kto-v2", kind="lora", base_model="/models/base", adapter_path=str(run_dir / "kto" / "adapter")
            )
        )
    good = await exchange(sessions, alice, "Q1", "A1", model_version="kto-v2")
    bad = await exchange(sessions, alice, "Q2", "A2", model_version="kto-v2")
    await exchange(sessions, alice, "Q3", "A3", model_version="base-v1", status="failed")
    feedback = FeedbackService(sessions)
    await feedback.set_vote(alice.principal, good.answer_id, VoteValue.UP, [], "")
    await feedback.set_vote(alice.principal, bad.answer_id, VoteValue.DOWN, [VoteReason.WRONG], "")
    await sign_in(client, admin.token)

    runs = (await client.get("/ui/admin/runs")).text
    assert RUN_ID in runs and "succeeded" in runs
    run = (await client.get(f"/ui/admin/runs/{RUN_ID}")).text
    assert "pairwise_accuracy" in run and f"/ui/admin/runs/{RUN_ID}/files/chart-kto.png" in run
    chart = await client.get(f"/ui/admin/runs/{RUN_ID}/files/chart-kto.png")
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"
    report = await client.get(f"/ui/admin/runs/{RUN_ID}/files/report.html")
    assert "sandbox" in report.headers["content-security-policy"]
    assert (await client.get(f"/ui/admin/runs/{RUN_ID}/files/run.json")).status_code == 404
    assert (await client.get("/ui/admin/runs/no-such-run")).status_code == 404

    models = (await client.get("/ui/admin/models")).text
    assert "kto-v2" in models and f'trained by run <a href="/ui/admin/runs/{RUN_ID}">' in models
    assert "50 %" in models  # one up, one down
    assert '<svg class="chart"' in models

    dashboard = (await client.get("/ui/admin/", params={"days": 7})).text
    assert dashboard.count('<svg class="chart"') == 7
    assert "3 answers" in dashboard and "1 failed answers" in dashboard
    assert (await client.get("/ui/admin/", params={"days": 1000})).status_code == 400


async def test_every_vote_reason_has_a_label() -> None:
    assert set(REASON_LABELS) == set(VoteReason)
