"""The web UI in a real browser against the real app and the real vLLM: what employees, ops and admins do."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from server.chat.turns import Provenance, record_turn
from server.db.models import MessageStatus, User
from tests.e2e.conftest import PHONE, SCREENSHOTS
from tests.live_server import LiveServer, stored_message

pytestmark = pytest.mark.e2e

AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
ANSWER_TIMEOUT_MS = 240_000
XSS_QUESTION = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script> What is this?'
XSS_ANSWER = 'Sure: <img src=x onerror="window.__xss=3"> <script>window.__xss=4</script> [x](javascript:window.__xss=5)'
# Any element the markup above could have made: a script, a handler, or an image that is not one of the page's own
# vendored icons (the thumbs buttons carry <img src="/ui/static/vendor/feather/...">).
INJECTED_MARKUP = (
    '#thread script, #thread [onerror], #thread .body img, #thread img:not([src^="/ui/static/vendor/feather/"])'
)
CORRECTION = "A mutex is a lock that lets only one thread at a time use a shared resource. (e2e correction)"

# Counts every change the stream makes to the answer being written, to tell token-by-token from all-at-once.
COUNT_STREAM_UPDATES = """() => {
  window.__updates = 0;
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const node = m.target.nodeType === 1 ? m.target : m.target.parentElement;
      if (node && node.closest('.answer.streaming')) window.__updates++;
    }
  }).observe(document.getElementById('thread'), {subtree: true, childList: true, characterData: true});
}"""


def ask(page: Page, question: str) -> None:
    box = page.get_by_label("Your question")
    box.fill(question)
    box.press("Enter")


def wait_for_answer(page: Page) -> str:
    """The id of the newest answer once the stream ended and the stored answer replaced it."""
    page.wait_for_selector("article.answer.streaming", state="detached", timeout=ANSWER_TIMEOUT_MS)
    answer = page.locator("article.answer").last
    expect(answer.locator(".actions")).to_be_visible()
    return (answer.get_attribute("id") or "")[2:]


def run(coroutine: Any) -> Any:
    """Playwright's sync API keeps an event loop running in this thread, so database reads get their own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def answer_status(server: LiveServer, message_id: str) -> str:
    return (await stored_message(server, message_id)).status


def test_an_employee_question_streams_a_thumbs_down_reaches_ops_and_the_correction_the_export(
    alice: Page, olivia: Page, admin: Page
) -> None:
    alice.evaluate(COUNT_STREAM_UPDATES)
    question = "What is a mutex in programming? Explain in a few sentences."
    ask(alice, question)
    answer_id = wait_for_answer(alice)
    assert alice.evaluate("window.__updates") >= 3  # written piece by piece, not in one go
    expect(alice).to_have_url(re.compile(r"/ui/chat/[0-9a-f-]{36}$"))
    expect(alice.get_by_role("heading", level=1)).to_have_text(question)  # titled as a reload would show it
    answer = alice.locator(f"#m-{answer_id}")
    answer_text = answer.locator(".body").inner_text()
    assert answer_text.strip()

    answer.get_by_text("Not good").click()
    answer.get_by_label("Wrong or inaccurate").check()
    answer.get_by_label("Comment (optional)").fill("It should say it is a lock (e2e)")
    answer.get_by_role("button", name="Send thumbs down").click()
    expect(alice.locator(f"#m-{answer_id}")).to_contain_text("Your vote: not good")
    alice.reload()
    reopened = alice.locator(f"#m-{answer_id}")
    expect(reopened).to_contain_text("Your vote: not good")
    expect(reopened.get_by_label("Wrong or inaccurate")).to_be_checked()

    olivia.goto("/ui/review/?reason=wrong")
    olivia.locator(f'a[href^="/ui/review/{answer_id}"]').click()
    expect(olivia.locator("main")).to_contain_text("It should say it is a lock (e2e)")
    olivia.get_by_label("Corrected answer").fill(CORRECTION)
    olivia.get_by_role("button", name="Save correction").click()
    olivia.goto(f"/ui/review/{answer_id}")
    trail = olivia.get_by_role("region", name="Audit trail")
    expect(trail).to_contain_text("olivia-ops")
    expect(trail).to_contain_text(CORRECTION)

    admin.goto("/ui/admin/")
    with admin.expect_download() as download:
        admin.get_by_role("link", name="Download the training-data export").click()
    with zipfile.ZipFile(io.BytesIO(Path(download.value.path()).read_bytes())) as export:
        sft = [json.loads(line) for line in export.read("sft.jsonl").decode().splitlines()]
    assert any(CORRECTION in json.dumps(row["completion"]) for row in sft)


def test_stop_ends_the_generation_and_keeps_what_was_written(alice: Page, e2e_server: LiveServer) -> None:
    ask(alice, "Write a very long and detailed essay about the history of computers, with many sections.")
    streaming = alice.locator("article.answer.streaming")
    expect(streaming.locator(".body")).to_have_text(re.compile(r"\w{3,}.*\w{3,}"), timeout=ANSWER_TIMEOUT_MS)
    answer_id = (streaming.get_attribute("id") or "")[2:]
    alice.get_by_role("button", name="Stop").click()
    expect(alice.locator(f"#m-{answer_id}")).to_contain_text("Stopped.")
    expect(alice.get_by_role("button", name="Send")).to_be_enabled()
    deadline = time.monotonic() + 30
    while run(answer_status(e2e_server, answer_id)) == MessageStatus.PENDING and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run(answer_status(e2e_server, answer_id)) == MessageStatus.ABORTED
    alice.reload()
    expect(alice.locator(f"#m-{answer_id}")).to_contain_text("Stopped before the end.")


@pytest.mark.parametrize("path", ["/ui/review/", "/ui/admin/", "/ui/admin/models", "/ui/admin/runs"])
def test_a_user_cannot_open_review_or_admin_pages(alice: Page, path: str) -> None:
    response = alice.goto(path)
    assert response is not None and response.status == 403
    expect(alice.get_by_role("heading", name="Not allowed")).to_be_visible()


def test_a_users_forged_review_decision_is_refused(alice: Page, e2e_server: LiveServer) -> None:
    token = alice.locator('input[name="_csrf_token"]').first.get_attribute("value") or ""
    target = f"/ui/review/{uuid.uuid4()}/decide"
    with_token = alice.request.post(target, form={"_csrf_token": token, "decision": "approve"})
    assert with_token.status == 403  # the role guard
    without_token = alice.request.post(target, form={"decision": "approve"})
    assert without_token.status == 403  # CSRF
    api = httpx.get(f"{e2e_server.base_url}/api/review/items", headers=e2e_server.headers())
    assert api.status_code == 403


def test_markup_in_a_question_and_in_an_answer_is_shown_as_text(alice: Page, e2e_server: LiveServer) -> None:
    dialogs: list[str] = []
    alice.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    conversation_id = run(seed_answer(e2e_server, "alice", "Show me some HTML", XSS_ANSWER))
    alice.goto(f"/ui/chat/{conversation_id}")
    body = alice.locator("article.answer .body").last
    expect(body).to_contain_text('<img src=x onerror="window.__xss=3">')
    expect(body).to_contain_text("<script>window.__xss=4</script>")
    assert alice.locator(INJECTED_MARKUP).count() == 0
    assert alice.locator('#thread a[href^="javascript"]').count() == 0

    ask(alice, XSS_QUESTION)
    wait_for_answer(alice)
    expect(alice.locator("article.question .body").last).to_have_text(XSS_QUESTION)
    alice.reload()
    expect(alice.locator("article.question .body").last).to_have_text(XSS_QUESTION)
    assert alice.locator(INJECTED_MARKUP).count() == 0
    assert alice.evaluate("window.__xss") is None
    assert dialogs == []


async def seed_answer(server: LiveServer, user_name: str, question: str, answer: str) -> uuid.UUID:
    """An answer stored as the chat path stores one: the model cannot be made to write a given text on demand."""
    engine = create_async_engine(server.database_url)
    try:
        async with engine.begin() as connection:
            user_id = await connection.scalar(select(User.id).where(User.name == user_name))
        async with async_sessionmaker(engine).begin() as session:
            provenance = Provenance("ratchet", "smollm2-135m-instruct", None, None, {}, [])
            recorded = record_turn(
                session,
                user_id=user_id,
                channel="web",
                question=question,
                provenance=provenance,
                answer=answer,
                status=MessageStatus.COMPLETE,
                finish_reason="stop",
            )
        return recorded.conversation_id
    finally:
        await engine.dispose()


def voted_down(server: LiveServer, question: str, answer: str, reasons: list[str], comment: str = "") -> str:
    """A stored answer alice voted down through the API (so it is in the review queue); its id."""
    conversation_id = run(seed_answer(server, "alice", question, answer))
    thread = httpx.get(f"{server.base_url}/api/conversations/{conversation_id}", headers=server.headers())
    answer_id = thread.json()["messages"][-1]["id"]
    vote = httpx.put(
        f"{server.base_url}/api/messages/{answer_id}/feedback",
        json={"value": "down", "reasons": reasons, "comment": comment},
        headers=server.headers(),
    )
    assert vote.status_code == 200
    return answer_id


def test_the_review_desk_works_from_the_keyboard(olivia: Page, e2e_server: LiveServer) -> None:
    answer_id = voted_down(e2e_server, "Is the cafeteria open on Sunday?", "Yes, all night.", ["wrong"])
    olivia.goto("/ui/review/?reason=wrong")
    olivia.keyboard.press("j")
    assert olivia.evaluate("document.activeElement.closest('tr').classList.contains('selected')")
    olivia.goto(f"/ui/review/{answer_id}?reason=wrong")
    olivia.keyboard.press("c")
    assert olivia.evaluate("document.activeElement.id") == "correction"
    olivia.keyboard.press("Escape")
    olivia.keyboard.press("a")
    olivia.wait_for_url(re.compile(r"done="))
    olivia.goto(f"/ui/review/{answer_id}")
    expect(olivia.get_by_role("region", name="Audit trail")).to_contain_text("approve")


def test_chat_works_by_keyboard_alone(alice: Page) -> None:
    alice.goto("/ui/chat/")
    order = []
    for _ in range(40):
        alice.keyboard.press("Tab")
        focused = alice.evaluate("document.activeElement.id || document.activeElement.textContent.trim()")
        order.append(focused)
        if focused == "question":
            break
    assert order[0] == "Skip to content"
    assert order[-1] == "question", order
    alice.keyboard.type("Say hello")
    alice.keyboard.press("Shift+Enter")
    alice.keyboard.type("in one word.")
    assert alice.get_by_label("Your question").input_value() == "Say hello\nin one word."
    alice.keyboard.press("Enter")
    answer_id = wait_for_answer(alice)
    # The question's text; the article also carries its speaker's visible label, "You".
    expect(alice.locator("article.question .body").last).to_have_text("Say hello\nin one word.")
    assert alice.evaluate("document.activeElement.id") == "question"
    for _ in range(40):
        alice.keyboard.press("Shift+Tab")
        if alice.evaluate("document.activeElement.matches('button.thumb')"):
            break
    alice.keyboard.press("Enter")
    expect(alice.locator(f"#m-{answer_id}")).to_contain_text("Your vote: good")


def axe_violations(page: Page) -> list[dict[str, Any]]:
    page.evaluate(AXE)
    return page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
             .map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))"""
    )


def test_chat_review_and_models_pages_pass_axe_and_are_screenshotted(
    alice: Page, olivia: Page, admin: Page, e2e_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # Open items in the queue, so axe checks (and the screenshot shows) the queue's table, not an empty queue.
    voted_down(e2e_server, "How many vacation days do I get?", "Ten per month.", ["wrong"], "It is 25 a year")
    voted_down(e2e_server, "Where is the VPN guide?", "I cannot help with that.", ["refused", "unhelpful"])
    ask(alice, "How do I read a text file in Python? Show a short code example.")
    wait_for_answer(alice)
    olivia.goto("/ui/review/")
    admin.goto("/ui/admin/models")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, page in [("chat", alice), ("review", olivia), ("models", admin)]:
        found[name] = axe_violations(page)
        page.screenshot(path=SCREENSHOTS / f"{name}.png")
    admin.locator("table.models tbody th a").first.click()
    admin.wait_for_url(re.compile(r"/ui/admin/models/[^/]+$"))
    found["model version"] = axe_violations(admin)
    admin.screenshot(path=SCREENSHOTS / "model-version.png", full_page=True)
    alice.set_viewport_size(PHONE)
    found["chat (phone width)"] = axe_violations(alice)
    alice.screenshot(path=SCREENSHOTS / "chat-phone.png")
    with capsys.disabled():
        for name, violations in found.items():
            print(f"\naxe {name}: {[(v['id'], v['impact']) for v in violations] or 'no violations'}")
    serious = {name: [v for v in found[name] if v["impact"] in ("serious", "critical")] for name in found}
    assert serious == {name: [] for name in found}


ASSET_SIZES = """() => performance.getEntriesByType('resource')
  .filter(r => /\\.(js|css)(\\?|$)/.test(r.name))
  .map(r => ({name: r.name, transfer: r.transferSize, encoded: r.encodedBodySize, decoded: r.decodedBodySize}))"""
PAINTED = "() => performance.getEntriesByType('paint').some(p => p.name === 'first-contentful-paint')"
PAINTS = "() => Object.fromEntries(performance.getEntriesByType('paint').map(p => [p.name, Math.round(p.startTime)]))"


def test_chat_page_weight_and_first_paint(alice: Page, capsys: pytest.CaptureFixture[str]) -> None:
    # Signing in already loaded the script and stylesheet (the sign-in page uses them too), so the cold view is
    # measured with the browser's cache off: every asset comes over the wire.
    devtools = alice.context.new_cdp_session(alice)
    devtools.send("Network.enable")
    devtools.send("Network.setCacheDisabled", {"cacheDisabled": True})
    alice.goto("/ui/chat/", wait_until="load")
    sizes = alice.evaluate(ASSET_SIZES)
    document = alice.evaluate("() => performance.getEntriesByType('navigation')[0].transferSize")
    devtools.send("Network.setCacheDisabled", {"cacheDisabled": False})
    alice.goto("/ui/chat/", wait_until="load")  # fills the cache again
    # The app warm, the assets cached: what an employee sees every time. Paint entries can land after `load`.
    alice.goto("/ui/chat/", wait_until="load")
    alice.wait_for_function(PAINTED)
    paint = alice.evaluate(PAINTS)
    devtools.detach()
    transferred = sum(item["transfer"] for item in sizes)
    encoded = sum(item["encoded"] for item in sizes)
    with capsys.disabled():
        print(f"\nfigure chat_first_paint_ms {paint.get('first-paint')}")
        print(f"figure chat_first_contentful_paint_ms {paint.get('first-contentful-paint')}")
        print(f"figure chat_html_transferred_bytes {document}")
        print(f"figure chat_js_css_transferred_bytes {transferred}")
        print(f"figure chat_js_css_encoded_bytes {encoded}")
        print(f"figure chat_js_css_decoded_bytes {sum(item['decoded'] for item in sizes)}")
    assert {Path(item["name"].split("?")[0]).name for item in sizes} == {"app.js", "app.css"}
    assert 0 < encoded <= transferred < 150_000
    assert "first-contentful-paint" in paint
