"""The Ray Serve application: classify a video over HTTP with a trained model.

``app`` (deployment ``ActionRecognizer``) reads its settings from the environment: the model from
``RESLSTM_MODEL_URI`` (anything ``jobs/predict.py --model`` takes; ``models:/NAME@ALIAS`` with
``MLFLOW_TRACKING_URI``), and any ``PredictConfig`` / ``ServeConfig`` field from
``RESLSTM_<FIELD>`` (``RESLSTM_ALLOW_PREFIX`` takes prefixes separated by spaces;
``RESLSTM_TOKEN`` the token itself). ``build(args)`` makes the same application from ``serve run
reslstm.distributed.serve.app:build model=... replicas=2`` arguments, ``start(cfg)`` from Python
(``jobs/serve.py``, the tests, ``benchmarks/serve.py`` and ``benchmarks/serve_load.py``);
``cluster/serve.yaml`` is a Serve config for ``serve run`` / ``serve deploy``.

Routes (JSON answers; README "Predicting new videos" and "Serving"):

    POST /predict   the video as the raw body, or multipart/form-data with a file field; or
                    JSON {"path": "..."} naming a path or URI under an allowed prefix
                    (``access``). Query: top_k (5), probabilities (false: also the full
                    softmax of each head), video_id.
                    200: ``reslstm.inference.predictor.Prediction.to_dict``.
    GET  /health    200 {"status": "ok", ...} once the replica has its model (no token needed).
    GET  /          what this endpoint serves: model, classes, routes, limits.

Every bad request gets a 4xx with {"error", "message"}, never a traceback: 400 (empty body, bad
JSON, form or query), 401 (no or a wrong token), 403 (a location not allowed), 404/405, 413
(larger than ``max_upload_mb``), 422 (not a video, truncated, corrupt: the typed errors of
extraction, ``error`` = e.g. ``VideoDecodeError:truncated``). Serve's proxy answers 503 with
``Retry-After`` when the queue (``max_queued_requests``) is full; a request past
``request_timeout`` gets 504, its work stops at the next segment and the replica goes on. An
unexpected error is a 500 with one line.

Each replica loads the model and extractors once. It decodes one video at a time (in a thread,
so /health answers meanwhile); the 3D CNN step of segments from concurrent requests, and their
model step, run together (``@serve.batch``, up to ``max_batch`` waiting ``batch_wait_ms``): on a
GPU the clips of those segments share the forward passes, on a CPU each segment keeps its own
(the same numbers as one request at a time, to the bit).
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures' annotations
# (``request: Request``) at run time, and Serve's ingress re-binds the methods elsewhere.
import asyncio
import dataclasses
import logging
import os
import shutil
import tempfile
import threading
import time
import typing
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from reslstm.configs import PredictConfig, ServeConfig
from reslstm.distributed.predict.files import describe, load_model
from reslstm.errors import ConfigError
from reslstm.inference.predictor import Predictor, VideoFailed

from .access import Locations, Token
from .request_body import BadRequest, flag, named_path, save_body, split_multipart, too_large, top_k

log = logging.getLogger(__name__)

MODEL_ENV = "RESLSTM_MODEL_URI"
ENV_PREFIX = "RESLSTM_"  # RESLSTM_<FIELD> sets a PredictConfig / ServeConfig field
ROUTES = ("POST /predict", "GET /health", "GET /")

api = FastAPI(title="reslstm action recognition", docs_url=None, redoc_url=None,
              openapi_url=None)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods: the routes there are, not FastAPI's bare detail."""
    names = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse({"error": names.get(exc.status_code, "http_error"),
                         "message": f"{exc.detail}: {request.method} {request.url.path}; this "
                                    f"endpoint serves {', '.join(ROUTES)}"},
                        status_code=exc.status_code)


def config_from_env(environ=os.environ) -> ServeConfig:
    """The app's settings from the environment (module docstring)."""
    ref = environ.get(MODEL_ENV)
    if not ref:
        raise ConfigError(f"set {MODEL_ENV} to the model to serve (a run directory, checkpoint, "
                         "model.pt or models:/NAME@ALIAS), or use reslstm.distributed.serve.app:build")
    args = {f.name: environ[ENV_PREFIX + f.name.upper()]
            for cls in (PredictConfig, ServeConfig) for f in dataclasses.fields(cls)
            if f.metadata.get("cli", True) and environ.get(ENV_PREFIX + f.name.upper())}
    return config_from_args({**args, "model": ref})


def time_limit(seconds: float) -> JSONResponse:
    return JSONResponse({"error": "timeout", "message": f"the classification took longer than "
                         f"{seconds:g} s (request_timeout); try a shorter video"}, status_code=504)


@serve.deployment(name="ActionRecognizer", num_replicas=1, max_ongoing_requests=4,
                  ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class ActionRecognizer:
    """One replica: the model and its extraction chain, loaded once (module docstring)."""

    def __init__(self, config: ServeConfig | None = None):
        from reslstm.cli import setup_console
        from reslstm.extraction.stages import limit_threads

        setup_console()
        self.config = config or config_from_env()
        cfg = self.config.predict or config_from_env().predict
        self.token = Token(self.config.token_file)  # before the model: a bad file fails at once
        self.locations = Locations(self.config.allow_prefix)
        model, payload = load_model(cfg.model, cfg.mlflow_uri)
        self.predictor = Predictor(model, payload, cfg)
        # torch and OpenCV on the CPUs this replica reserved (a CPU-less one: one thread),
        # whatever set them: ServeConfig, a Serve config file's ray_actor_options.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
        limit_threads(max(1, int(round(cpus))))
        self.limit = int(self.config.max_upload_mb * 2 ** 20)
        self.decoding = threading.Lock()  # one video decoded at a time per replica
        self.working, self.counting = 0, threading.Lock()  # videos being classified now
        self.active = 0  # requests in this replica (the event loop's count: no lock needed)
        self.pack = self.predictor.features.device.type == "cuda"
        for step in (self._features, self._heads):
            step.set_max_batch_size(self.config.max_batch)
            step.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000)
        self.tmp = Path(tempfile.mkdtemp(prefix="reslstm-serve-", dir=self.config.upload_dir))
        log.info(f"replica ready: {describe(self.predictor)}")
        if not self.token.required:
            log.warning("this endpoint is unauthenticated: anyone who reaches its port may "
                        "classify videos (set --token-file, or RESLSTM_TOKEN)")

    def __del__(self):
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)

    # -- routes -------------------------------------------------------------------------------
    @api.get("/health")
    def health(self) -> dict:
        head = self.predictor.head
        return {"status": "ok", "model": self.predictor.cfg.model, "fusion": head.fusion,
                "classes": len(head.label_names)}

    @api.get("/")
    def info(self, request: Request) -> JSONResponse:
        try:
            self.token.check(request.headers.get("authorization"))
        except BadRequest as exc:
            return exc.response()
        p, c = self.predictor, self.config
        return JSONResponse({
            "model": p.cfg.model, "fusion": p.head.fusion, "streams": list(p.head.streams),
            "labels": p.label_names, "routes": list(ROUTES), "max_upload_mb": c.max_upload_mb,
            "paths": self.locations.describe(), "token": self.token.required,
            "request_timeout": c.request_timeout, "max_batch": c.max_batch,
            "working": self.working,
            "extraction": {"extractor": p.stage.extractor, "weights": p.stage.weights_ids,
                           "clip_len": p.stage.clip_len, "clip_stride": p.stage.clip_stride,
                           "crops": p.stage.crops, "flow": p.stage.flow_method}})

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        work = Path(tempfile.mkdtemp(dir=self.tmp))
        cancel = threading.Event()
        try:
            self.token.check(request.headers.get("authorization"))
            return await asyncio.wait_for(self._predict(request, work, cancel),
                                          self.config.request_timeout)
        except BadRequest as exc:
            return exc.response()
        except TimeoutError:
            return time_limit(self.config.request_timeout)
        except ClientDisconnect:  # an upload cut off: nobody to answer, nothing to keep
            log.info("a client went away during its upload; its partial file is removed")
            return JSONResponse({"error": "disconnected", "message": "the upload was cut off"},
                                status_code=400)
        except Exception as exc:  # noqa: BLE001 - a one-line 500, the traceback only in the log
            log.exception("prediction failed")
            return JSONResponse({"error": "internal", "message": f"{type(exc).__name__}: {exc}"
                                 .splitlines()[0]}, status_code=500)
        finally:  # also when the client went away (the task is cancelled): nothing stays
            cancel.set()
            shutil.rmtree(work, ignore_errors=True)

    # -- the work -----------------------------------------------------------------------------
    async def _predict(self, request: Request, work: Path, cancel: threading.Event) -> JSONResponse:
        q = request.query_params
        k, full = top_k(q.get("top_k")), flag(q.get("probabilities"), "probabilities")
        path, name = await self._video(request, work)
        video_id = str(q.get("video_id") or name)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        self.active += 1
        try:
            joined = await asyncio.to_thread(self._joined, str(path), video_id, str(name),
                                             cancel, loop)
            item = (video_id, str(name), joined)
            if self.active > 1:
                pred, batch = await self._heads(item)
            else:  # alone: no batch to wait for
                (pred,), batch = await asyncio.to_thread(self.predictor.head.predictions, [item]), 1
        finally:
            self.active -= 1
        seconds = time.perf_counter() - start
        # Server-Timing: the classification's own time, apart from HTTP and the upload, and
        # how many requests shared its model step.
        return JSONResponse(pred.to_dict(k, probabilities=full), headers={
            "Server-Timing": f"predict;dur={1000 * seconds:.1f}, batch;desc=\"{batch}\""})

    async def _video(self, request: Request, work: Path) -> tuple[object, str]:
        """(what to open, how answers name it): an upload, or a location a request names."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            return self._location(await named_path(request, work / "body.json"))
        body = work / "body"
        await save_body(request, body, self.limit)
        path, name = body, "upload"
        if ctype == "multipart/form-data":
            filename, fields = split_multipart(body, request.headers["content-type"], work / "video")
            if filename is not None:
                path, name = work / "video", filename
            elif "path" in fields:
                return self._location(fields["path"])
            else:
                raise BadRequest(400, "bad_form", "the form has no file field (send the video "
                                 "as a file, e.g. curl -F video=@clip.mp4)")
        if path.stat().st_size == 0:
            raise BadRequest(400, "empty", "the request has no video in it (0 bytes): send the "
                             "file as the body or as a form file field")
        return path, name

    def _location(self, named: str) -> tuple[str, str]:
        """A path or URI a request names: allowed (``access.Locations``) and within the size
        limit (a file that cannot be read passes: the decoder names why, with its typed error)."""
        from reslstm import storage

        opened, shown = self.locations.check(named)
        try:
            size = storage.resolve(opened).size()
        except (OSError, ValueError):
            size = 0
        if size > self.limit:
            raise too_large(size, self.limit)
        return opened, shown

    def _joined(self, path: str, video_id: str, name: str, cancel: threading.Event, loop):
        """In a thread: decode the video (one at a time), its segments' features batched with
        other requests' (``_features``), joined per stream."""
        def features(rows: list[dict]) -> list[dict]:
            if self.active <= 1:  # alone: no batch to wait for
                return self.predictor.features.rows(rows, self.pack)
            self.decoding.release()  # let the next video decode while this one waits
            try:
                return asyncio.run_coroutine_threadsafe(self._features(rows), loop).result()
            finally:
                self.decoding.acquire()

        with self.counting:
            self.working += 1
        try:
            with self.decoding:
                return self.predictor.joined(path, video_id, features, cancel)
        except VideoFailed as exc:
            f = exc.failures[0]
            message = str(f["message"]).replace(path, name)
            raise BadRequest(422, f["error_type"], f"{message} (stage: {f['stage']})") from None
        finally:
            with self.counting:
                self.working -= 1

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _features(self, items: list[list[dict]]) -> list[list[dict]]:
        """The 3D CNN over the segments of concurrent requests (module docstring)."""
        rows = [row for item in items for row in item]
        out = await asyncio.to_thread(self.predictor.features.rows, rows, self.pack)
        sizes, result, done = [len(item) for item in items], [], 0
        for n in sizes:
            result.append(out[done:done + n])
            done += n
        return result

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _heads(self, items: list[tuple]) -> list[tuple]:
        """The model over the joined features of concurrent requests: one forward pass."""
        preds = await asyncio.to_thread(self.predictor.head.predictions, items)
        return [(p, len(items)) for p in preds]


# ---------------------------------------------------------------------------------------------
# Making the application
# ---------------------------------------------------------------------------------------------

def application(cfg: ServeConfig):
    """The application for ``cfg``: replicas (a fixed count or autoscaling), their CPUs and
    GPUs, the requests each takes and the queue in front of them."""
    scale = ({"autoscaling_config": cfg.autoscaling} if cfg.autoscaling
             else {"num_replicas": cfg.replicas})
    return ActionRecognizer.options(
        **scale, max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": cfg.retry_after},
        ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
    ).bind(cfg)


def _typed(cls, args: dict) -> dict:
    """String arguments (``serve run ... key=value``, ``RESLSTM_<FIELD>``) as the field types of
    dataclass ``cls``; a list field takes its values separated by spaces or commas."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in args or f.metadata.get("cli", True) is False:
            continue
        value, kind = args[f.name], hints[f.name]
        base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        if isinstance(value, str):
            if tuple in (typing.get_origin(kind), typing.get_origin(base[0])):
                value = tuple(value.replace(",", " ").split())
            elif base[0] is bool:
                value = value.lower() in ("1", "true", "yes")
            elif base[0] in (int, float):
                value = base[0](value)
        out[f.name] = value
    return out


def config_from_args(args: dict) -> ServeConfig:
    """A ``ServeConfig`` (with its ``PredictConfig``) from ``key=value`` arguments."""
    unknown = set(args) - {f.name for f in dataclasses.fields(PredictConfig)} \
        - {f.name for f in dataclasses.fields(ServeConfig)}
    if unknown:
        raise ConfigError(f"unknown argument(s) {sorted(unknown)} for the reslstm Serve app")
    predict = PredictConfig(**_typed(PredictConfig, args))
    return ServeConfig(predict=predict, **_typed(ServeConfig, args))


def build(args: dict):
    """Application builder for ``serve run reslstm.distributed.serve.app:build model=RUN_DIR
    replicas=2 replica_cpus=1 max_upload_mb=200 ...`` (``PredictConfig`` and ``ServeConfig``
    fields; ``model`` defaults to ``RESLSTM_MODEL_URI``)."""
    args = dict(args)
    args.setdefault("model", os.environ.get(MODEL_ENV))
    return application(config_from_args(args))


def start(cfg: ServeConfig, name: str = "reslstm", quiet: bool = False,
          route_prefix: str = "/") -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` in the connected Ray (if it is not
    running) and run the app there under ``route_prefix``; returns its URL. ``quiet``: Serve's
    own logs at ERROR (not a warning per request the full queue turns away), no access log."""
    logging_config = {"log_level": "ERROR", "enable_access_log": False} if quiet else None
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve notes
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging_config)
    serve.run(application(cfg), name=name, route_prefix=route_prefix,
              logging_config=logging_config)
    return f"http://{cfg.host}:{cfg.port}{route_prefix.rstrip('/')}"

def serve_until_stopped(cfg: ServeConfig) -> int:
    """``jobs/serve.py``: start the app on a cluster or a local Ray, then wait for Ctrl-C."""
    from reslstm.distributed.runtime import init_ray

    log.info(init_ray(cfg.address))
    try:
        token = Token(cfg.token_file)  # a bad token file stops here, not in every replica
        url = start(cfg)
        scale = (f"{cfg.min_replicas}..{cfg.max_replicas} replicas (autoscaling)" if cfg.autoscaling
                 else f"{cfg.replicas} replica(s)")
        auth = ' -H "Authorization: Bearer $TOKEN"' if token.required else ""
        log.info(f"serving {cfg.predict.model} at {url} ({scale}); try: curl{auth} -F "
                 f"video=@clip.mp4 {url}/predict   (Ctrl-C stops it)")
        if not token.required:
            log.warning(f"unauthenticated: anyone who reaches {cfg.host}:{cfg.port} may classify "
                        "videos; set --token-file before listening beyond 127.0.0.1")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
        serve.shutdown()
    return 0


# `serve run reslstm.distributed.serve.app:app`, cluster/serve.yaml: the model from RESLSTM_MODEL_URI
app = ActionRecognizer.bind()
