"""`vislab serve`: check where to listen, load the runs, bind, and run uvicorn.

Everything that can be wrong is said in one line before a model is loaded or a port is
taken: an address beyond this machine without a token, a token too short or with
characters a cookie cannot carry, a port in use. The listening socket is bound here and
handed to uvicorn, so `--port 0` picks a free port and the line printed at start-up names
it (scripts and tests read it from there).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from pathlib import Path
from typing import Sequence

from vislab.errors import VislabError
from vislab.fsguard import printable
from vislab.serve.app import Limits

MIN_TOKEN_CHARS = 16
TOKEN_CHARS = re.compile(r"^[A-Za-z0-9._~+/=-]+$")  # what secrets.token_urlsafe / hex / base64 produce
LOCAL_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})
MAX_WINDOW_MS = 1000.0  # every image waits up to the window: longer only makes requests hang


def is_loopback(host: str) -> bool:
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_access(host: str, token: str | None) -> None:
    """Refuse, in one line, to serve beyond this machine without a token, or with a weak one."""
    if token is not None:
        if len(token) < MIN_TOKEN_CHARS or not TOKEN_CHARS.match(token):
            raise VislabError(
                f"--token: use at least {MIN_TOKEN_CHARS} characters from A-Z a-z 0-9 . _ ~ + / = -, "
                "e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`"
            )
        return
    if not is_loopback(host):
        raise VislabError(
            f"--host {host}: other machines could use the models without a password; pass --token T "
            "(or set VISLAB_SERVE_TOKEN), or keep the default --host 127.0.0.1"
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0 = a free port), or a one-line reason why not."""
    if not 0 <= port <= 65535:
        raise VislabError(f"--port {port}: choose a port from 1 to 65535 (or 0 for a free one)")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise VislabError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        why = "already in use; choose another --port (0 picks a free one)" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
        raise VislabError(f"--host {host} --port {port}: cannot listen there ({why})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, saying when its graceful shutdown (requests in flight finished,
        batchers stopped) is done; uvicorn then re-raises the signal that stopped it, so the
        exit status is a signal's (130 for Ctrl-C, 143 for SIGTERM), as `vislab train`'s."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            await super().shutdown(sockets)
            print("vislab serve: stopped", flush=True)

    return Server


def serve(
    runs: Sequence[str | Path],
    host: str = "127.0.0.1",
    port: int = 8000,
    onnx: bool = False,
    token: str | None = None,
    limits: Limits = Limits(),
    threads: int | None = None,
    log_requests: bool = False,
) -> None:
    """Serve the runs until Ctrl-C or SIGTERM (uvicorn finishes the requests in flight)."""
    import torch
    import uvicorn

    from vislab.serve.app import create_app

    Server = _server_class()
    from vislab.serve.predictors import load_all

    check_access(host, token)
    if limits.max_batch < 1 or limits.max_files < 1 or limits.max_upload_bytes < 1:
        raise VislabError("--max-batch, --max-files and --max-upload-mb must be positive")
    if not 0 <= limits.window_ms <= MAX_WINDOW_MS:  # NaN fails too
        raise VislabError(f"--batch-window-ms {limits.window_ms:g}: choose from 0 to {MAX_WINDOW_MS:g} ms (5 is the default)")
    sock = bind(host, port)
    try:
        if threads:
            torch.set_num_threads(threads)
        predictors = load_all(runs, onnx=onnx, threads=threads)
        app = create_app(predictors, token=token, limits=limits)
        for p in predictors:
            print(f"model {printable(p.name)}: {p.task}, {p.engine}, from {printable(p.run_dir)}", flush=True)
        url = url_of(sock)
        print(f"vislab serve: {url} (API docs {url}docs; Ctrl-C stops)", flush=True)
        config = uvicorn.Config(app, log_level="info" if log_requests else "warning", access_log=log_requests, timeout_graceful_shutdown=10)
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
