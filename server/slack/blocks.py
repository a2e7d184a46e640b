"""Block Kit for the bot: the feedback buttons under each answer and the thumbs-down modal."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from server.db.models import VoteReason

FEEDBACK_ACTION = "ratchet_feedback"
DOWN_MODAL = "ratchet_downvote"
_REASON_LABELS = {
    VoteReason.WRONG: "Wrong",
    VoteReason.UNHELPFUL: "Unhelpful",
    VoteReason.UNSAFE: "Unsafe",
    VoteReason.OFF_TOPIC: "Off topic",
    VoteReason.TOO_LONG: "Too long",
    VoteReason.TOO_SHORT: "Too short",
    VoteReason.REFUSED: "Refused needlessly",
    VoteReason.OTHER: "Other",
}


def feedback_blocks(message_id: UUID) -> list[dict[str, Any]]:
    """Slack's feedback buttons element; each button's value names the answer and the vote."""
    return [
        {
            "type": "context_actions",
            "elements": [
                {
                    "type": "feedback_buttons",
                    "action_id": FEEDBACK_ACTION,
                    "positive_button": {
                        "text": {"type": "plain_text", "text": "Good answer"},
                        "value": f"up:{message_id}",
                    },
                    "negative_button": {
                        "text": {"type": "plain_text", "text": "Bad answer"},
                        "value": f"down:{message_id}",
                    },
                }
            ],
        }
    ]


def answer_blocks(text: str, message_id: UUID) -> list[dict[str, Any]]:
    """A whole answer as posted in one go (or re-delivered): the text, then the feedback buttons."""
    return [{"type": "markdown", "text": text or " "}, *feedback_blocks(message_id)]


def downvote_modal(message_id: UUID) -> dict[str, Any]:
    options = [
        {"text": {"type": "plain_text", "text": label}, "value": reason.value}
        for reason, label in _REASON_LABELS.items()
    ]
    return {
        "type": "modal",
        "callback_id": DOWN_MODAL,
        "private_metadata": json.dumps({"message_id": str(message_id)}),
        "title": {"type": "plain_text", "text": "What went wrong?"},
        "submit": {"type": "plain_text", "text": "Send"},
        "close": {"type": "plain_text", "text": "Skip"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {"type": "static_select", "action_id": "value", "options": options},
            },
            {
                "type": "input",
                "block_id": "comment",
                "optional": True,
                "label": {"type": "plain_text", "text": "Comment"},
                "element": {"type": "plain_text_input", "action_id": "value", "multiline": True, "max_length": 2000},
            },
        ],
    }
