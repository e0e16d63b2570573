"""``create_app``: the FastAPI application of ``genmodels serve`` (A1111's ``/sdapi/v1`` routes
and the web page at ``/``).

Errors are JSON: 422 for a body that does not fit the schema (FastAPI's validation error, as
A1111), 400 ``{"error", "detail"}`` for a value the library refuses (size, sampler, steps,
limits, malformed base64, unreadable image), 413 for a body over ``--max-body-mb``, 401 without
the ``--api-auth`` credentials, 429 when the queue is full, 503 while stopping. A failure
inside a task is answered to its request; the worker and the server go on.
"""

from __future__ import annotations

import asyncio
import gc
import io
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import torch
from fastapi import Body, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from PIL import Image
from starlette.concurrency import run_in_threadpool

from genmodels.pipelines.metadata import parse_infotext
from genmodels.pipelines.preview import approximate_rgb, preview_image
from genmodels.serve.adapters import list_loras
from genmodels.serve.catalog import Catalog, CheckpointEntry
from genmodels.serve.codec import b64_png, decode_b64
from genmodels.serve.config import ServeConfig, load_model
from genmodels.serve.generation import generation_task, plan_generation
from genmodels.serve.listing import sampler_items, scheduler_items
from genmodels.serve.middleware import BasicAuth, BodyLimit
from genmodels.serve.schemas import (
    ImageResponse,
    ImageToImageRequest,
    PNGInfoRequest,
    PNGInfoResponse,
    ProgressResponse,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    TextToImageRequest,
)
from genmodels.serve.worker import QueueFull, ShuttingDown, Task, TaskContext, Worker

__all__ = ["create_app"]

_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_MAX_OPTIONS = 256


def _error(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": title, "detail": detail}, status_code=status)


class _Server:
    """The state behind the routes: configuration, checkpoints, worker, options."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.catalog = Catalog(config.ckpt, config.ckpt_dir)
        self.worker = Worker(config.max_queue)
        self.options: dict[str, Any] = {
            "return_grid": True,
            "samples_format": "png",
            "outdir_samples": str(config.outdir),
            "sd_vae": "Automatic" if config.vae is None else config.vae.name,
        }
        self.preview_cache: tuple[int, int, str] | None = None  # (latents id, step, base64)

    def load(self) -> None:
        """Load ``--ckpt`` (once; the CLI calls this before listening, to fail clearly)."""
        if self.worker.model is None:
            entry = self.catalog.hash(self.catalog.entries()[0])
            self.worker.model = load_model(self.config, entry)

    def start(self) -> None:
        self.load()
        self.worker.start()

    async def run(self, task: Task) -> Any:
        future = self.worker.submit(task)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # the client went away: a queued task is dropped
            raise

    def switch_task(self, entry: CheckpointEntry) -> Task:
        def switch(ctx: TaskContext) -> None:
            old = ctx.model.entry
            if old.path == entry.path:
                return
            ctx.set_model(None)  # one model in memory: release before loading the next
            gc.collect()
            try:
                ctx.set_model(load_model(self.config, self.catalog.hash(entry)))
            except BaseException:
                ctx.set_model(load_model(self.config, old))
                raise

        return Task("load", switch)

    def get_options(self) -> dict[str, Any]:
        model = self.worker.model
        current = {} if model is None else {
            "sd_model_checkpoint": model.entry.title, "sd_checkpoint_hash": model.entry.sha256,
        }  # fmt: skip
        return {**self.options, **current}

    def progress(self, skip_current_image: bool) -> dict[str, Any]:
        snap = self.worker.snapshot()
        preview = snap.pop("preview")
        model = self.worker.model
        if preview is not None and not skip_current_image and model is not None:
            snap["current_image"] = self._preview(preview, model)
        return snap

    def _preview(self, preview: tuple, model) -> str | None:
        step, latents = preview
        key = (id(latents), step)
        if self.preview_cache is not None and self.preview_cache[:2] == key:
            return self.preview_cache[2]
        rgb = approximate_rgb(latents, model.pipe.model_type)
        if rgb is None:
            return None
        f = model.pipe.vae.downsample_factor
        image = preview_image(rgb, (rgb.shape[-1] * f, rgb.shape[-2] * f))
        encoded = b64_png(image)
        self.preview_cache = (*key, encoded)
        return encoded


def _png_info(req: PNGInfoRequest, max_pixels: int | None) -> dict[str, Any]:
    """A1111's ``/png-info``: the ``parameters`` text, the other text chunks, the parsed text."""
    data = decode_b64(req.image, "image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ValueError(f"image: {im.width}x{im.height} is more than {max_pixels} pixels")
            im.load()  # text chunks after the pixel data too
            info = dict(im.info)
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image: cannot read it ({exc})") from None
    text = info.pop("parameters", None)
    items = {k: v for k, v in info.items() if isinstance(k, str) and isinstance(v, str)}
    if not isinstance(text, str) or not text.strip():
        return dict(info="", items=items, parameters={})
    return dict(info=text, items=items, parameters=parse_infotext(text))


def _routes(app: FastAPI, server: _Server) -> None:
    api = "/sdapi/v1"

    async def generate(mode: str, req: TextToImageRequest) -> dict:
        grid = bool(server.options.get("return_grid", True))
        # no reference to the model is kept while the task waits: a checkpoint switch queued
        # before it can release the old model
        plan = await run_in_threadpool(
            plan_generation, mode, req, server.config, server.worker.model, grid
        )
        return await server.run(generation_task(plan, server.config))

    @app.post(f"{api}/txt2img", response_model=ImageResponse)
    async def txt2img(req: TextToImageRequest) -> dict:
        return await generate("txt2img", req)

    @app.post(f"{api}/img2img", response_model=ImageResponse)
    async def img2img(req: ImageToImageRequest) -> dict:
        return await generate("img2img", req)

    @app.get(f"{api}/progress", response_model=ProgressResponse)
    async def progress(skip_current_image: bool = False) -> dict:
        return await run_in_threadpool(server.progress, skip_current_image)

    @app.post(f"{api}/interrupt")
    async def interrupt() -> dict:
        server.worker.interrupt()
        return {}

    @app.post(f"{api}/skip")
    async def skip() -> dict:
        server.worker.interrupt(skip=True)
        return {}

    @app.get(f"{api}/samplers", response_model=list[SamplerItem])
    async def samplers() -> list:
        return sampler_items()

    @app.get(f"{api}/schedulers", response_model=list[SchedulerItem])
    async def schedulers() -> list:
        return scheduler_items()

    @app.get(f"{api}/sd-models", response_model=list[SDModelItem])
    async def sd_models() -> list:
        return [e.item() for e in await run_in_threadpool(server.catalog.entries)]

    @app.post(f"{api}/refresh-checkpoints")
    async def refresh_checkpoints() -> None:
        return None  # the list is read from the folder on every request

    @app.get(f"{api}/scripts")
    async def scripts() -> dict:
        return {"txt2img": [], "img2img": []}

    # lists of things this server does not have (no upscalers, VAEs besides --vae, styles,
    # face restorers, hypernetworks): empty, as A1111 without them, so clients that read them
    # on connect work
    for path in ("upscalers", "latent-upscale-modes", "prompt-styles", "face-restorers",
                 "hypernetworks"):  # fmt: skip
        app.get(f"{api}/{path}")(_empty_list)

    @app.get(f"{api}/loras")
    async def loras() -> list:
        return await run_in_threadpool(list_loras, server.config.lora_dirs)

    @app.post(f"{api}/refresh-loras")
    async def refresh_loras() -> None:
        return None  # the folders are read on every request

    @app.get(f"{api}/sd-vae")
    async def sd_vae() -> list:
        vae = server.config.vae
        return [] if vae is None else [{"model_name": vae.stem, "filename": str(vae)}]

    @app.get(f"{api}/options")
    async def get_options() -> dict:
        return server.get_options()

    @app.post(f"{api}/options")
    async def set_options(body: dict[str, Any] = Body(...)) -> None:  # noqa: B008
        if "sd_model_checkpoint" in body:
            entry = await run_in_threadpool(server.catalog.find, body["sd_model_checkpoint"])
            await server.run(server.switch_task(entry))
        if "return_grid" in body and not isinstance(body["return_grid"], bool):
            raise ValueError(f"return_grid must be true or false, got {body['return_grid']!r}")
        rest = {k: v for k, v in body.items() if k not in ("sd_model_checkpoint",
                                                          "sd_checkpoint_hash")}  # fmt: skip
        if len(server.options.keys() | rest.keys()) > _MAX_OPTIONS:
            raise ValueError(f"at most {_MAX_OPTIONS} options are kept")
        server.options.update(rest)
        return None

    @app.post(f"{api}/png-info", response_model=PNGInfoResponse)
    async def png_info(req: PNGInfoRequest) -> dict:
        return await run_in_threadpool(_png_info, req, server.config.limits.max_pixels)

    @app.get("/")
    async def index() -> Response:
        return _static("index.html")

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in _STATIC:
            return _error(404, "Not Found", f"no static file {name!r}")
        return _static(name)


async def _empty_list() -> list:
    return []


def _static(name: str) -> Response:
    data = resources.files("genmodels.serve").joinpath("static", name).read_bytes()
    return Response(data, media_type=_STATIC[name], headers={"cache-control": "no-cache"})


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return _error(400, "Bad Request", " ".join(str(exc).split()))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return _error(429, "Too Many Requests", str(exc))

    @app.exception_handler(ShuttingDown)
    async def stopping(request: Request, exc: ShuttingDown) -> JSONResponse:
        return _error(503, "Service Unavailable", str(exc))

    @app.exception_handler(MemoryError)
    async def memory(request: Request, exc: MemoryError) -> JSONResponse:
        return _error(503, "Out Of Memory", "out of memory; use a smaller size or batch")

    @app.exception_handler(torch.OutOfMemoryError)
    async def device_memory(request: Request, exc: Exception) -> JSONResponse:
        return _error(503, "Out Of Memory", "out of device memory; use a smaller size or batch")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # a bug, not a bad request: answered as JSON (uvicorn logs the traceback); the worker
        # and the server go on
        return _error(500, type(exc).__name__, " ".join(str(exc).split()) or "internal error")


def create_app(config: ServeConfig) -> Any:
    """The ASGI application (FastAPI wrapped in the body-limit and auth middleware). The model
    is loaded and the worker started when the server starts (ASGI lifespan), and stopped with
    it; ``app.state.server`` holds the worker."""
    server = _Server(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(server.start)
        try:
            yield
        finally:
            await run_in_threadpool(server.worker.shutdown)

    # no /docs: FastAPI's Swagger page loads its scripts from a CDN; /openapi.json stays
    app = FastAPI(title="genmodels serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    if config.cors_origins:  # A1111's --cors-allow-origins
        origins = list(config.cors_origins)
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)  # fmt: skip
    _routes(app, server)
    _handlers(app)
    wrapped = BodyLimit(BasicAuth(app, config.auth), config.max_body_bytes)
    wrapped.state = app.state  # type: ignore[attr-defined]
    wrapped.server = server  # type: ignore[attr-defined]
    return wrapped
