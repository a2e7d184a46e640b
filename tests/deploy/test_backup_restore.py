"""scripts/backup.py on SQLite and PostgreSQL: back up, write more, restore -> the store and the artefacts are as
they were at the backup."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from server.db.migrate import upgrade
from tests.conftest import scratch_postgres_database
from tests.live_server import ratchet

REPO = Path(__file__).resolve().parents[2]
BACKUP = [sys.executable, str(REPO / "scripts" / "backup.py")]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of an install: a migrated database of its own and a data directory."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{data_dir / 'ratchet.db'}"
        upgrade(url)
        yield _env(data_dir, url)
        return
    with scratch_postgres_database("ratchet_backup") as url:
        upgrade(url)
        yield _env(data_dir, url)


def _env(data_dir: Path, url: str) -> dict[str, str]:
    return {**os.environ, "RATCHET_DATA_DIR": str(data_dir), "RATCHET_DATABASE_URL": url, "PYTHONPATH": str(REPO)}


def _snapshot(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, the migration table included, in a stable order."""

    async def read() -> dict[str, list[tuple[object, ...]]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                metadata = MetaData()
                await connection.run_sync(metadata.reflect)
                # Raw rows, without the column types' conversions: the bytes as stored are what must come back.
                return {
                    name: sorted(
                        (tuple(row) for row in (await connection.exec_driver_sql(f'SELECT * FROM "{name}"')).all()),
                        key=repr,
                    )
                    for name in metadata.tables
                }
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _files(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _run_backup(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([*BACKUP, *args], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_restore_brings_back_the_store_and_artefacts_as_they_were_at_the_backup(
    store: dict[str, str], tmp_path: Path
) -> None:
    url, data_dir = store["RATCHET_DATABASE_URL"], Path(store["RATCHET_DATA_DIR"])
    ratchet(store, "users", "create", "alice")
    ratchet(store, "users", "create", "olivia", "--role", "ops")
    adapters = data_dir / "models" / "lora-v1"
    adapters.mkdir(parents=True)
    (adapters / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    base = data_dir / "models" / "smollm2-135m-instruct"
    base.mkdir()
    (base / "config.json").write_text('{"base": 1}')
    (data_dir / "tuning" / "run-1").mkdir(parents=True)
    (data_dir / "tuning" / "run-1" / "run.json").write_text('{"status": "succeeded"}')
    rows_at_backup = _snapshot(url)
    artefacts_at_backup = {name: _files(data_dir / name) for name in ("models", "tuning")}
    archive = tmp_path / "backups" / "ratchet.tar.gz"

    _run_backup(store, "backup", str(archive))

    ratchet(store, "users", "create", "mallory", "--role", "admin")
    (data_dir / "models" / "lora-v2").mkdir()
    (data_dir / "models" / "lora-v2" / "adapter_model.safetensors").write_bytes(b"newer")
    (data_dir / "tuning" / "run-1" / "run.json").write_text('{"status": "failed"}')
    assert _snapshot(url) != rows_at_backup

    output = _run_backup(store, "restore", str(archive))

    assert _snapshot(url) == rows_at_backup
    assert {name: _files(data_dir / name) for name in ("models", "tuning")} == artefacts_at_backup
    # What the restore replaced is kept aside, not deleted.
    aside = next(data_dir.glob("pre-restore-*"))
    assert (aside / "models" / "lora-v2" / "adapter_model.safetensors").read_bytes() == b"newer"
    assert str(aside) in output


def test_the_base_checkpoint_stays_out_of_the_archive_unless_asked(store: dict[str, str], tmp_path: Path) -> None:
    import tarfile

    data_dir = Path(store["RATCHET_DATA_DIR"])
    (data_dir / "models" / "smollm2-135m-instruct").mkdir(parents=True)
    (data_dir / "models" / "smollm2-135m-instruct" / "model.safetensors").write_bytes(b"weights")
    (data_dir / "models" / "lora-v1").mkdir()
    (data_dir / "models" / "lora-v1" / "adapter_config.json").write_text("{}")

    _run_backup(store, "backup", str(tmp_path / "small.tar.gz"))
    _run_backup(store, "backup", "--with-base-model", str(tmp_path / "full.tar.gz"))

    with tarfile.open(tmp_path / "small.tar.gz") as tar:
        small = set(tar.getnames())
    with tarfile.open(tmp_path / "full.tar.gz") as tar:
        full = set(tar.getnames())
    assert "artefacts/models/lora-v1/adapter_config.json" in small
    assert not any("smollm2-135m-instruct" in name for name in small)
    assert "artefacts/models/smollm2-135m-instruct/model.safetensors" in full


def test_restore_refuses_an_archive_of_another_database_kind_and_changes_nothing(tmp_path: Path) -> None:
    sqlite_dir = tmp_path / "sqlite"
    sqlite_dir.mkdir()
    sqlite_env = _env(sqlite_dir, f"sqlite+aiosqlite:///{sqlite_dir / 'ratchet.db'}")
    upgrade(sqlite_env["RATCHET_DATABASE_URL"])
    _run_backup(sqlite_env, "backup", str(tmp_path / "sqlite.tar.gz"))
    with scratch_postgres_database("ratchet_backup") as url:
        upgrade(url)
        pg_env = _env(tmp_path, url)
        ratchet(pg_env, "users", "create", "alice")
        before = _snapshot(url)

        result = subprocess.run(
            [*BACKUP, "restore", str(tmp_path / "sqlite.tar.gz")], env=pg_env, capture_output=True, text=True
        )

        assert result.returncode != 0
        assert "holds a sqlite database" in result.stderr
        assert _snapshot(url) == before
