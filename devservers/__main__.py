"""Start a throwaway server for manual debugging: ``python -m devservers postgres|mariadb``.

Prints the server's async URL on stdout and keeps it running until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from . import start_mariadb, start_postgres


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devservers", description=__doc__)
    parser.add_argument("server", choices=["postgres", "mariadb"])
    start = start_postgres if parser.parse_args(argv).server == "postgres" else start_mariadb

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Installed explicitly: a server started in the background of a non-interactive shell
    # inherits an ignored SIGINT, which Python would otherwise leave ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _terminate)
    started = time.monotonic()
    server = start()
    try:
        print(server.url, flush=True)
        print(
            *server.details(),
            f"started in {time.monotonic() - started:.1f}s; data in {server.datadir}; "
            "Ctrl-C to stop",
            sep="\n",
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
