"""Back up and restore Ratchet's store and the model registry's artefacts, as one archive.

    python scripts/backup.py backup  /backups/ratchet-$(date +%F).tar.gz
    python scripts/backup.py restore /backups/ratchet-2026-12-01.tar.gz

Run it with the app's environment (the same RATCHET_* settings, e.g. `set -a; . /etc/ratchet/ratchet.env;
. /etc/ratchet/secrets.env`, or `docker compose run --rm app python /app/...`): it reads the database URL and data
directory through Ratchet's own settings. The archive holds
  * the database: SQLite through its online backup API (a consistent copy while the app runs), PostgreSQL as
    `pg_dump --clean --if-exists` SQL, restored with `psql` in a single transaction;
  * the artefacts under the data directory (ARTEFACT_DIRS: the models and adapters vLLM serves, the nightly
    job's runs), except the base checkpoint unless --with-base-model (it is re-made by `ratchet model prepare`
    or copied in again);
  * manifest.json: when, which migration revision, which database kind.
Restore puts everything back as it was at the backup: stop the app and the nightly job first. Artefact folders it
replaces are moved aside to <data dir>/pre-restore-<time>/, never deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.db.migrate import current
from server.settings import Settings

ARTEFACT_DIRS = ("models", "tuning")
FORMAT_VERSION = 1


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """SQLAlchemy's `postgresql+asyncpg://` URL as the `postgresql://` one pg_dump and psql take, with the password
    moved into their environment (PGPASSWORD) so that it never shows in the process list."""
    parts = urlsplit(database_url)
    netloc = parts.netloc
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    return urlunsplit(("postgresql", netloc, parts.path, parts.query, parts.fragment)), env


def _sqlite_path(database_url: str) -> Path:
    return Path(database_url.split(":///", 1)[1])


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def _kind(database_url: str) -> str:
    if database_url.startswith("sqlite"):
        return "sqlite"
    if database_url.startswith("postgresql"):
        return "postgresql"
    raise SystemExit(f"unsupported database URL scheme: {database_url.split(':', 1)[0]}")


def backup(settings: Settings, archive: Path, with_base_model: bool) -> None:
    url = settings.resolved_database_url
    kind = _kind(url)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        if kind == "sqlite":
            source = sqlite3.connect(_sqlite_path(url))
            target = sqlite3.connect(work / "database.sqlite")
            with target:
                source.backup(target)
            source.close()
            target.close()
            database_file = "database.sqlite"
        else:
            database_file = "database.sql"
            libpq_url, env = _libpq(url)
            dump = ["pg_dump", "--clean", "--if-exists", "--no-owner", "--file", str(work / database_file)]
            _run([*dump, libpq_url], env)
        skipped = [] if with_base_model else [f"models/{settings.base_model_name}"]
        manifest = {
            "format": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "database": kind,
            "database_file": database_file,
            "revision": current(url),
            "artefacts": [name for name in ARTEFACT_DIRS if (settings.data_dir / name).is_dir()],
            "skipped": skipped,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            tar.add(work / "manifest.json", "manifest.json")
            tar.add(work / database_file, database_file)
            for name in manifest["artefacts"]:
                tar.add(
                    settings.data_dir / name,
                    f"artefacts/{name}",
                    filter=lambda info: None if _is_skipped(info.name, skipped) else info,
                )
        partial.replace(archive)  # a half-written archive never looks like a backup
    print(f"backed up {kind} at revision {manifest['revision'] or '(none)'} and {manifest['artefacts']} to {archive}")


def _is_skipped(member: str, skipped: list[str]) -> bool:
    relative = member.removeprefix("artefacts/")
    return any(relative == prefix or relative.startswith(prefix + "/") for prefix in skipped)


def restore(settings: Settings, archive: Path) -> None:
    url = settings.resolved_database_url
    kind = _kind(url)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(work, filter="data")
        manifest = json.loads((work / "manifest.json").read_text())
        if manifest["format"] != FORMAT_VERSION:
            raise SystemExit(f"archive format {manifest['format']} is not {FORMAT_VERSION}")
        if manifest["database"] != kind:
            raise SystemExit(f"the archive holds a {manifest['database']} database; this install uses {kind}")
        database_file = work / manifest["database_file"]
        if kind == "sqlite":
            target_path = _sqlite_path(url)
            target_path.parent.mkdir(parents=True, exist_ok=True)
            source = sqlite3.connect(database_file)
            target = sqlite3.connect(target_path)
            with target:
                source.backup(target)
            source.close()
            target.close()
        else:
            libpq_url, env = _libpq(url)
            _run(["psql", "--quiet", "--no-psqlrc", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                  "--file", str(database_file), libpq_url], env)  # fmt: skip
        moved_aside = _restore_artefacts(settings.data_dir, work / "artefacts", manifest)
    print(f"restored {kind} to revision {manifest['revision'] or '(none)'} from the backup of {manifest['created']}")
    if moved_aside:
        print(f"artefacts that were there before: {moved_aside}")


def _restore_artefacts(data_dir: Path, extracted: Path, manifest: dict[str, object]) -> Path | None:
    aside = data_dir / time.strftime("pre-restore-%Y%m%dT%H%M%S")
    skipped = list(manifest["skipped"])  # type: ignore[call-overload]
    moved = False
    for name in ARTEFACT_DIRS:
        live = data_dir / name
        if live.exists():
            aside.mkdir(parents=True, exist_ok=True)
            live.rename(aside / name)
            moved = True
        if (extracted / name).is_dir():
            shutil.copytree(extracted / name, live)
        # Folders the backup left out on purpose (the base checkpoint) stay where they were.
        for prefix in skipped:
            top, _, rest = prefix.partition("/")
            kept = aside / top / rest
            if top == name and kept.exists():
                live.mkdir(parents=True, exist_ok=True)
                kept.rename(live / rest)
    return aside if moved else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    backup_parser = commands.add_parser("backup", help="write the store and artefacts to ARCHIVE (.tar.gz)")
    backup_parser.add_argument("archive", type=Path)
    backup_parser.add_argument("--with-base-model", action="store_true", help="include the base checkpoint too")
    restore_parser = commands.add_parser("restore", help="put the store and artefacts back as they were in ARCHIVE")
    restore_parser.add_argument("archive", type=Path)
    args = parser.parse_args()
    settings = Settings()
    if args.command == "backup":
        backup(settings, args.archive, args.with_base_model)
    else:
        restore(settings, args.archive)


if __name__ == "__main__":
    main()
