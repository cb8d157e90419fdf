"""A throwaway PostgreSQL server for the test suite and benchmarks.

``start_postgres()`` creates a fresh cluster in a temporary directory, starts it on a free
port of 127.0.0.1 with durability switched off (fast, and nothing in it is worth keeping)
and returns a :class:`PostgresServer` whose ``url`` can be handed to
``create_async_engine``.  ``stop()`` shuts the server down and deletes its files; an
``atexit`` hook does the same if the caller never gets to it.

The server binaries come from Debian's ``postgresql`` package.  When they are missing and
we run as root (a fresh CI machine) the package is installed with apt-get.  PostgreSQL
refuses to run as root, so in that case every server command runs as the ``postgres``
user through ``runuser``.

Run ``python tests/pgserver.py`` to get a server for manual debugging; it prints the URL
and keeps the server up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType

__all__ = ["PostgresServer", "start_postgres"]

_DEBIAN_ROOT = pathlib.Path("/usr/lib/postgresql")
_SERVER_USER = "postgres"
_START_ATTEMPTS = 3
_COMMAND_TIMEOUT = 120
_APT_TIMEOUT = 1800


def _is_root() -> bool:
    return os.geteuid() == 0


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


def _run(
    argv: Sequence[str], *, timeout: float = _COMMAND_TIMEOUT, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # Stable, English server messages regardless of the caller's (possibly ungenerated) locale.
    env.update(LC_ALL="C", LANG="C")
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )


def _describe_failure(argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    output = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
    status = f"`{shlex.join(argv)}` exited with status {result.returncode}"
    return f"{status}:\n{output or '(no output)'}"


def _install_postgresql() -> None:
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found and apt-get is not "
            "available to install them; install PostgreSQL or set HISTORY_TEST_DATABASES=sqlite"
        )
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    # Waiting for the dpkg lock lets several test processes bootstrap the same machine at once.
    lock_wait = ["-o", "DPkg::Lock::Timeout=600"]
    commands = [
        [*env_prefix, "apt-get", *lock_wait, "update"],
        [
            *env_prefix,
            "apt-get",
            *lock_wait,
            "install",
            "-y",
            "--no-install-recommends",
            "postgresql",
        ],
    ]
    for argv in commands:
        result = _run(argv, timeout=_APT_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                "could not install PostgreSQL with apt-get: " + _describe_failure(argv, result)
            )


def _require_bindir() -> pathlib.Path:
    bindir = _find_bindir()
    if bindir is None and _is_root():
        _install_postgresql()
        bindir = _find_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries (initdb, pg_ctl) were not found under "
            f"{_DEBIAN_ROOT}/*/bin or on PATH; install Debian's `postgresql` package "
            "(this is done automatically when running as root) or set "
            "HISTORY_TEST_DATABASES=sqlite"
        )
    return bindir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: pathlib.Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


def _stop_cluster(as_user: Sequence[str], pg_ctl: pathlib.Path, datadir: pathlib.Path) -> None:
    # Immediate mode: nothing in the cluster is worth a shutdown checkpoint.
    argv = [*as_user, str(pg_ctl), "-D", str(datadir), "-m", "immediate", "-w", "stop"]
    _run(argv, cwd=datadir.parent)


class PostgresServer:
    """A running throwaway PostgreSQL server.

    Attributes:
        url: SQLAlchemy async URL of the ``postgres`` database, e.g.
            ``postgresql+asyncpg://postgres@127.0.0.1:54321/postgres``.
        dsn: The same address as a plain libpq URL, for ``asyncpg.connect()``.
        host: Always ``127.0.0.1``.
        port: The TCP port the server listens on.
    """

    url: str
    dsn: str
    host: str
    port: int

    def __init__(
        self, *, port: int, pg_ctl: pathlib.Path, basedir: pathlib.Path, as_user: Sequence[str]
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.dsn = f"postgresql://{_SERVER_USER}@{self.host}:{port}/postgres"
        self.url = f"postgresql+asyncpg://{_SERVER_USER}@{self.host}:{port}/postgres"
        self._pg_ctl = pg_ctl
        self._basedir = basedir
        self._as_user = list(as_user)
        self._stopped = False
        atexit.register(self.stop)

    @property
    def datadir(self) -> pathlib.Path:
        """The cluster's data directory (deleted by :meth:`stop`)."""
        return self._basedir / "data"

    def stop(self) -> None:
        """Stop the server and delete its files.  Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            if self.datadir.is_dir():
                _stop_cluster(self._as_user, self._pg_ctl, self.datadir)
        finally:
            shutil.rmtree(self._basedir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "stopped" if self._stopped else "running"
        return f"<PostgresServer {self.url} ({state})>"


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
    bindir = _require_bindir()
    as_user: list[str] = []
    if _is_root():
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root, but `runuser` (util-linux) is not available")
        as_user = ["runuser", "-u", _SERVER_USER, "--"]

    basedir = pathlib.Path(tempfile.mkdtemp(prefix="history-pg-", dir=workdir))
    try:
        if as_user:
            try:
                shutil.chown(basedir, user=_SERVER_USER, group=None)
            except LookupError as exc:
                raise RuntimeError(
                    f"running as root, but there is no `{_SERVER_USER}` user to run "
                    "PostgreSQL as (it is created by Debian's postgresql package)"
                ) from exc
        return _init_and_start(bindir, basedir, as_user)
    except BaseException:
        shutil.rmtree(basedir, ignore_errors=True)
        raise


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
    result = _run(initdb, cwd=basedir)
    if result.returncode != 0:
        raise RuntimeError("initdb failed: " + _describe_failure(initdb, result))

    for attempt in range(1, _START_ATTEMPTS + 1):
        port = _free_port()
        options = (
            f"-p {port} -k {shlex.quote(str(basedir))} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        start = [
            *as_user,
            str(pg_ctl),
            "-D",
            str(datadir),
            "-l",
            str(logfile),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        ]
        result = _run(start, cwd=basedir)
        if result.returncode == 0:
            return PostgresServer(port=port, pg_ctl=pg_ctl, basedir=basedir, as_user=as_user)
        log = _tail(logfile)
        # Another process may grab the port between probing and binding it; try another one.
        if "Address already in use" in log and attempt < _START_ATTEMPTS:
            logfile.unlink(missing_ok=True)
            continue
        _stop_cluster(as_user, pg_ctl, datadir)
        raise RuntimeError(
            "could not start PostgreSQL: "
            + _describe_failure(start, result)
            + f"\n--- tail of {logfile} ---\n{log}"
        )
    raise AssertionError("unreachable")


def main() -> None:
    """Start a server, print its URL and keep it running until Ctrl-C or SIGTERM."""

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a server started in the background of a non-interactive shell
    # inherits an ignored SIGINT, which Python would otherwise leave ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _terminate)
    started = time.monotonic()
    server = start_postgres()
    try:
        print(server.url, flush=True)
        print(
            f"started in {time.monotonic() - started:.1f}s; data in {server.datadir}; "
            "Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
