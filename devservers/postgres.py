"""A throwaway PostgreSQL server.

``start_postgres()`` creates a fresh cluster in a temporary directory, starts it on a free
port of 127.0.0.1 with durability switched off (fast, and nothing in it is worth keeping)
and returns a :class:`PostgresServer` whose ``url`` can be handed to ``create_async_engine``.

The server binaries come from Debian's ``postgresql`` package.  When they are missing and
we run as root (a fresh CI machine) the package is installed with apt-get.  PostgreSQL
refuses to run as root, so in that case every server command runs as the ``postgres``
user through ``runuser``.

Run ``python -m devservers postgres`` to get a server for manual debugging; it prints the URL
and keeps the server up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import pathlib
import re
import shlex
import shutil
from collections.abc import Sequence

from . import base

__all__ = ["PostgresServer", "start_postgres"]

_DEBIAN_ROOT = pathlib.Path("/usr/lib/postgresql")
_SERVER_USER = "postgres"
_POSTGRESQL = base.Product(
    name="PostgreSQL",
    package="postgresql",
    binaries="initdb, pg_ctl",
    where=f"under {_DEBIAN_ROOT}/*/bin or on PATH",
    opt_out="set HISTORY_TEST_DATABASES=sqlite",
    user=_SERVER_USER,
    prefix="history-pg-",
)


def _version_key(path: pathlib.Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.name)) or (0,)


def _find_bindir() -> pathlib.Path | None:
    """Directory holding ``initdb`` and ``pg_ctl``, newest Debian version first."""
    if _DEBIAN_ROOT.is_dir():
        # Debian keeps the server binaries off PATH (only client wrappers live there), so
        # its per-version directories are the authoritative place to look.
        for version_dir in sorted(_DEBIAN_ROOT.iterdir(), key=_version_key, reverse=True):
            bindir = version_dir / "bin"
            if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
                return bindir
    initdb = shutil.which("initdb")
    if initdb is not None:
        # Resolve symlinks so that pg_ctl is taken from the same installation.
        bindir = pathlib.Path(initdb).resolve().parent
        if (bindir / "pg_ctl").is_file():
            return bindir
    return None


def _stop_cluster(as_user: Sequence[str], pg_ctl: pathlib.Path, datadir: pathlib.Path) -> None:
    # Immediate mode: nothing in the cluster is worth a shutdown checkpoint.
    argv = [*as_user, str(pg_ctl), "-D", str(datadir), "-m", "immediate", "-w", "stop"]
    base.run(argv, cwd=datadir.parent)


class PostgresServer(base.Server):
    """A running throwaway PostgreSQL server.

    Attributes:
        url: SQLAlchemy async URL of the ``postgres`` database, e.g.
            ``postgresql+asyncpg://postgres@127.0.0.1:54321/postgres``.
        dsn: The same address as a plain libpq URL, for ``asyncpg.connect()``.
    """

    dsn: str

    def __init__(
        self, *, port: int, pg_ctl: pathlib.Path, basedir: pathlib.Path, as_user: Sequence[str]
    ) -> None:
        super().__init__(port=port, basedir=basedir)
        self.dsn = f"postgresql://{_SERVER_USER}@{self.host}:{port}/postgres"
        self.url = f"postgresql+asyncpg://{_SERVER_USER}@{self.host}:{port}/postgres"
        self._pg_ctl = pg_ctl
        self._as_user = list(as_user)

    def _shutdown(self) -> None:
        if self.datadir.is_dir():
            _stop_cluster(self._as_user, self._pg_ctl, self.datadir)


def start_postgres(workdir: pathlib.Path | None = None) -> PostgresServer:
    """Create and start a fresh PostgreSQL cluster; return it once it accepts connections.

    Args:
        workdir: Parent directory for the cluster's temporary directory (default: the
            system temp dir).  When running as root it must be traversable by the
            ``postgres`` user, which rules out e.g. pytest's ``tmp_path``.

    Raises:
        RuntimeError: PostgreSQL is not installed and cannot be installed, or the cluster
            could not be created or started.  The message carries the failing command's
            output or the tail of the server log.
    """
    bindir = _POSTGRESQL.find_or_install(_find_bindir)
    as_user: list[str] = []
    if base.is_root():
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root, but `runuser` (util-linux) is not available")
        as_user = ["runuser", "-u", _SERVER_USER, "--"]

    with _POSTGRESQL.make_basedir(workdir, group=None) as basedir:
        return _init_and_start(bindir, basedir, as_user)


def _init_and_start(
    bindir: pathlib.Path, basedir: pathlib.Path, as_user: Sequence[str]
) -> PostgresServer:
    datadir = basedir / "data"
    logfile = basedir / "postgres.log"
    pg_ctl = bindir / "pg_ctl"

    initdb = [
        *as_user,
        str(bindir / "initdb"),
        "-D",
        str(datadir),
        "-A",
        "trust",
        "-U",
        _SERVER_USER,
        "--no-sync",
        "-E",
        "UTF8",
        # The C locale always exists, unlike whatever LANG the caller happens to have.
        "--locale=C",
    ]
    result = base.run(initdb, cwd=basedir)
    if result.returncode != 0:
        raise RuntimeError("initdb failed: " + base.describe_failure(initdb, result))

    def attempt(port: int) -> PostgresServer | str:
        options = (
            f"-p {port} -k {shlex.quote(str(basedir))} -c listen_addresses={base.HOST} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=100"
        )
        start = [*as_user, str(pg_ctl), "-D", str(datadir), "-l", str(logfile), "-o", options]
        start += ["-w", "-t", str(base.START_TIMEOUT), "start"]
        result = base.run(start, cwd=basedir)
        if result.returncode == 0:
            return PostgresServer(port=port, pg_ctl=pg_ctl, basedir=basedir, as_user=as_user)
        return base.describe_failure(start, result)

    return _POSTGRESQL.start_on_free_port(
        attempt,
        logfile=logfile,
        # pg_ctl may have given up waiting on a server that is still starting.
        give_up=lambda: _stop_cluster(as_user, pg_ctl, datadir),
    )
