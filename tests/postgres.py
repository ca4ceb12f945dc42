"""A throwaway PostgreSQL cluster for tests: Debian's `postgresql` package, started here.

`initdb` and `pg_ctl` are looked up on the PATH, then in /usr/lib/postgresql/<version>/bin
(where Debian puts them). As root they run as the `postgres` user (the server refuses to run
as root). The cluster lives in a temp dir, listens on 127.0.0.1 on a free port with trust
auth, runs with fsync off, and is stopped and deleted at the end of the session.

Without the binaries the tests that need them skip, except in CI (`CI=true`), where `.ci/run`
(via `make test` → `system-deps`) installs the package: there a missing binary fails the run,
so a PostgreSQL test can never pass by skipping.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import free_port

SUPERUSER = "toolstudio"


def postgres_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True)
    return versions[0].parent if versions else None


@dataclass
class PostgresCluster:
    bin_dir: Path
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="toolstudio-pg-")))
    port: int = 0
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *argv: str, timeout: float = 120) -> None:
        user = "postgres" if os.geteuid() == 0 else None
        done = subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]],
            user=user,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stdout}\n{done.stderr}")

    def start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-sync")
        self.port = free_port()
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or restart) the server of this cluster, on its port."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w", "start")

    def stop_server(self) -> None:
        """Stop the server at once (as a crash would), keeping the cluster's files."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database on this cluster; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bin_dir = postgres_bin()
    missing = None if bin_dir is not None else "PostgreSQL is not installed (apt-get install postgresql)"
    if importlib.util.find_spec("psycopg_pool") is None:
        missing = "psycopg is not installed (pip install -e '.[postgres]')"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}, but CI must run the PostgreSQL tests (`make test` installs both)")
        pytest.skip(f"{missing}; `make test` installs it")
    assert bin_dir is not None
    cluster = PostgresCluster(bin_dir).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """The URL of a fresh, empty database (one per test)."""
    return postgres_cluster.new_database()
