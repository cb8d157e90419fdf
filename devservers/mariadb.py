"""A throwaway MariaDB server.

``start_mariadb()`` creates a fresh data directory in a temporary directory (in ``/dev/shm``
when it has room), starts a private server on a free port of 127.0.0.1 with durability
switched off (fast, and nothing in it is worth keeping) and returns a :class:`MariaDBServer`
whose ``url`` can be handed to ``create_async_engine`` and whose ``sync_url`` to
``create_engine``.  Besides ``stop()`` and the ``atexit`` hook, the next ``start_mariadb()``
stops and deletes servers whose owning process was killed outright.

The server binaries come from Debian's ``mariadb-server`` package.  When they are missing and
we run as root (a fresh CI machine) the package is installed with apt-get; the package may
start a default server of its own, which is left alone and never used.  Our server reads no
option file (``--no-defaults``), listens on its own port and socket, and when run as root
drops to the ``mysql`` user (``--user=mysql``).  An init file creates the ``history_test``
database and the ``history`` user (password ``history``, all privileges) before the server
accepts connections.

Run ``python -m devservers mariadb`` to get a server for manual debugging; it prints the URL
and keeps the server up until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

from . import base

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
# Memory-backed: MariaDB syncs every DDL statement to disk whatever its settings, and the
# tests re-create their tables for each test.  Used only when it has room to spare.
_SHM = pathlib.Path("/dev/shm")
_SHM_MIN_FREE = 1 << 30
_PREFIX = "history-mariadb-"
_OWNER_FILE = "owner.pid"
_MARIADB = base.Product(
    name="MariaDB",
    package="mariadb-server",
    binaries="mariadbd or mysqld, mariadb-install-db or mysql_install_db",
    where=f"on PATH or in {', '.join(_EXTRA_DIRS)}",
    opt_out="leave mariadb out of HISTORY_TEST_DATABASES",
    user=_SERVER_USER,
    prefix=_PREFIX,
)


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


class MariaDBServer(base.Server):
    """A running throwaway MariaDB server.

    Attributes:
        url: SQLAlchemy async URL of the ``history_test`` database, e.g.
            ``mysql+asyncmy://history:history@127.0.0.1:33061/history_test?charset=utf8mb4``.
        sync_url: The same address for a sync driver (``mysql+pymysql``).
        socket: Path of the server's Unix socket.
    """

    sync_url: str
    socket: pathlib.Path

    def __init__(
        self, *, port: int, process: subprocess.Popen[bytes], basedir: pathlib.Path
    ) -> None:
        super().__init__(port=port, basedir=basedir)
        self.socket = basedir / "mysqld.sock"
        address = f"{USER}:{PASSWORD}@{self.host}:{port}/{DATABASE}?charset=utf8mb4"
        self.url = f"mysql+{ASYNC_DRIVER}://{address}"
        self.sync_url = f"mysql+{SYNC_DRIVER}://{address}"
        self._process = process

    @property
    def pid(self) -> int:
        """Process id of the server."""
        return self._process.pid

    def details(self) -> list[str]:
        return [f"sync: {self.sync_url}"]

    def _shutdown(self) -> None:
        base.stop_process(self._process)


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
    server, install_db = _MARIADB.find_or_install(_find_binaries)
    # mariadbd refuses to run as root unless told which user to switch to.
    as_mysql = [f"--user={_SERVER_USER}"] if base.is_root() else []
    if workdir is None:
        workdir = _default_workdir()
    _reap_orphans(pathlib.Path(workdir or tempfile.gettempdir()))
    with _MARIADB.make_basedir(workdir, group=_SERVER_USER) as basedir:
        (basedir / _OWNER_FILE).write_text(str(os.getpid()))
        return _init_and_start(server, install_db, basedir, as_mysql)


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
    socket_path = basedir / "mysqld.sock"
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
    result = base.run(install, cwd=basedir)
    if result.returncode != 0:
        raise RuntimeError("mariadb-install-db failed: " + base.describe_failure(install, result))

    def attempt(port: int) -> MariaDBServer | str:
        argv = [
            str(server),
            "--no-defaults",
            f"--datadir={datadir}",
            f"--tmpdir={tmpdir}",
            f"--socket={socket_path}",
            f"--pid-file={basedir / 'mysqld.pid'}",
            f"--log-error={logfile}",
            f"--init-file={init_file}",
            *as_mysql,
            f"--bind-address={base.HOST}",
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
            env=base.server_env(),
            # Its own session: a Ctrl-C meant for the test run reaches the server only
            # through stop(), after the tests have let go of it.
            start_new_session=True,
        )
        try:
            ready = _wait_until_ready(process, socket_path)
        except BaseException:
            base.stop_process(process)
            raise
        if ready:
            return MariaDBServer(port=port, process=process, basedir=basedir)
        exit_status = process.poll()
        base.stop_process(process)
        outcome = (
            f"did not accept connections within {base.START_TIMEOUT}s"
            if exit_status is None
            else f"exited with status {exit_status}"
        )
        return f"`{shlex.join(argv)}` {outcome}"

    return _MARIADB.start_on_free_port(
        attempt,
        logfile=logfile,
        port_taken=("Address already in use", "errno: 98"),
    )


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
    """Stop and delete servers left behind by processes that were killed outright.

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
    deadline = time.monotonic() + base.START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if socket_path.exists() and _accepts_connections(socket_path):
            return True
        time.sleep(0.1)
    return False
