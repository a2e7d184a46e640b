"""Builds the training-data export: JSONL files in the conversational shapes TRL's trainers read unchanged.

- ``reward.jsonl``      prompt, completion, reward (+1 thumbs-up or correction, -1 thumbs-down): pointwise reward data
- ``kto.jsonl``         prompt, completion, label (bool): ``KTOTrainer``
- ``preference.jsonl``  prompt, chosen, rejected: ``DPOTrainer`` and ``RewardTrainer``; from corrections (correction
                        over original), regenerated siblings with opposite votes, and up/down answers to one prompt
- ``sft.jsonl``         prompt, completion: ``SFTTrainer``; corrections and approved up-voted answers

``prompt`` is the full context the answer was generated from (system prompt and every earlier turn), as a list
of chat messages; completions are one assistant message. Every text is redacted. Rows are ordered by message id
(time-ordered uuid7) so the same store gives byte-identical files and the same content hash.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec
from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from server.db.models import Message, MessageStatus, MessageVote, ReviewDecisionKind, ReviewState, VoteValue
from server.privacy.redaction import redact

FORMAT_VERSION = 1
REWARD, KTO, PREFERENCE, SFT = "reward.jsonl", "kto.jsonl", "preference.jsonl", "sft.jsonl"
FILES = (REWARD, KTO, PREFERENCE, SFT)
MANIFEST = "manifest.json"
# Every filter appears in the manifest, with 0 when it removed nothing.
REMOVAL_FILTERS = (
    "outside_time_window",
    "other_model_version",
    "rejected_in_review",
    "missing_context",
    "incomplete_answer",
    "pairs_over_cap",
)
# Fixed zip timestamps keep the archive itself byte-identical between runs.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

ChatTurns = list[dict[str, str]]


@dataclass(frozen=True, slots=True)
class ExportFilters:
    since: datetime | None = None
    until: datetime | None = None
    model_version: str | None = None
    channel: str | None = None


@dataclass(slots=True)
class TrainingExport:
    files: dict[str, bytes]
    manifest: dict[str, Any]

    @property
    def content_hash(self) -> str:
        return self.manifest["content_hash"]

    def manifest_bytes(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self.manifest, order="sorted"), indent=2) + b"\n"

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, content in [*self.files.items(), (MANIFEST, self.manifest_bytes())]:
            path = directory / name
            path.write_bytes(content)
            paths.append(path)
        return paths

    def zip(self) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in [*self.files.items(), (MANIFEST, self.manifest_bytes())]:
                archive.writestr(zipfile.ZipInfo(name, _ZIP_DATE), content)
        return buffer.getvalue()


@dataclass(slots=True)
class _Answer:
    id: UUID
    reply_to_id: UUID | None
    prompt: ChatTurns
    text: str | None  # None when the answer itself is unusable (failed, cut off by the client, empty)
    vote: str | None
    decision: str | None
    correction: str | None


@dataclass(slots=True)
class _Rows:
    by_file: dict[str, list[tuple[Any, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    sources: Counter[str] = field(default_factory=Counter)

    def add(self, name: str, source: str, sort_key: Any, row: dict[str, Any]) -> None:
        self.by_file[name].append((sort_key, row))
        self.sources[f"{name.removesuffix('.jsonl')}.{source}"] += 1


class _Redactor:
    """Redacts each distinct text once (prompts repeat across answers) and counts what it found."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}
        self.found: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        if text not in self._seen:
            result = redact(text)
            self.found.update(finding.kind for finding in result.findings)
            self._seen[text] = result.text
        return self._seen[text]


def _assistant(text: str) -> ChatTurns:
    return [{"role": "assistant", "content": text}]


class ExportService:
    def __init__(self, session: AsyncSession, max_pairs_per_prompt: int) -> None:
        self._session = session
        self._max_pairs_per_prompt = max_pairs_per_prompt

    async def build(self, filters: ExportFilters) -> TrainingExport:
        removed: Counter[str] = Counter(dict.fromkeys(REMOVAL_FILTERS, 0))
        signal = or_(MessageVote.value.is_not(None), ReviewState.decision.in_([d.value for d in ReviewDecisionKind]))
        base = (
            select(Message.id)
            .outerjoin(MessageVote, MessageVote.message_id == Message.id)
            .outerjoin(ReviewState, ReviewState.message_id == Message.id)
            .where(Message.role == "assistant", signal)
        )
        # The window is on when the answer's feedback last changed, not when the answer was written: a vote
        # cast after a nightly run on an answer from before it belongs to the next run, not to nobody.
        feedback_at = case(
            (ReviewState.updated_at.is_(None), MessageVote.updated_at),
            (MessageVote.updated_at.is_(None), ReviewState.updated_at),
            (MessageVote.updated_at > ReviewState.updated_at, MessageVote.updated_at),
            else_=ReviewState.updated_at,
        )
        # Removal counts, in the order the filters apply; each counts messages the earlier filters let through.
        windowed = base
        if filters.since is not None:
            windowed = windowed.where(feedback_at >= filters.since)
        if filters.until is not None:
            windowed = windowed.where(feedback_at < filters.until)
        versioned = windowed
        if filters.model_version is not None:
            versioned = versioned.where(Message.model_version == filters.model_version)
        channelled = versioned
        if filters.channel is not None:
            channelled = channelled.where(Message.channel == filters.channel)
        counts = [await self._count(query) for query in (base, windowed, versioned, channelled)]
        removed["outside_time_window"] = counts[0] - counts[1]
        removed["other_model_version"] = counts[1] - counts[2]
        removed["other_channel"] = counts[2] - counts[3]

        prompt_state = aliased(ReviewState)
        rows = (
            await self._session.execute(
                select(
                    Message.id,
                    Message.reply_to_id,
                    Message.prompt_messages,
                    Message.content,
                    Message.status,
                    MessageVote.value,
                    ReviewState.decision,
                    ReviewState.trainable,
                    ReviewState.correction,
                    prompt_state.trainable,
                )
                .outerjoin(MessageVote, and_(MessageVote.message_id == Message.id, MessageVote.value.is_not(None)))
                .outerjoin(ReviewState, ReviewState.message_id == Message.id)
                .outerjoin(prompt_state, prompt_state.message_id == Message.reply_to_id)
                .where(Message.id.in_(channelled))
                .order_by(Message.id, MessageVote.user_id)
            )
        ).all()

        scrub = _Redactor()
        answers: list[_Answer] = []
        for mid, reply_to, prompt, content, status, vote, decision, trainable, correction, prompt_ok in rows:
            if trainable is False or prompt_ok is False:
                removed["rejected_in_review"] += 1
                continue
            if not prompt:
                removed["missing_context"] += 1
                continue
            usable = status == MessageStatus.COMPLETE and bool(content.strip())
            if not usable and decision != ReviewDecisionKind.CORRECT:
                removed["incomplete_answer"] += 1
                continue
            answers.append(
                _Answer(
                    id=mid,
                    reply_to_id=reply_to,
                    prompt=[{"role": turn["role"], "content": scrub(turn["content"])} for turn in prompt],
                    text=scrub(content) if usable else None,
                    vote=vote,
                    decision=decision,
                    correction=scrub(correction) if correction else None,
                )
            )

        out = _Rows()
        for answer in answers:
            self._pointwise(answer, out)
        removed["pairs_over_cap"] = self._pairs(answers, out)

        files = {
            name: b"".join(
                msgspec.json.encode(row) + b"\n" for _, row in sorted(out.by_file[name], key=lambda item: item[0])
            )
            for name in FILES
        }
        file_info = {
            name: {"rows": len(out.by_file[name]), "sha256": hashlib.sha256(content).hexdigest()}
            for name, content in files.items()
        }
        content_hash = hashlib.sha256(
            "".join(f"{name}\n{file_info[name]['sha256']}\n" for name in FILES).encode()
        ).hexdigest()
        manifest = {
            "format_version": FORMAT_VERSION,
            "filters": {
                "since": filters.since.isoformat() if filters.since else None,
                "until": filters.until.isoformat() if filters.until else None,
                "model_version": filters.model_version,
                "channel": filters.channel,
            },
            "files": file_info,
            "rows_by_source": dict(sorted(out.sources.items())),
            "answers_considered": counts[0],
            "answers_used": len(answers),
            "removed": {key: removed[key] for key in sorted(removed)},
            "redactions": dict(sorted(scrub.found.items())),
            "content_hash": content_hash,
        }
        return TrainingExport(files, manifest)

    async def _count(self, query: Any) -> int:
        return await self._session.scalar(select(func.count()).select_from(query.distinct().subquery())) or 0

    def _pointwise(self, answer: _Answer, out: _Rows) -> None:
        key = (str(answer.id), 0)
        if answer.text is not None and answer.vote is not None:
            up = answer.vote == VoteValue.UP
            completion = _assistant(answer.text)
            source = "thumbs_up" if up else "thumbs_down"
            out.add(
                REWARD, source, key, {"prompt": answer.prompt, "completion": completion, "reward": 1.0 if up else -1.0}
            )
            out.add(KTO, source, key, {"prompt": answer.prompt, "completion": completion, "label": up})
            if up and answer.decision == ReviewDecisionKind.APPROVE:
                out.add(SFT, "approved_thumbs_up", key, {"prompt": answer.prompt, "completion": completion})
        if answer.decision == ReviewDecisionKind.CORRECT and answer.correction:
            fixed = _assistant(answer.correction)
            key = (str(answer.id), 1)
            out.add(REWARD, "correction", key, {"prompt": answer.prompt, "completion": fixed, "reward": 1.0})
            out.add(KTO, "correction", key, {"prompt": answer.prompt, "completion": fixed, "label": True})
            out.add(SFT, "correction", key, {"prompt": answer.prompt, "completion": fixed})
            if answer.text is not None and answer.text != answer.correction:
                out.add(
                    PREFERENCE,
                    "correction",
                    (0, str(answer.id), ""),
                    {"prompt": answer.prompt, "chosen": fixed, "rejected": _assistant(answer.text)},
                )

    def _pairs(self, answers: list[_Answer], out: _Rows) -> int:
        """Up-voted over down-voted answers to the identical (redacted) context; returns the pairs dropped by the
        per-prompt cap, which keeps one popular prompt from swamping the file."""
        groups: dict[bytes, tuple[list[_Answer], list[_Answer]]] = defaultdict(lambda: ([], []))
        for answer in answers:
            if answer.text is None or answer.vote is None:
                continue
            ups, downs = groups[msgspec.json.encode(answer.prompt)]
            (ups if answer.vote == VoteValue.UP else downs).append(answer)
        dropped = 0
        for ups, downs in groups.values():
            pairs = [(up, down) for up in ups for down in downs if up.text != down.text]
            dropped += max(0, len(pairs) - self._max_pairs_per_prompt)
            for up, down in pairs[: self._max_pairs_per_prompt]:
                # Siblings answer the same stored question: that is a regeneration the user judged against the first.
                source = "regeneration" if up.reply_to_id == down.reply_to_id else "same_prompt"
                out.add(
                    PREFERENCE,
                    source,
                    (1, str(up.id), str(down.id)),
                    {"prompt": up.prompt, "chosen": _assistant(up.text or ""), "rejected": _assistant(down.text or "")},
                )
        return dropped
