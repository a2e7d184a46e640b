"""The web UI's pages, one controller per area; each checks the role it needs on the server."""

from server.ui.controllers.admin import AdminController
from server.ui.controllers.chat import AnswerController, ChatPageController
from server.ui.controllers.review import ReviewDeskController
from server.ui.controllers.session import AccountController, SessionController

CONTROLLERS = [
    SessionController,
    AccountController,
    ChatPageController,
    AnswerController,
    ReviewDeskController,
    AdminController,
]
