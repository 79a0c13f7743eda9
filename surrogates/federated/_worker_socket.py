"""The request loop of a hospital's worker process (population fits and surrogates alike):
a Unix socket of mode 0600 next to the SuperNode, one framed request per connection
(`_population_client.recv_frame` / `send_frame`), served until the parent process ends."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import tomli

from ._population_client import recv_frame, send_frame

log = logging.getLogger(__name__)


class Worker(Protocol):
    def handle(self, message: Any) -> Any: ...


def parent_alive(pid: int | None) -> bool:
    """Whether process `pid` still runs (True for None: no parent to watch)."""
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def serve_requests(worker: Worker, name: str, path: str, *, parent_pid: int | None) -> None:
    """Serve `worker.handle` on the Unix socket `path` (mode 0600) until the process
    `parent_pid` ends; `name` is the hospital's, for the log."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o600)
        server.listen(4)
        server.settimeout(1.0)
        log.info("hospital %s: worker listening on %s", name, path)
        while parent_alive(parent_pid):
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    message = recv_frame(conn)
                except (ConnectionError, ValueError) as error:  # a probe, or garbage
                    log.debug("hospital %s: no request read: %s", name, error)
                    continue
                send_frame(conn, worker.handle(message))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def worker_main(
    argv: list[str] | None,
    description: str,
    serve: Callable[..., None],
) -> None:
    """The command line of a worker process: `--node-config` (the SuperNode's node config,
    TOML), `--socket`, `--parent-pid`; then `serve(node, socket, parent_pid=...)`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--node-config", required=True, help="the SuperNode's node config (TOML)")
    parser.add_argument("--socket", required=True, help="the Unix socket to listen on")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when it ends")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    node: Mapping[str, Any] = tomli.loads(Path(args.node_config).read_text(encoding="utf-8"))
    serve(node, args.socket, parent_pid=args.parent_pid)
