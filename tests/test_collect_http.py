"""The collector's HTTP client: a stop (Ctrl-C) cuts requests in flight, including one whose
connection was still being made when the stop came (its socket was not yet there to cut)."""

from __future__ import annotations

import socket
import time

import pytest

from vislab.collect.http import Client, RetryPolicy, Retryable


def test_a_stop_that_lands_while_a_request_connects_still_cuts_it() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # the kernel accepts the connection; nothing ever answers
    try:
        client = Client(RetryPolicy(retries=0, backoff=0, timeout=10.0))
        # the request below has passed its stop check and is connecting when the stop comes:
        # abort() finds no socket to shut, so the connection must see the stop itself
        client.abort()
        start = time.monotonic()
        with pytest.raises(Retryable):
            client._open(f"http://127.0.0.1:{server.getsockname()[1]}/photo.jpg")
        assert time.monotonic() - start < 3  # not the 10-s read timeout
    finally:
        server.close()
