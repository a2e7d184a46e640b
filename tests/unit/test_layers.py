"""The layers import one way (docs/architecture.md): a check over the source tree's imports, and proof that the
check flags a file that breaks each rule."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "tuning")
DATABASE = ("server.db", "sqlalchemy", "advanced_alchemy", "alembic", "asyncpg", "aiosqlite")
# What server/db/ may use of the rest of server/: configuration and the exception bases, never a domain.
DB_MAY_IMPORT = ("server.db", "server.settings", "server.exceptions")


def within(module: str, *packages: str) -> bool:
    return any(module == package or module.startswith(f"{package}.") for package in packages)


def is_controllers(module: str) -> bool:
    return within(module, "server") and module.rsplit(".", 1)[-1] == "controllers"


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    applies_to: Callable[[str], bool]
    forbids: Callable[[str], bool]


RULES = [
    Rule(
        "server/ imports tuning/ only from its CLI (server/cli.py)",
        lambda importer: within(importer, "server") and importer != "server.cli",
        lambda imported: within(imported, "tuning"),
    ),
    Rule(
        "server/db/ imports no domain",
        lambda importer: within(importer, "server.db"),
        lambda imported: within(imported, "server") and not within(imported, *DB_MAY_IMPORT),
    ),
    Rule(
        "server/engine/ is transport only: it never touches the database",
        lambda importer: within(importer, "server.engine"),
        lambda imported: within(imported, *DATABASE),
    ),
    Rule(
        "controllers are imported only by the app factory and other controllers (services never import them)",
        lambda importer: importer != "server.app" and not is_controllers(importer),
        is_controllers,
    ),
]


@dataclass(frozen=True, slots=True)
class Import:
    importer: str
    # `from a import b` may name the module `a.b` or a name in `a`: both are candidates.
    candidates: tuple[str, ...]
    path: Path
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> Iterator[Import]:
    """Every import statement in the file, lazy ones inside functions included."""
    importer = module_name(path, root)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(importer, (alias.name,), path, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = tuple(f"{base}.{alias.name}" for alias in node.names)
            yield Import(importer, (base, *names), path, node.lineno)


def all_imports(root: Path) -> list[Import]:
    return [
        found
        for package in PACKAGES
        if (root / package).is_dir()
        for path in sorted((root / package).rglob("*.py"))
        for found in imports_of(path, root)
    ]


def violations(root: Path) -> list[str]:
    return [
        f"{found.path.relative_to(root)}:{found.line} imports {found.candidates[0]}: breaks '{rule.name}'"
        for found in all_imports(root)
        for rule in RULES
        if rule.applies_to(found.importer) and any(map(rule.forbids, found.candidates))
    ]


def test_the_source_tree_imports_one_way() -> None:
    assert violations(ROOT) == []


def test_the_check_reads_the_real_tree() -> None:
    # A check that parsed nothing would pass anything.
    edges = {(found.importer, candidate) for found in all_imports(ROOT) for candidate in found.candidates}
    assert ("server.app", "server.errors") in edges
    assert ("server.cli", "tuning.cli") in edges
    assert len({importer for importer, _ in edges}) > 50


def write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


@pytest.mark.parametrize(
    ("relative", "source", "broken_rule"),
    [
        ("server/chat/services.py", "from tuning.train import train\n", RULES[0]),
        ("server/feedback/cli.py", "def run() -> None:\n    import tuning.nightly\n", RULES[0]),
        ("server/db/models/chat.py", "from server.chat.services import ChatService\n", RULES[1]),
        ("server/db/engine.py", "from server import feedback\n", RULES[1]),
        ("server/engine/client.py", "from sqlalchemy import select\n", RULES[2]),
        ("server/engine/launcher.py", "from server.db.models import ModelVersion\n", RULES[2]),
        ("server/review/services.py", "from server.review.controllers import ReviewController\n", RULES[3]),
        ("server/chat/turns.py", "from server.chat import controllers\n", RULES[3]),
        ("server/chat/services.py", "from .controllers import ChatController\n", RULES[3]),
    ],
)
def test_the_check_flags_a_file_that_breaks_a_rule(
    tmp_path: Path, relative: str, source: str, broken_rule: Rule
) -> None:
    write(tmp_path, relative, source)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(relative) and broken_rule.name in found[0]


def test_the_check_lets_the_allowed_imports_through(tmp_path: Path) -> None:
    write(tmp_path, "server/cli.py", "from tuning.cli import tune\n")
    write(tmp_path, "server/app.py", "from server.chat.controllers import ChatController\n")
    write(tmp_path, "server/ui/controllers.py", "from server.chat.controllers import provide_chat_service\n")
    write(tmp_path, "server/db/engine.py", "from sqlalchemy import event\nfrom server.settings import Settings\n")
    write(tmp_path, "server/engine/client.py", "import httpx\nfrom server.exceptions import UnavailableError\n")
    write(tmp_path, "server/chat/services.py", "from server.db.models import Message\n")
    write(tmp_path, "tuning/data.py", "from server.exports.services import ExportService\n")
    assert violations(tmp_path) == []
