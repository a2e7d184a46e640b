// Ratchet web UI: progressive enhancement only. Every form also works without this script.
// Streams answers (server-sent events over a POST), stops them, swaps re-rendered answers in place,
// adds copy buttons and the review desk's keyboard shortcuts. Model and user text only ever reach the
// page as textContent or as HTML the server sanitised.
"use strict";

const announcer = () => document.getElementById("announcer");

function announce(text) {
  const region = announcer();
  if (!region) return;
  region.textContent = "";
  window.setTimeout(() => { region.textContent = text; }, 50);
}

function fragmentFrom(html) {
  const template = document.createElement("template");
  template.innerHTML = html.trim();
  return template.content.firstElementChild;
}

function formBody(form, submitter) {
  return new URLSearchParams(new FormData(form, submitter));
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.detail || `Error ${response.status}`;
  } catch {
    return `Error ${response.status}`;
  }
}

// ---- answers: copy, regenerate and votes swapped in place ----

function enhanceAnswer(root) {
  root.querySelectorAll("button.copy[data-copy]").forEach((button) => {
    button.hidden = false;
    button.addEventListener("click", () => {
      const body = document.getElementById(button.dataset.copy).querySelector(".body");
      copyText(body.innerText, button);
    });
  });
  root.querySelectorAll(".answer .body pre").forEach((pre) => {
    if (pre.querySelector(".copy-code")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "copy-code";
    button.textContent = "Copy code";
    button.addEventListener("click", () => copyText(pre.querySelector("code")?.innerText ?? pre.innerText, button));
    pre.appendChild(button);
  });
  root.querySelectorAll("form[data-fragment]").forEach((form) => form.addEventListener("submit", submitFragment));
}

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    announce("Copied");
    const label = button.textContent;
    button.textContent = "Copied";
    window.setTimeout(() => { button.textContent = label; }, 1500);
  } catch {
    announce("Copying is not allowed here; select the text instead.");
  }
}

async function submitFragment(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const submitter = event.submitter;
  const target = document.getElementById(form.dataset.fragment);
  // Read the form before disabling its buttons: a disabled submitter is left out of FormData, and the vote's
  // `value` is the button that was pressed.
  const body = formBody(form, submitter);
  const buttons = form.querySelectorAll("button");
  buttons.forEach((button) => { button.disabled = true; });
  if (form.dataset.busy) announce(form.dataset.busy);
  try {
    const response = await fetch(form.action, {
      method: "POST",
      body,
      headers: { "x-ratchet-fetch": "1" },
    });
    if (!response.ok) {
      announce(await errorMessage(response));
      buttons.forEach((button) => { button.disabled = false; });
      return;
    }
    const replacement = fragmentFrom(await response.text());
    target.replaceWith(replacement);
    enhanceAnswer(replacement);
    const again = submitter && replacement.querySelector(`button[name="${submitter.name}"][value="${submitter.value}"]`);
    (again || replacement.querySelector(".thumb") || replacement).focus();
    announce(form.classList.contains("vote") || submitter?.name === "value" ? "Vote saved" : "New answer ready");
  } catch {
    announce("The server could not be reached; try again.");
    buttons.forEach((button) => { button.disabled = false; });
  }
}

// ---- the composer: streamed answers ----

function parseEvents(buffer, onEvent) {
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    let name = "message";
    const data = [];
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (data.length) onEvent(name, JSON.parse(data.join("\n")));
  }
  return rest;
}

function setupComposer(form) {
  const textarea = form.querySelector("textarea[name=question]");
  const send = form.querySelector("#send");
  const stop = form.querySelector("#stop");
  const errorBox = form.querySelector("#composer-error");
  const thread = document.getElementById("thread");
  let controller = null;

  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", () => { if (controller) controller.abort(); });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const question = textarea.value.trim();
    if (!question || controller) return;
    errorBox.hidden = true;
    const body = formBody(form);
    document.getElementById("empty-thread")?.remove();
    const asked = document.createElement("article");
    asked.className = "msg question";
    asked.innerHTML = '<div class="who">You</div><div class="body plain"></div>';
    asked.querySelector(".body").textContent = question;
    const answer = document.createElement("article");
    answer.className = "msg answer streaming";
    answer.tabIndex = -1;
    answer.innerHTML = '<div class="who">Ratchet</div><div class="body plain" aria-live="polite" aria-busy="true"></div>';
    const answerBody = answer.querySelector(".body");
    answerBody.textContent = "…";
    thread.append(asked, answer);
    textarea.value = "";
    controller = new AbortController();
    send.disabled = true;
    stop.hidden = false;
    let text = "";
    let finished = false;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body,
        headers: { accept: "text/event-stream", "x-ratchet-fetch": "1" },
        signal: controller.signal,
      });
      if (!response.ok) {
        asked.remove();
        answer.remove();
        textarea.value = question;
        showError(errorBox, await errorMessage(response), form);
        return;
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer = parseEvents(buffer + value, (name, data) => {
          if (name === "turn") {
            adoptConversation(form, data);
            answer.id = `m-${data.message_id}`;
          } else if (name === "delta") {
            text += data.text;
            answerBody.textContent = text;
          } else if (name === "done" || name === "failed") {
            finished = true;
            const rendered = fragmentFrom(data.html);
            answer.replaceWith(rendered);
            enhanceAnswer(rendered);
            announce(name === "done" ? "Answer complete" : "The answer could not be finished");
          }
        });
      }
      if (!finished) markStopped(answer, answerBody, "The connection ended before the answer did; reload to see what was kept.");
    } catch (error) {
      if (error.name === "AbortError") markStopped(answer, answerBody, "Stopped. What was written so far is kept.");
      else if (!finished) markStopped(answer, answerBody, "The connection was lost; reload to see what was kept.");
    } finally {
      controller = null;
      send.disabled = false;
      stop.hidden = true;
      textarea.focus();
    }
  });
}

function markStopped(answer, body, message) {
  body.setAttribute("aria-busy", "false");
  answer.classList.remove("streaming");
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = message;
  answer.append(note);
  announce(message);
}

function showError(box, message, form) {
  box.textContent = "";
  const text = document.createElement("span");
  text.textContent = `${message} `;
  const retry = document.createElement("button");
  retry.type = "button";
  retry.textContent = "Try again";
  retry.addEventListener("click", () => form.requestSubmit());
  box.append(text, retry);
  box.hidden = false;
}

function adoptConversation(form, data) {
  const field = form.querySelector("input[name=conversation_id]");
  if (field.value === data.conversation_id) return;
  field.value = data.conversation_id;
  window.history.replaceState(null, "", data.url);
  // Titled as the server titles a new conversation: its first question.
  const title = form.querySelector("textarea[name=question]").dataset.lastQuestion || "New conversation";
  const heading = document.getElementById("conversation-title");
  if (heading) heading.textContent = title;
  document.title = `${title} · Ratchet`;
  const list = document.getElementById("conversation-list");
  if (!list) return;
  list.querySelector("li.muted")?.remove();
  list.querySelectorAll("a[aria-current]").forEach((link) => link.removeAttribute("aria-current"));
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = data.url;
  link.setAttribute("aria-current", "page");
  link.textContent = title;
  item.append(link);
  list.prepend(item);
}

// ---- the review desk: keyboard shortcuts ----

function typing(event) {
  const element = event.target;
  return element.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(element.tagName);
}

function setupReviewShortcuts() {
  const decide = document.getElementById("decide");
  const rows = [...document.querySelectorAll("[data-keyboard-list] tbody tr")];
  let selected = -1;
  const select = (index) => {
    if (!rows.length) return;
    selected = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach((row, i) => row.classList.toggle("selected", i === selected));
    rows[selected].querySelector("a").focus();
  };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "Escape" && typing(event)) {
      event.target.blur();
      return;
    }
    if (typing(event)) return;
    if (decide) {
      const target = decide.querySelector(`[data-shortcut="${event.key}"]`);
      if (!target) return;
      event.preventDefault();
      if (target.tagName === "BUTTON") decide.requestSubmit(target);
      else target.focus();
    } else if (rows.length && (event.key === "j" || event.key === "k")) {
      event.preventDefault();
      select(selected + (event.key === "j" ? 1 : -1));
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  enhanceAnswer(document);
  const composer = document.getElementById("composer");
  if (composer) {
    const textarea = composer.querySelector("textarea[name=question]");
    composer.addEventListener("submit", () => { textarea.dataset.lastQuestion = textarea.value.trim().slice(0, 80); }, { capture: true });
    setupComposer(composer);
  }
  setupReviewShortcuts();
});
