"""What the PostgreSQL and MariaDB harnesses share.

A :class:`Server` owns a base directory (its data, socket and log) and is stopped, and that
directory deleted, by :meth:`Server.stop`, by leaving its ``with`` block or at interpreter exit.
The helpers below find or install the server binaries, run commands with stable output, pick a
free port and retry on the rare port clash, and turn failures into readable errors.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import dataclasses
import os
import pathlib
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TypeVar

HOST = "127.0.0.1"
START_ATTEMPTS = 3
START_TIMEOUT = 60
STOP_TIMEOUT = 60
COMMAND_TIMEOUT = 120
APT_TIMEOUT = 1800

_T = TypeVar("_T")
_S = TypeVar("_S", bound="Server")


class Server(abc.ABC):
    """A running throwaway database server.

    Attributes:
        url: SQLAlchemy async URL, to hand to ``create_async_engine``.
        host: Always ``127.0.0.1``.
        port: The TCP port the server listens on.
    """

    url: str
    host: str
    port: int

    def __init__(self, *, port: int, basedir: pathlib.Path) -> None:
        self.host = HOST
        self.port = port
        self._basedir = basedir
        self._stopped = False
        atexit.register(self.stop)

    @property
    def datadir(self) -> pathlib.Path:
        """The server's data directory (deleted by :meth:`stop`)."""
        return self._basedir / "data"

    @abc.abstractmethod
    def _shutdown(self) -> None:
        """Stop the server process; its files are deleted afterwards."""

    def details(self) -> list[str]:
        """Extra lines for ``python -m devservers`` to print."""
        return []

    def stop(self) -> None:
        """Stop the server and delete its files.  Safe to call more than once."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        try:
            self._shutdown()
        finally:
            shutil.rmtree(self._basedir, ignore_errors=True)

    def __enter__(self: _S) -> _S:
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
        return f"<{type(self).__name__} {self.url} ({state})>"


def is_root() -> bool:
    return os.geteuid() == 0


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    # Stable, English messages regardless of the caller's (possibly ungenerated) locale.
    env.update(LC_ALL="C", LANG="C")
    return env


def run(
    argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT, cwd: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=server_env(),
        check=False,
    )


def describe_failure(argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> str:
    output = "\n".join(part.strip() for part in (result.stdout, result.stderr) if part.strip())
    status = f"`{shlex.join(argv)}` exited with status {result.returncode}"
    return f"{status}:\n{output or '(no output)'}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: pathlib.Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


@dataclasses.dataclass(frozen=True)
class Product:
    """What the error messages and the set-up need to know about one kind of server."""

    name: str  # e.g. "PostgreSQL"
    package: str  # the Debian package with the server binaries
    binaries: str  # the binaries looked for, for messages
    where: str  # where they are looked for, for messages
    opt_out: str  # how the test suite can do without this server
    user: str  # the unprivileged user the server runs as when we are root
    prefix: str  # of the temporary directories

    def find_or_install(self, find: Callable[[], _T | None]) -> _T:
        """``find()``'s result; when it is ``None`` and we are root, apt-get install and retry."""
        found = find()
        if found is None and is_root():
            if shutil.which("apt-get") is None:
                raise RuntimeError(
                    f"{self.name} server binaries ({self.binaries}) were not found and apt-get "
                    f"is not available to install them; install {self.name} or {self.opt_out}"
                )
            self._apt_install()
            found = find()
        if found is None:
            raise RuntimeError(
                f"{self.name} server binaries ({self.binaries}) were not found {self.where}; "
                f"install Debian's `{self.package}` package (this is done automatically when "
                f"running as root) or {self.opt_out}"
            )
        return found

    def _apt_install(self) -> None:
        env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
        # Waiting for the dpkg lock lets several processes bootstrap the same machine at once.
        apt_get = [*env_prefix, "apt-get", "-o", "DPkg::Lock::Timeout=600"]
        for argv in (
            [*apt_get, "update"],
            [*apt_get, "install", "-y", "--no-install-recommends", self.package],
        ):
            result = run(argv, timeout=APT_TIMEOUT)
            if result.returncode != 0:
                raise RuntimeError(
                    f"could not install {self.name} with apt-get: " + describe_failure(argv, result)
                )

    @contextlib.contextmanager
    def make_basedir(
        self, workdir: pathlib.Path | None, *, group: str | None
    ) -> Iterator[pathlib.Path]:
        """A fresh temporary directory, deleted again if the ``with`` block fails.

        When we are root it belongs to :attr:`user` (and ``group``), for the server to use.
        """
        basedir = pathlib.Path(tempfile.mkdtemp(prefix=self.prefix, dir=workdir))
        try:
            if is_root():
                try:
                    shutil.chown(basedir, user=self.user, group=group)
                except LookupError as exc:
                    raise RuntimeError(
                        f"running as root, but there is no `{self.user}` user to run "
                        f"{self.name} as (it is created by Debian's {self.package} package)"
                    ) from exc
            yield basedir
        except BaseException:
            shutil.rmtree(basedir, ignore_errors=True)
            raise

    def start_on_free_port(
        self,
        attempt: Callable[[int], _T | str],
        *,
        logfile: pathlib.Path,
        port_taken: Sequence[str] = ("Address already in use",),
        give_up: Callable[[], None] = lambda: None,
    ) -> _T:
        """Start a server on a free port, trying another port when one was taken meanwhile.

        ``attempt(port)`` returns the started server or a description of its failure.
        ``give_up()`` runs, after the log was read, before the final failure is raised.
        """
        for number in range(1, START_ATTEMPTS + 1):
            outcome = attempt(free_port())
            if not isinstance(outcome, str):
                return outcome
            log = tail(logfile)
            # Another process may grab the port between probing and binding it; try another.
            if any(marker in log for marker in port_taken) and number < START_ATTEMPTS:
                logfile.unlink(missing_ok=True)
                continue
            give_up()
            raise RuntimeError(
                f"could not start {self.name}: {outcome}\n--- tail of {logfile} ---\n{log}"
            )
        raise AssertionError("unreachable")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # SIGTERM: a normal, quick shutdown
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)
