"""The web service of `vislab serve`: a FastAPI app over task predictors and their batchers.

Routes: `/` the page (one self-contained file, no network), `POST /v1/predict` (multipart
images plus `model` and the task's option fields), `GET /v1/models`, `GET /healthz`, and
`/openapi.json` with its Swagger UI page `/docs` (`vislab.serve.docs`: no CDN).

Hostile or broken input ends in a 4xx with a one-line `detail`, never a traceback:
- request bodies are counted while they stream in (`BodyLimit`): a declared size over the
  limit is refused before a byte is read, an undeclared one as soon as it passes the limit;
- images are decoded by `vislab.data.io.load_image` (pixel limit against decompression
  bombs; anything Pillow cannot read is one `ImageDecodeError`): 422 naming the upload; at
  most `Limits.decode_slots` images decode at once in the whole server, whatever the number
  of requests and files, so decoding memory is bounded by slots x pixel limit x ~5 bytes;
- the multipart body is parsed strictly (`FormParser`): a body without its closing boundary
  (a truncated upload) is a 400, not a form of the parts that happened to arrive;
- with a token, `/v1/*`, `/openapi.json` and `/docs` (which name the served models) need
  `Authorization: Bearer TOKEN` (or the page's cookie), compared in constant time: 401
  otherwise;
- the model is looked up by name among those served; nothing a request sends is a path, so
  no request reads or writes a file (the run directories are read once, at start-up); uploads
  stay in memory up to the body limit (`read_form`), never spooled to $TMPDIR.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator, Sequence
from urllib.parse import unquote

import anyio
import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from python_multipart.multipart import parse_options_header
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from vislab import __version__
from vislab.data.io import ImageDecodeError, load_image, probe
from vislab.errors import VislabError
from vislab.fsguard import SERVE_MAX_PIXELS, printable
from vislab.serve.batching import MicroBatcher, QueueFull
from vislab.serve.csp import inline_hashes
from vislab.serve.docs import add_docs
from vislab.serve.predictors import OptionsError, Predictor

log = logging.getLogger("vislab.serve")

TOKEN_COOKIE = "vislab_token"
IMAGE_FIELD = "image"
MODEL_FIELD = "model"
MAX_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024  # an option value; images are files, bounded by the body limit
NAME_CHARS = 200
DECODE_SLOTS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how the model batches are formed."""

    max_upload_bytes: int = 20 * 1024 * 1024  # the whole request body
    max_pixels: int = SERVE_MAX_PIXELS  # larger headers are decompression bombs
    max_files: int = 32  # images per request
    max_batch: int = 32  # images per forward pass
    window_ms: float = 5.0  # how long a batch's first image waits for others
    max_queue: int = 1024  # images waiting per model before requests get 503
    decode_slots: int = DECODE_SLOTS  # images decoding at once in the whole server (memory)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared:,} bytes" if declared is not None else "the request body"
        super().__init__(413, f"{size} over the {limit:,}-byte upload limit; send fewer or smaller images (the server's --max-upload-mb)")


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes without reading (or keeping) the rest.

    A declared Content-Length over the limit gets 413 at once; a chunked body is counted as
    it arrives and the request fails with 413 when the count passes the limit, so a 2 GB
    upload costs the server at most `limit` bytes of reading."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = int(limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            size = int(declared) if declared.isdigit() else None
            if size is None or size > self.limit:
                detail = BodyTooLarge(self.limit, size).detail if size is not None else "Content-Length: not a number of bytes"
                await JSONResponse({"detail": detail}, 413 if size is not None else 400)(scope, receive, send)
                return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


def page_html() -> str:
    return resources.files("vislab.serve").joinpath("page.html").read_text(encoding="utf-8")


def content_security_policy(html: str) -> str:
    """Only the page's own inline script and style run (by hash), and it talks to this
    server only: the page cannot load anything from the network, even by mistake."""
    return (
        f"default-src 'none'; script-src {inline_hashes(html, 'script')}; style-src {inline_hashes(html, 'style')}; "
        "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    )


def upload_name(upload: UploadFile, index: int) -> str:
    """The client's file name as one printable line (never used as a path)."""
    name = printable(upload.filename or "").strip()
    return (name[:NAME_CHARS] + "...") if len(name) > NAME_CHARS else (name or f"upload {index + 1}")


def token_problem(request: Request, token: str | None) -> str | None:
    """Why this request is not authorized, or None. The comparison takes constant time."""
    if token is None:
        return None
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header[:7].lower() == "bearer " else unquote(request.cookies.get(TOKEN_COOKIE, ""))
    if not given:
        return "this server needs a token: send the header Authorization: Bearer TOKEN"
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8")):
        return "wrong token"
    return None


def predict_request_schema(predictors: Sequence[Predictor]) -> dict[str, Any]:
    """The multipart body of /v1/predict for the OpenAPI docs: images, model, and every
    served task's option fields (each says which task it belongs to)."""
    props: dict[str, Any] = {
        IMAGE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "One or more images (JPEG, PNG, WebP, ...)."},
        MODEL_FIELD: {"type": "string", "enum": [p.name for p in predictors], "default": predictors[0].name, "description": "Which served model (GET /v1/models)."},
    }
    for p in predictors:
        for key, schema in p.Options.model_json_schema().get("properties", {}).items():
            entry = props.setdefault(key, {k: v for k, v in schema.items() if k != "title"})
            tasks = entry.setdefault("x-tasks", [])
            if p.task not in tasks:
                tasks.append(p.task)
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD], "properties": props}}}}}


def decode_and_prepare(predictor: Predictor, data: bytes, options: Any, max_pixels: int) -> tuple[Any, int, int]:
    """(the predictor's item, width, height) of one uploaded image; runs in a request thread.
    The size is the upload's as displayed (EXIF orientation applied), not the size a JPEG
    was decoded at for a small model. An image decoded at full scale gives it exactly (boxes
    are in its pixels); a header-only probe would miss an orientation stored after a PNG's
    pixels. Only a JPEG decodes smaller, and its orientation is in its header: the probe's."""
    image = load_image(data, predictor.size_hint, max_pixels=max_pixels)
    info = probe(data)
    full_scale = image.size in ((info.stored_width, info.stored_height), (info.stored_height, info.stored_width))
    width, height = image.size if full_scale else (info.width, info.height)
    return predictor.preprocess(image, options), width, height


class FormParser(MultiPartParser):
    """Starlette's multipart parser, strict where it would answer a mistaken request wrongly:
    a body that ends before its closing boundary (`ended` stays False), an `image` part
    without filename= (it would be read as a text field, and one over 64 KB refused as too
    large), `model` sent as a file, more files than --max-files (said with the flag's name)."""

    ended = False

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._current_part.content_disposition)
        name, is_file = options.get(b"name", b"").decode("latin-1"), b"filename" in options
        if name == IMAGE_FIELD and not is_file:
            raise HTTPException(422, f"{IMAGE_FIELD}: must be a file upload (a part with filename=\"...\"; filename*= alone is not one), not a text field")
        if name == MODEL_FIELD and is_file:
            raise HTTPException(422, f"{MODEL_FIELD}: must be a text field, not a file")
        if is_file and self._current_files >= self.max_files:
            raise HTTPException(400, f"more than {self.max_files} files in one request (the server's --max-files); send them in several requests")
        super().on_headers_finished()

    def on_end(self) -> None:
        self.ended = True


def multipart_problem(err: MultiPartException) -> str:
    """One line for what Starlette says of a malformed body, naming the cause it hides."""
    cause = err.__cause__
    if cause is not None and str(cause).startswith("Maximum header size"):
        return "a part's header line is too long for the multipart parser (a file name of thousands of characters?); send a shorter file name"
    return f"{err.message.rstrip('.')} ({one_line(cause)})" if cause is not None else err.message


async def read_form(request: Request, limits: Limits) -> FormData:
    """The request's form with its files in memory: Starlette spools a file part over 1 MB to
    $TMPDIR, which would make a request write a file (and a full disk answer 500). The body
    limit already bounds the memory, so the spool is as large as that limit. An OSError while
    reading is the server's condition, said as a JSON 503. Only multipart/form-data carries
    files: another body type is a 415 (none, or a urlencoded form, reads as a form without)."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in ("", "multipart/form-data", "application/x-www-form-urlencoded"):
        raise HTTPException(415, f"Content-Type {printable(content_type)[:NAME_CHARS]}: send the images as multipart/form-data (curl -F image=@photo.jpg)")
    try:
        if content_type != "multipart/form-data":  # a urlencoded form or none: no files to spool
            return await request.form(max_files=limits.max_files, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
        parser = FormParser(request.headers, request.stream(), max_files=limits.max_files, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES)
        parser.spool_max_size = limits.max_upload_bytes
        form = await parser.parse()
    except ClientDisconnect:  # nobody to answer; one log line, not an "Exception in ASGI application"
        log.info("a client disconnected before its upload ended")
        raise HTTPException(400, "the client disconnected before the upload ended") from None
    except MultiPartException as err:
        raise HTTPException(400, multipart_problem(err)) from None
    except OSError as err:
        log.error("reading an upload failed", exc_info=err)
        why = os.strerror(err.errno) if err.errno else one_line(err)
        raise HTTPException(503, f"the server cannot take uploads now ({why}); try again later", headers={"Retry-After": "5"}) from None
    if not parser.ended:
        await form.close()
        raise HTTPException(400, "multipart body ended before its closing boundary (truncated upload); send the whole request again")
    return form


def one_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def create_app(predictors: Sequence[Predictor], token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The app serving `predictors` (names unique; the first is the default model)."""
    if not predictors:
        raise VislabError("no model to serve; pass one or more run directories")
    by_name = {p.name: p for p in predictors}
    batchers = {
        p.name: MicroBatcher(p.predict_batch, limits.max_batch, limits.window_ms / 1000.0, limits.max_queue, name=p.name) for p in predictors
    }
    decoding = anyio.CapacityLimiter(max(1, limits.decode_slots))  # shared by every request: bounds decoding memory
    page = page_html()
    page_headers = {
        "Content-Security-Policy": content_security_policy(page),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for b in batchers.values():
            b.start()
        yield
        for b in batchers.values():
            await b.stop()

    app = FastAPI(
        title="vislab serve",
        version=__version__,
        description="Predictions of trained vislab runs. The page is at /; the API under /v1.",
        lifespan=lifespan,
        openapi_url=None,  # vislab.serve.docs routes the spec and /docs: offline, behind the token
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=limits.max_upload_bytes)
    app.state.batchers = batchers

    def require_token(request: Request) -> None:
        problem = token_problem(request, token)
        if problem:
            raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})

    add_docs(app, require_token)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=page_headers)

    @app.get("/healthz", summary="Liveness: the server runs and its models are loaded")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": len(predictors)}

    @app.get("/v1/models", summary="The served models: task, classes, input spec, options, run metrics")
    async def models(request: Request) -> dict[str, Any]:
        require_token(request)
        return {
            "default": predictors[0].name,
            "models": [{**p.describe(), "batching": batchers[p.name].stats.to_dict()} for p in predictors],
            "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels, "max_files": limits.max_files,
                       "max_batch": limits.max_batch, "window_ms": limits.window_ms, "decode_slots": limits.decode_slots},
        }

    @app.post(
        "/v1/predict",
        summary="Predict one or more images with a served model",
        openapi_extra=predict_request_schema(predictors),
        responses={401: {"description": "Missing or wrong token"}, 404: {"description": "No such model"},
                   413: {"description": "Upload over the size limit"}, 422: {"description": "Not an image, a corrupt one, a decompression bomb, or a bad option"},
                   503: {"description": "Too many images waiting, or uploads cannot be read now"}},
    )
    async def predict(request: Request) -> dict[str, Any]:
        require_token(request)
        started = time.perf_counter()
        form = await read_form(request, limits)
        try:
            for key in dict.fromkeys(k for k, _ in form.multi_items() if k != IMAGE_FIELD):
                if len(form.getlist(key)) > 1:
                    raise HTTPException(422, f"{printable(key)[:NAME_CHARS]} given twice; send each option once")
            name = form.get(MODEL_FIELD) or predictors[0].name
            if not isinstance(name, str) or name not in by_name:
                shown = printable(name)[:NAME_CHARS] if isinstance(name, str) else "a file"
                raise HTTPException(404, f"model {shown!r} is not served here; models: {', '.join(by_name)}")
            predictor = by_name[name]
            uploads = form.getlist(IMAGE_FIELD)
            if not uploads:
                raise HTTPException(422, f"{IMAGE_FIELD}: no image; send one or more files as multipart fields named {IMAGE_FIELD!r}")
            if any(not isinstance(u, UploadFile) for u in uploads):
                raise HTTPException(422, f"{IMAGE_FIELD}: must be a file upload, not a text field")
            fields: dict[str, str] = {}
            for key, value in form.multi_items():
                if key in (IMAGE_FIELD, MODEL_FIELD):
                    continue
                if not isinstance(value, str):
                    raise HTTPException(422, f"{printable(key)[:NAME_CHARS]}: must be a text field, not a file")
                fields[key] = value
            try:
                options = predictor.parse_options(fields)
            except OptionsError as err:
                raise HTTPException(422, str(err)) from None
            files = [(upload_name(u, i), await u.read()) for i, u in enumerate(uploads)]  # type: ignore[union-attr]
        finally:
            await form.close()
        prepared = await asyncio.gather(
            *(anyio.to_thread.run_sync(decode_and_prepare, predictor, data, options, limits.max_pixels, limiter=decoding) for _, data in files),
            return_exceptions=True,
        )
        for (file_name, _), item in zip(files, prepared):
            if isinstance(item, ImageDecodeError):
                raise HTTPException(422, f"{file_name}: cannot read image: {item.reason}")
            if isinstance(item, VislabError):
                raise HTTPException(422, f"{file_name}: {item}")
            if isinstance(item, BaseException):
                log.error("preparing %s failed", file_name, exc_info=item)
                raise HTTPException(500, f"{file_name}: preparing the image failed ({one_line(item)})")
        try:
            results = await asyncio.gather(*(batchers[name].submit(item[0], options) for item in prepared))
        except QueueFull as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from None
        except Exception as err:  # noqa: BLE001 - a model failure is the server's, said in one line
            log.error("inference with %s failed", name, exc_info=err)
            raise HTTPException(500, f"inference failed ({one_line(err)})") from None
        try:  # the model's thread is free again: what needs no model (pictures) is done in this request's thread
            results = await run_in_threadpool(lambda: [predictor.finish(item[0], result) for item, result in zip(prepared, results)])
        except Exception as err:  # noqa: BLE001 - the server's failure, said in one line
            log.error("finishing results of %s failed", name, exc_info=err)
            raise HTTPException(500, f"finishing the results failed ({one_line(err)})") from None
        return {
            "model": name,
            "task": predictor.task,
            "engine": predictor.engine,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "results": [
                {"file": file_name, "width": item[1], "height": item[2], **result}
                for (file_name, _), item, result in zip(files, prepared, results)
            ],
        }

    return app
