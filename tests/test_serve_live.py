"""`vislab serve` as a real process on a free loopback port: uploads over the limit are cut
short while they stream, concurrent clients share forward passes, the page works in headless
Chromium at phone width (a screenshot is kept with VISLAB_SCREENSHOT_DIR), the API docs at
/docs render with nothing from the network and only with the token, and SIGTERM stops the
server cleanly."""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from vislab.testing.images import write_not_an_image
from vislab.testing.rundirs import make_run_dir

TOKEN = "live-token-0123456789abcdef"
START_TIMEOUT_S = 180  # imports and the warm-up on a loaded 2-core machine


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, lines: list[str]) -> None:
        self.proc, self.url, self.lines = proc, url, lines
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})})
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            conn.close()


def fetch(server: Server, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET `path` with exactly `headers` (no token unless given): status, headers, body."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def multipart(files: list[tuple[str, bytes]], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = b""
    for key, value in (fields or {}).items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
    for name, data in files:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def read_reply(s: socket.socket, timeout: float = 30) -> bytes:
    """An HTTP/1.1 response read off a raw socket: the head and its Content-Length of body."""
    s.setblocking(True)
    s.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
        next((ln.split(b":")[1] for ln in data.split(b"\r\n") if ln.lower().startswith(b"content-length:")), b"0")
    ):
        try:
            more = s.recv(65536)
        except ConnectionResetError:
            break
        if not more:
            break
        data += more
    return data


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("live") / "runs \x1b[2J"  # a terminal control in the runs' folder
    return make_run_dir(root, name="cnn", checkpoint=True), make_run_dir(root, name="abn", checkpoint=True, attention="abn")


@pytest.fixture(scope="module")
def server(runs):
    cmd = [sys.executable, "-m", "vislab.cli", "serve", *map(str, runs), "--port", "0", "--token", TOKEN,
           "--max-upload-mb", "1", "--batch-window-ms", "30", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("vislab serve: http://"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(START_TIMEOUT_S):
        proc.kill()
        pytest.fail(f"vislab serve did not start in {START_TIMEOUT_S} s: {''.join(lines)[-2000:]}")
    url = lines[-1].split()[2]
    yield Server(proc, url, lines)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_the_start_up_lines_show_a_control_character_in_a_run_folder(server, runs) -> None:
    """The 'model NAME: ... from FOLDER' lines printed the folder raw: an ESC [2J in it cleared
    the terminal of whoever started the service."""
    started = [ln for ln in server.lines if ln.startswith("model ")]
    assert len(started) == 2 and not any("\x1b" in ln for ln in started), started
    assert all("runs \\x1b[2J" in ln for ln in started), started


def test_declared_oversize_body_is_refused_before_it_is_sent(server) -> None:
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2147483648\r\n\r\n").encode())
        head = read_reply(s).decode("latin-1")
    assert head.startswith("HTTP/1.1 413"), head
    assert "2,147,483,648 bytes over the 1,048,576-byte upload limit" in head


def test_streamed_oversize_body_is_cut_short(server) -> None:
    """A chunked upload (no declared size) is answered 413 once it passes the limit: the
    server stops reading long before the client has sent its 64 MB."""
    boundary = uuid.uuid4().hex
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'.encode()
    chunk = os.urandom(64 * 1024)  # a valid multipart body whose one image never ends
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, reply = 0, b""
    with socket.create_connection((server.host, server.port), timeout=30) as s:
        s.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                   f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
                  + f"{len(part):x}\r\n".encode() + part + b"\r\n")
        s.setblocking(False)
        deadline = time.monotonic() + 60
        while sent < 64 * 1024 * 1024 and time.monotonic() < deadline:
            readable, writable, _ = select.select([s], [s], [], 1.0)
            if readable:
                reply = read_reply(s)
                break
            if writable:
                try:
                    sent += s.send(frame)
                except (BrokenPipeError, ConnectionResetError):
                    break
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"over the 1,048,576-byte upload limit" in reply
    assert sent < 16 * 1024 * 1024, f"the client could send {sent:,} bytes before the refusal"


def test_a_web_services_pixel_limit_and_a_truncated_body(server, runs, tmp_path) -> None:
    """Serve took curate's 179 M-pixel limit: a 20 KB 1-bit PNG of 169 M pixels took ~0.8 GB
    to decode, and a request of 32 of them ~25 GB; its own default is 50 M. A body cut short
    before its closing boundary was answered for the parts that had arrived."""
    from vislab.testing.images import write_huge_header_png

    bomb = write_huge_header_png(tmp_path / "bomb.png", 7100, 7100)  # 50.4 M pixels
    body, ctype = multipart([(bomb.name, bomb.read_bytes())])
    status, reply = server.request("POST", "/v1/predict", body, {"Content-Type": ctype})
    assert status == 422 and "7100x7100 = 50,410,000 pixels, over the 50,000,000-pixel limit" in reply["detail"], reply
    image = sorted((runs[0].parent / "cnn-data" / "images").rglob("*.png"))[0]
    body, ctype = multipart([(image.name, image.read_bytes())] * 2)
    cut = body[: body.rindex(b"--" + ctype.split("boundary=")[1].encode() + b"--")]
    status, reply = server.request("POST", "/v1/predict", cut, {"Content-Type": ctype})
    assert status == 400 and reply["detail"].startswith("multipart body ended before its closing boundary (truncated upload)"), reply
    assert server.request("POST", "/v1/predict", body, {"Content-Type": ctype})[0] == 200


def test_a_client_gone_mid_upload_costs_one_log_line_not_a_traceback(server, runs) -> None:
    """A client that hung up halfway through its upload made uvicorn print "Exception in ASGI
    application" and ~60 lines of traceback ending in ClientDisconnect, one per aborted upload:
    any client could flood the operator's console with what looks like a crash."""
    image = sorted((runs[0].parent / "cnn-data" / "images").rglob("*.png"))[0]
    body, ctype = multipart([(image.name, image.read_bytes())])
    before = len(server.lines)
    for _ in range(2):
        with socket.create_connection((server.host, server.port), timeout=30) as s:
            s.sendall((f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                       f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2])
    status, answer = server.request("POST", "/v1/predict", body, {"Content-Type": ctype})
    assert status == 200, answer
    time.sleep(0.5)  # the reader thread takes the server's lines
    said = "".join(server.lines[before:])
    assert "Traceback" not in said and "Exception in ASGI application" not in said, said


def test_concurrent_clients_all_succeed_and_share_forward_passes(server, runs) -> None:
    images = sorted((runs[0].parent / "cnn-data" / "images").rglob("*.png"))[:6]
    body, ctype = multipart([(images[0].name, images[0].read_bytes())], {"top_k": "2"})
    statuses: list[int] = []

    def client(i: int) -> None:
        for _ in range(3):
            statuses.append(server.request("POST", "/v1/predict", body, {"Content-Type": ctype})[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert statuses == [200] * 36
    status, models = server.request("GET", "/v1/models")
    stats = {m["name"]: m["batching"] for m in models["models"]}["cnn"]
    assert stats["items"] >= 36 and stats["largest_batch"] > 1, stats


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_the_api_docs_need_the_token(server, path) -> None:
    """The spec (and the page that shows it) names the served models: no token, no answer."""
    for headers in ({}, {"Authorization": "Bearer " + TOKEN[:-1] + "X"}, {"Cookie": "vislab_token=nope"}):
        status, head, body = fetch(server, path, headers)
        assert status == 401 and head["www-authenticate"] == "Bearer", (headers, status)
        assert b"cnn" not in body and b"abn" not in body and b"/v1/predict" not in body
    assert b"enter it on the page at / first" in fetch(server, "/docs")[2]
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Cookie": f"vislab_token={TOKEN}"}):  # Swagger UI sends the cookie
        status, _, body = fetch(server, path, headers)
        assert status == 200, (headers, status, body[:200])
    spec = json.loads(fetch(server, "/openapi.json", {"Authorization": f"Bearer {TOKEN}"})[2])
    assert spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["model"]["enum"] == ["cnn", "abn"]


def test_the_api_docs_load_nothing_from_the_network(server) -> None:
    """/docs names no other host; the Swagger UI files it names come from this server."""
    status, head, body = fetch(server, "/docs", {"Authorization": f"Bearer {TOKEN}"})
    html = body.decode()
    assert status == 200 and head["content-type"].startswith("text/html") and "SwaggerUIBundle(" in html
    assert not re.search(r"(https?:)?//[A-Za-z0-9]", html), "the docs page names another host"
    csp = head["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "//" not in csp
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sorted(assets) == ["/docs/favicon.png", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"]
    sizes = {}
    for path in assets:
        status, head, data = fetch(server, path)  # public: Swagger UI itself says nothing about the models
        assert status == 200, path
        sizes[path] = (head["content-type"].split(";")[0], len(data))
    assert sizes["/docs/swagger-ui-bundle.js"][0] == "text/javascript" and sizes["/docs/swagger-ui-bundle.js"][1] > 500_000
    assert sizes["/docs/swagger-ui.css"][0] == "text/css" and sizes["/docs/favicon.png"][0] == "image/png"


def test_the_api_docs_render_offline_in_chromium(server, browser) -> None:
    """With the page's cookie, Swagger UI renders the served spec, every request it made
    went to this server, and the policy blocked nothing it needed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)
    browser.delete_all_cookies()
    browser.get(server.url + "docs")
    assert "needs a token" in browser.find_element(By.TAG_NAME, "body").text
    browser.get(server.url + "#token=" + TOKEN)  # the page keeps the token in its cookie
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2)
    browser.get_log("browser")  # what the pages before said
    browser.get(server.url + "docs")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
    paths = {e.text.strip().replace("\u200b", "") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/v1/predict", "/v1/models", "/healthz"} <= paths
    enum = browser.execute_script(
        "return ui.specSelectors.specJson().getIn(['paths', '/v1/predict', 'post', 'requestBody', 'content',"
        " 'multipart/form-data', 'schema', 'properties', 'model', 'enum']).toJS()")
    assert enum == ["cnn", "abn"]
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    origin = server.url.rstrip("/")
    assert loaded and all(u.startswith(origin + "/") for u in loaded), loaded
    assert "/docs/swagger-ui-bundle.js" in " ".join(loaded) and origin + "/openapi.json" in loaded
    problems = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not problems, problems


def test_page_in_chromium_at_phone_width(server, runs, browser, tmp_path, keep_screenshot) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    images = sorted((runs[0].parent / "cnn-data" / "images").rglob("*.png"))
    photo = tmp_path / "photo.jpg"  # a bigger, real photo-like JPEG
    Image.open(images[0]).convert("RGB").resize((640, 480)).save(photo, quality=90)
    text = write_not_an_image(tmp_path / "notes.png")
    browser.set_window_size(390, 1400)
    wait = WebDriverWait(browser, 60)
    models_listed = lambda d: len(d.find_elements(By.CSS_SELECTOR, "#model option")) == 2  # noqa: E731
    # without the token, the page asks for it; a wrong one is said, the right one is kept in a cookie
    browser.delete_all_cookies()
    browser.get(server.url)
    wait.until(lambda d: d.find_element(By.ID, "auth").is_displayed())
    browser.find_element(By.ID, "token").send_keys("wrong-token-0123456789\n")
    wait.until(lambda d: d.find_element(By.ID, "auth-error").text == "wrong token")
    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(TOKEN + "\n")
    wait.until(models_listed)
    assert not browser.find_element(By.ID, "auth").is_displayed()
    # or the token comes in the address's fragment (never sent to a server) and leaves it at once
    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get(server.url + "#token=" + TOKEN)
    wait.until(models_listed)
    assert browser.execute_script("return location.hash") == ""
    assert not browser.find_element(By.ID, "auth").is_displayed()
    assert "classify" in browser.find_element(By.ID, "model-info").text
    browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in (photo, images[1], text)))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == 2 and d.find_elements(By.CSS_SELECTOR, ".card.failed"))

    classes = {"cat", "dog", "fox"}
    cards = browser.find_elements(By.CSS_SELECTOR, ".card.done")
    for card in cards:
        assert card.find_element(By.CSS_SELECTOR, ".pred-label").text in classes
        bars = card.find_elements(By.CSS_SELECTOR, ".topk li")
        assert len(bars) == 3 and all(b.find_element(By.CSS_SELECTOR, ".label").text in classes for b in bars)
        overlay = card.find_element(By.CSS_SELECTOR, "img.overlay")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) >= 224
        assert card.find_element(By.TAG_NAME, "figcaption").text.startswith("Grad-CAM of ")
    assert "640\u00d7480" in " ".join(c.find_element(By.CSS_SELECTOR, ".meta").text for c in cards)
    failed = browser.find_element(By.CSS_SELECTOR, ".card.failed .error").text
    assert failed.startswith("notes.png: cannot read image: not an image vislab reads")
    assert browser.find_element(By.ID, "download").is_enabled()
    # the ABN run: its own attention map instead of a CAM
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "model")).select_by_value("abn")
    browser.find_element(By.ID, "files").send_keys(str(images[2]))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == 3)
    newest = browser.find_element(By.CSS_SELECTOR, ".card.done")  # cards are added on top
    assert newest.find_element(By.TAG_NAME, "figcaption").text.startswith("Attention map")
    assert "abn" in newest.find_element(By.CSS_SELECTOR, ".meta").text
    assert browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 1

    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.width >= 300
    keep_screenshot(shot, "serve.png")


def test_sigterm_stops_the_server(server) -> None:
    """Graceful shutdown, then the exit status of the signal (143 in a shell), as `vislab train`."""
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == -signal.SIGTERM
    time.sleep(0.2)  # the reader thread takes the last lines
    assert "vislab serve: stopped\n" in server.lines
    assert not any("Traceback" in line for line in server.lines), "".join(server.lines)
