"""The chat domain's errors; the app maps their bases to HTTP (server/errors.py)."""

from __future__ import annotations

from server.exceptions import InvalidInputError, NotFoundError


class ConversationNotFoundError(NotFoundError):
    """No such conversation or answer among the caller's own (other users' look the same as missing ones)."""

    code = "conversation_not_found"


class InvalidChatError(InvalidInputError):
    """Messages the chat path cannot answer (the last one not the user's, empty, or a refused question)."""

    code = "invalid_messages"
