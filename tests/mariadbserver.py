"""A throwaway MariaDB server for the test suite and benchmarks.

``start_mariadb()`` creates a fresh data directory in a temporary directory (in ``/dev/shm``
when it has room), starts a private server on a free port of 127.0.0.1 with durability
switched off (fast, and nothing in it is worth keeping) and returns a :class:`MariaDBServer`
whose ``url`` can be handed to ``create_async_engine`` and whose ``sync_url`` to
``create_engine``.  ``stop()`` shuts the server down and deletes its files; an ``atexit`` hook
does the same if the caller never gets to it, and the next ``start_mariadb()`` does it for
servers whose test process was killed outright.

The server binaries come from Debian's ``mariadb-server`` package.  When they are missing and
we run as root (a fresh CI machine) the package is installed with apt-get; the package may
start a default server of its own, which is left alone and never used.  Our server reads no
option file (``--no-defaults``), listens on its own port and socket, and when run as root
drops to the ``mysql`` user (``--user=mysql``).  An init file creates the ``history_test``
database and the ``history`` user (password ``history``, all privileges) before the server
accepts connections.

Run ``python tests/mariadbserver.py`` to get a server for manual debugging; it prints the URL
and keeps the server up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
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

__all__ = ["MariaDBServer", "start_mariadb"]

DATABASE = "history_test"
USER = "history"
PASSWORD = "history"
ASYNC_DRIVER = "asyncmy"
SYNC_DRIVER = "pymysql"

_SERVER_USER = "mysql"
_SERVER_NAMES = ("mariadbd", "mysqld")
_INSTALL_DB_NAMES = ("mariadb-install-db", "mysql_install_db")
# Debian keeps mariadbd in /usr/sbin, which is not on a normal user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/libexec", "/usr/local/mysql/bin")
_START_ATTEMPTS = 3
_START_TIMEOUT = 60
_STOP_TIMEOUT = 60
_COMMAND_TIMEOUT = 120
_APT_TIMEOUT = 1800
# Memory-backed: MariaDB syncs every DDL statement to disk whatever its settings, and the
# tests re-create their tables for each test.  Used only when it has room to spare.
_SHM = pathlib.Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30
_PREFIX = "history-mariadb-"
_OWNER_FILE = "owner.pid"


def _is_root() -> bool:
    return os.geteuid() == 0


def _which(names: Sequence[str]) -> pathlib.Path | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_DIRS])
    for name in names:
        found = shutil.which(name, path=path)
        if found is not None:
            return pathlib.Path(found)
    return None


def _find_binaries() -> tuple[pathlib.Path, pathlib.Path] | None:
    """``(server, install_db)``, or ``None`` when either is missing."""
    server = _which(_SERVER_NAMES)
    install_db = _which(_INSTALL_DB_NAMES)
    if server is None or install_db is None:
        return None
    return server, install_db


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Stable, English messages regardless of the caller's (possibly ungenerated) locale.
    env.update(LC_ALL="C", LANG="C")
    return env


def _run(
    argv: Sequence[str], *, timeout: float = _COMMAND_TIMEOUT, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=_env(),
        check=False,
    )


def _describe_failure(argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    output = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
    status = f"`{shlex.join(argv)}` exited with status {result.returncode}"
    return f"{status}:\n{output or '(no output)'}"


def _install_mariadb() -> None:
    if shutil.which("apt-get") is None:
        raise RuntimeError(
            "MariaDB server binaries (mariadbd, mariadb-install-db) were not found and apt-get "
            "is not available to install them; install MariaDB or leave mariadb out of "
            "HISTORY_TEST_DATABASES"
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
            "mariadb-server",
        ],
    ]
    for argv in commands:
        result = _run(argv, timeout=_APT_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                "could not install MariaDB with apt-get: " + _describe_failure(argv, result)
            )


def _require_binaries() -> tuple[pathlib.Path, pathlib.Path]:
    found = _find_binaries()
    if found is None and _is_root():
        _install_mariadb()
        found = _find_binaries()
    if found is None:
        raise RuntimeError(
            "MariaDB server binaries (mariadbd or mysqld, mariadb-install-db or "
            "mysql_install_db) were not found on PATH or in "
            f"{', '.join(_EXTRA_DIRS)}; install Debian's `mariadb-server` package (this is "
            "done automatically when running as root) or leave mariadb out of "
            "HISTORY_TEST_DATABASES"
        )
    return found


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


def _default_workdir() -> pathlib.Path | None:
    """``/dev/shm`` when it is a usable, roomy tmpfs; ``None`` (the system temp dir) otherwise."""
    try:
        stat = os.statvfs(_SHM)
    except OSError:
        return None
    roomy = stat.f_bavail * stat.f_frsize >= _SHM_MIN_FREE
    return _SHM if roomy and os.access(_SHM, os.W_OK | os.X_OK) else None


def _accepts_connections(path: pathlib.Path) -> bool:
    """Whether the server answers on its socket with a handshake.

    The server greets only once it is fully started (after the init file ran).  Its private
    Unix socket is asked rather than the TCP port, which another server could have taken.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            header = sock.recv(5)
    except OSError:
        return False
    # A packet header (3-byte length, sequence id 0), then protocol version 10 for a
    # handshake; 0xff would be an error packet (e.g. too many connections).
    return len(header) == 5 and header[3] == 0 and header[4] == 10


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: a normal, quick shutdown
    try:
        process.wait(timeout=_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_TIMEOUT)


class MariaDBServer:
    """A running throwaway MariaDB server.

    Attributes:
        url: SQLAlchemy async URL of the ``history_test`` database, e.g.
            ``mysql+asyncmy://history:history@127.0.0.1:33061/history_test?charset=utf8mb4``.
        sync_url: The same address for a sync driver (``mysql+pymysql``).
        host: Always ``127.0.0.1``.
        port: The TCP port the server listens on.
        socket: Path of the server's Unix socket.
    """

    url: str
    sync_url: str
    host: str
    port: int
    socket: pathlib.Path

    def __init__(
        self, *, port: int, process: subprocess.Popen[bytes], basedir: pathlib.Path
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.socket = basedir / "mysqld.sock"
        address = f"{USER}:{PASSWORD}@{self.host}:{port}/{DATABASE}?charset=utf8mb4"
        self.url = f"mysql+{ASYNC_DRIVER}://{address}"
        self.sync_url = f"mysql+{SYNC_DRIVER}://{address}"
        self._process = process
        self._basedir = basedir
        self._stopped = False
        atexit.register(self.stop)

    @property
    def datadir(self) -> pathlib.Path:
        """The server's data directory (deleted by :meth:`stop`)."""
        return self._basedir / "data"

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self._process.pid

    def stop(self) -> None:
        """Stop the server and delete its files.  Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            _stop_process(self._process)
        finally:
            shutil.rmtree(self._basedir, ignore_errors=True)

    def __enter__(self) -> MariaDBServer:
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
        return f"<MariaDBServer {self.url} ({state})>"


def start_mariadb(workdir: pathlib.Path | None = None) -> MariaDBServer:
    """Create and start a fresh MariaDB server; return it once it accepts connections.

    Args:
        workdir: Parent directory for the server's temporary directory (default:
            ``/dev/shm`` if it has 1 GiB free, else the system temp dir).  When running as
            root it must be traversable by the ``mysql`` user, which rules out e.g. pytest's
            ``tmp_path``.  Keep it short: the server's Unix socket lives in it (at most 107
            bytes of path).

    Raises:
        RuntimeError: MariaDB is not installed and cannot be installed, or the server could
            not be initialized or started.  The message carries the failing command's
            output or the tail of the server log.
    """
    server, install_db = _require_binaries()
    as_mysql: list[str] = []
    if workdir is None:
        workdir = _default_workdir()
    _reap_orphans(pathlib.Path(workdir or tempfile.gettempdir()))
    basedir = pathlib.Path(tempfile.mkdtemp(prefix=_PREFIX, dir=workdir))
    try:
        (basedir / _OWNER_FILE).write_text(str(os.getpid()))
        if _is_root():
            # mariadbd refuses to run as root unless told which user to switch to.
            as_mysql = [f"--user={_SERVER_USER}"]
            try:
                shutil.chown(basedir, user=_SERVER_USER, group=_SERVER_USER)
            except LookupError as exc:
                raise RuntimeError(
                    f"running as root, but there is no `{_SERVER_USER}` user to run MariaDB "
                    "as (it is created by Debian's mariadb-server package)"
                ) from exc
        return _init_and_start(server, install_db, basedir, as_mysql)
    except BaseException:
        shutil.rmtree(basedir, ignore_errors=True)
        raise


def _init_and_start(
    server: pathlib.Path,
    install_db: pathlib.Path,
    basedir: pathlib.Path,
    as_mysql: Sequence[str],
) -> MariaDBServer:
    datadir = basedir / "data"
    tmpdir = basedir / "tmp"
    logfile = basedir / "mariadb.log"
    init_file = basedir / "init.sql"
    tmpdir.mkdir()
    init_file.write_text(
        f"CREATE DATABASE IF NOT EXISTS {DATABASE} CHARACTER SET utf8mb4;\n"
        f"CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n"
        f"CREATE USER IF NOT EXISTS '{USER}'@'localhost' IDENTIFIED BY '{PASSWORD}';\n"
        f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'127.0.0.1' WITH GRANT OPTION;\n"
        f"GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'localhost' WITH GRANT OPTION;\n"
    )
    if as_mysql:
        for path in (tmpdir, init_file):
            shutil.chown(path, user=_SERVER_USER, group=_SERVER_USER)

    install = [
        str(install_db),
        "--no-defaults",  # must come first; never read /etc/mysql
        f"--datadir={datadir}",
        *as_mysql,
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--skip-name-resolve",
        # The bootstrap server would otherwise sync every table it creates.
        "--innodb-flush-log-at-trx-commit=0",
    ]
    basedir_opt = _install_basedir(server)
    if basedir_opt is not None:
        install.insert(2, f"--basedir={basedir_opt}")
    result = _run(install, cwd=basedir)
    if result.returncode != 0:
        raise RuntimeError("mariadb-install-db failed: " + _describe_failure(install, result))

    for attempt in range(1, _START_ATTEMPTS + 1):
        port = _free_port()
        argv = [
            str(server),
            "--no-defaults",
            f"--datadir={datadir}",
            f"--tmpdir={tmpdir}",
            f"--socket={basedir / 'mysqld.sock'}",
            f"--pid-file={basedir / 'mysqld.pid'}",
            f"--log-error={logfile}",
            f"--init-file={init_file}",
            *as_mysql,
            "--bind-address=127.0.0.1",
            f"--port={port}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-connections=200",
            # Durability off: nothing here is worth an fsync.
            "--skip-log-bin",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--sync-binlog=0",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            # Native AIO can be unavailable in containers (io_setup() limits).
            "--innodb-use-native-aio=0",
            "--performance-schema=OFF",
        ]
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=basedir,
            env=_env(),
            # Its own session: a Ctrl-C meant for the test run reaches the server only
            # through stop(), after the tests have let go of it.
            start_new_session=True,
        )
        try:
            ready = _wait_until_ready(process, basedir / "mysqld.sock")
        except BaseException:
            _stop_process(process)
            raise
        if ready:
            return MariaDBServer(port=port, process=process, basedir=basedir)
        exit_status = process.poll()
        _stop_process(process)
        log = _tail(logfile)
        # Another process may grab the port between probing and binding it; try another one.
        if ("Address already in use" in log or "errno: 98" in log) and attempt < _START_ATTEMPTS:
            logfile.unlink(missing_ok=True)
            continue
        outcome = (
            f"did not accept connections within {_START_TIMEOUT}s"
            if exit_status is None
            else f"exited with status {exit_status}"
        )
        raise RuntimeError(
            f"could not start MariaDB: `{shlex.join(argv)}` {outcome}"
            f"\n--- tail of {logfile} ---\n{log}"
        )
    raise AssertionError("unreachable")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process stays a zombie until its parent reaps it
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _reap_orphans(workdir: pathlib.Path) -> None:
    """Stop and delete servers left behind by test processes that were killed outright.

    ``stop()`` and the ``atexit`` hook never run after a SIGKILL, and a server's files in
    ``/dev/shm`` would hold memory until the next boot.  Only directories whose owning
    process is gone are touched, and only a server process started from that directory is
    killed.
    """
    for basedir in workdir.glob(_PREFIX + "*"):
        try:
            owner = int((basedir / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # not ours, or still being set up
        if _pid_alive(owner):
            continue
        try:
            server_pid = int((basedir / "mysqld.pid").read_text())
            cmdline = pathlib.Path(f"/proc/{server_pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            pass  # the server never started, or is gone
        else:
            if f"--datadir={basedir / 'data'}".encode() in cmdline.split(b"\0"):
                # A throwaway server: nothing in it needs a clean shutdown.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server_pid, signal.SIGKILL)
        shutil.rmtree(basedir, ignore_errors=True)


def _install_basedir(server: pathlib.Path) -> pathlib.Path | None:
    """The installation prefix, when ``server`` lives in the usual ``<prefix>/(s)bin``."""
    prefix = server.resolve().parent.parent
    return prefix if (prefix / "share").is_dir() else None


def _wait_until_ready(process: subprocess.Popen[bytes], socket_path: pathlib.Path) -> bool:
    """Wait for the handshake; ``False`` if the server exited or took too long."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if socket_path.exists() and _accepts_connections(socket_path):
            return True
        time.sleep(0.1)
    return False


def main() -> None:
    """Start a server, print its URL and keep it running until Ctrl-C or SIGTERM."""

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a server started in the background of a non-interactive shell
    # inherits an ignored SIGINT, which Python would otherwise leave ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _terminate)
    started = time.monotonic()
    server = start_mariadb()
    try:
        print(server.url, flush=True)
        print(
            f"sync: {server.sync_url}\n"
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
