"""Votes on answers, regeneration, and deleting a user's data."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, delete, get, post, put
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth.guards import requires_role
from server.chat.regeneration import RegenerationService
from server.db.models import Message, Role
from server.feedback.schemas import DeletedData, RegeneratedAnswer, Vote, VoteInput
from server.feedback.services import AnswerNotFoundError, FeedbackService, UserDataService, UserNotFoundError


def provide_feedback_service(state: State) -> FeedbackService:
    return FeedbackService(state.sessions)


def provide_user_data_service(db_session: AsyncSession) -> UserDataService:
    return UserDataService(db_session)


def provide_regeneration_service(state: State) -> RegenerationService:
    return state.regeneration


def regenerated(message: Message, regenerated_from_id: UUID) -> RegeneratedAnswer:
    return RegeneratedAnswer(
        message_id=message.id,
        regenerated_from_id=regenerated_from_id,
        conversation_id=message.conversation_id,
        reply_to_id=message.reply_to_id,
        status=message.status,
        content=message.content,
        finish_reason=message.finish_reason,
        model_alias=message.model_alias,
        model_version=message.model_version,
        error=message.error,
    )


class FeedbackController(Controller):
    path = "/api/messages/{message_id:uuid}"
    tags = ["feedback"]
    dependencies = {
        "feedback_service": Provide(provide_feedback_service, sync_to_thread=False),
        "regeneration_service": Provide(provide_regeneration_service, sync_to_thread=False),
    }

    @put("/feedback", summary="Vote on an answer (replaces the caller's earlier vote)")
    async def set_vote(
        self, request: Request[Any, Any, Any], message_id: UUID, data: VoteInput, feedback_service: FeedbackService
    ) -> Vote:
        """Thumbs `up` or `down` with optional reasons and comment. One current vote per user and answer; the last
        write wins and every change is kept. 404 if the answer is not the caller's; 400 for any other value."""
        try:
            return await feedback_service.set_vote(request.user, message_id, data.value, data.reasons, data.comment)
        except AnswerNotFoundError as error:
            raise NotFoundException(str(error)) from error

    @delete("/feedback", summary="Withdraw the caller's vote on an answer", status_code=204)
    async def withdraw_vote(
        self, request: Request[Any, Any, Any], message_id: UUID, feedback_service: FeedbackService
    ) -> None:
        try:
            await feedback_service.withdraw_vote(request.user, message_id)
        except AnswerNotFoundError as error:
            raise NotFoundException(str(error)) from error

    @get("/feedback", summary="The caller's current vote on an answer")
    async def get_vote(
        self, request: Request[Any, Any, Any], message_id: UUID, feedback_service: FeedbackService
    ) -> Vote:
        try:
            return await feedback_service.get_vote(request.user, message_id)
        except AnswerNotFoundError as error:
            raise NotFoundException(str(error)) from error

    @post("/regenerate", summary="Generate a new answer to the same context", status_code=201)
    async def regenerate(
        self, request: Request[Any, Any, Any], message_id: UUID, regeneration_service: RegenerationService
    ) -> RegeneratedAnswer:
        """Asks vLLM again with the answer's exact context and stores the result as a sibling linked to it.
        Vote on the new `message_id` like on any answer."""
        return regenerated(await regeneration_service.regenerate(request.user, message_id), message_id)


class UserDataController(Controller):
    path = "/api/users"
    tags = ["privacy"]
    dependencies = {"user_data_service": Provide(provide_user_data_service, sync_to_thread=False)}

    @delete(
        "/me/data",
        summary="Delete all of the caller's conversations, votes and what derives from them",
        status_code=200,
    )
    async def delete_my_data(self, request: Request[Any, Any, Any], user_data_service: UserDataService) -> DeletedData:
        return await user_data_service.delete_user_data(request.user.user_id)

    @delete(
        "/{user_id:uuid}/data",
        summary="Delete a user's conversations, votes and what derives from them (admin)",
        guards=[requires_role(Role.ADMIN)],
        status_code=200,
    )
    async def delete_user_data(self, user_id: UUID, user_data_service: UserDataService) -> DeletedData:
        try:
            return await user_data_service.delete_user_data(user_id)
        except UserNotFoundError as error:
            raise NotFoundException(str(error)) from error
