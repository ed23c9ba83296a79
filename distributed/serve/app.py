"""The Ray Serve application: classify a video over HTTP with a trained model.

``app`` (deployment ``ActionRecognizer``) reads its model from ``RESLSTM_MODEL_URI`` (anything
``jobs/predict.py --model`` takes; ``models:/NAME@ALIAS`` with ``MLFLOW_TRACKING_URI``) and,
optionally, ``RESLSTM_WEIGHTS`` / ``RESLSTM_FLOW_WEIGHTS`` / ``RESLSTM_RAFT_WEIGHTS`` (weights
files checked against the model's record), ``RESLSTM_DEVICE`` and ``RESLSTM_MAX_UPLOAD_MB``.
``build(args)`` makes the same application from ``serve run
reslstm.distributed.serve.app:build model=... replicas=2`` arguments, ``start(cfg)`` from Python
(``jobs/serve.py``, the tests and ``benchmarks/serve.py``); ``cluster/serve.yaml`` is a Serve
config for ``serve run`` / ``serve deploy``.

Routes (JSON answers; README "Predicting new videos"):

    POST /predict   the video as the raw body, or multipart/form-data with a file field; or
                    JSON {"path": "..."}: a path or URI the replicas read. Query: top_k (5),
                    probabilities (false: also the full softmax of each head), video_id.
                    200: ``reslstm.inference.predictor.Prediction.to_dict``.
    GET  /health    200 {"status": "ok", ...} once the replica has its model.
    GET  /          what this endpoint serves: model, classes, routes, limits.

Every bad request gets a 4xx with {"error", "message"}, never a traceback: 400 (empty body, bad
JSON, form or query), 403 (a path while paths are off), 404/405 (unknown route or method), 413
(larger than ``max_upload_mb``), 422 (not a video, truncated, corrupt: the typed errors of
extraction, ``error`` = e.g. ``VideoDecodeError:truncated``). An unexpected error is a 500 with
one line. Each replica loads the model and extractors once and classifies one video at a time
(the CPU-bound work runs in a thread, so /health answers meanwhile); a bad file never takes the
replica down.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures' annotations
# (``request: Request``) at run time, and Serve's ingress re-binds the methods elsewhere.
import asyncio
import dataclasses
import email.message
import json
import logging
import mmap
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

from reslstm.configs import PredictConfig, ServeConfig
from reslstm.distributed.predict.batch import describe, load_model
from reslstm.errors import ConfigError, ReslstmError
from reslstm.inference.predictor import Predictor, VideoFailed

log = logging.getLogger(__name__)

MODEL_ENV = "RESLSTM_MODEL_URI"
ENV = {"weights": "RESLSTM_WEIGHTS", "flow_weights": "RESLSTM_FLOW_WEIGHTS",
       "raft_weights": "RESLSTM_RAFT_WEIGHTS", "device": "RESLSTM_DEVICE",
       "max_upload_mb": "RESLSTM_MAX_UPLOAD_MB"}
ROUTES = ("POST /predict", "GET /health", "GET /")
READ_CHUNK = 1 << 20
JSON_LIMIT = 1 << 16  # a JSON request names a video; it does not carry one

api = FastAPI(title="reslstm action recognition", docs_url=None, redoc_url=None,
              openapi_url=None)


class BadRequest(ReslstmError):
    """A request we answer with ``status`` and a message (never a traceback)."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error = status, error

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "message": str(self)}, status_code=self.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes and methods: the routes there are, not FastAPI's bare detail."""
    names = {404: "not_found", 405: "method_not_allowed"}
    return JSONResponse({"error": names.get(exc.status_code, "http_error"),
                         "message": f"{exc.detail}: {request.method} {request.url.path}; this "
                                    f"endpoint serves {', '.join(ROUTES)}"},
                        status_code=exc.status_code)


# ---------------------------------------------------------------------------------------------
# Request bodies: a raw video, a multipart form, or JSON naming a path
# ---------------------------------------------------------------------------------------------

async def save_body(request: Request, target: Path, limit: int) -> int:
    """Stream the request body to ``target``; 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    size = 0
    with open(target, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit, more=True)
            f.write(chunk)
    return size


def _too_large(size: int, limit: int, more: bool = False) -> BadRequest:
    over = "over " if more else ""
    if limit == JSON_LIMIT:
        return BadRequest(413, "too_large", f"a JSON request of {over}{size} bytes; it names a "
                          f"video in at most {JSON_LIMIT} bytes (upload videos as the body)")
    return BadRequest(413, "too_large", f"the video is {over}{size / 2 ** 20:.1f} MiB; this "
                      f"endpoint takes at most {limit / 2 ** 20:g} MiB (max_upload_mb)")


def _content_params(header: str) -> email.message.Message:
    msg = email.message.Message()
    msg["content-type"] = header
    return msg


def split_multipart(body: Path, content_type: str, target: Path) -> tuple[str | None, dict]:
    """The first file part of a multipart/form-data body -> ``target`` (its filename, or None
    when there is no file part) and the form's text fields."""
    boundary = _content_params(content_type).get_param("boundary")
    if not boundary:
        raise BadRequest(400, "bad_form", "multipart/form-data without a boundary")
    delimiter = b"--" + str(boundary).encode("latin-1")
    fields: dict[str, str] = {}
    if body.stat().st_size == 0:
        raise BadRequest(400, "empty", "the request has no body: send the video")
    with open(body, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        pos = mm.find(delimiter)
        while pos != -1:
            start = pos + len(delimiter)
            if mm[start:start + 2] == b"--":
                break  # the closing delimiter
            head_end = mm.find(b"\r\n\r\n", start)
            end = mm.find(b"\r\n" + delimiter, head_end)
            if head_end == -1 or end == -1:
                raise BadRequest(400, "bad_form", "a multipart body cut short (no closing "
                                 "boundary)")
            part = email.message_from_bytes(mm[start:head_end].lstrip(b"\r\n") + b"\r\n\r\n")
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            if filename is not None or name in ("video", "file"):
                with open(target, "wb") as out:
                    for i in range(head_end + 4, end, READ_CHUNK):
                        out.write(mm[i:min(i + READ_CHUNK, end)])
                return filename or str(name), fields
            if name:
                fields[str(name)] = mm[head_end + 4:end].decode("utf-8", "replace")
            pos = end + 2
    return None, fields


def check_path(path: str, allowed: bool, limit: int) -> str:
    """A path or URI a request names: allowed, and within the size limit (a file that cannot
    be read passes: the decoder names why, with its typed error)."""
    from reslstm import storage

    if not allowed:
        raise BadRequest(403, "paths_disabled", "this endpoint does not read paths "
                         "(allow_paths is off); upload the video instead")
    try:
        size = storage.resolve(path).size()
    except (OSError, ValueError):
        size = 0
    if size > limit:
        raise _too_large(size, limit)
    return path


def _flag(value: str | None, name: str) -> bool:
    if value is None:
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(400, "bad_query", f"{name}={value!r}: use true or false")


# ---------------------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------------------

def config_from_env() -> ServeConfig:
    """The app's settings from the environment (module docstring)."""
    ref = os.environ.get(MODEL_ENV)
    if not ref:
        raise ConfigError(f"set {MODEL_ENV} to the model to serve (a run directory, checkpoint, "
                         "model.pt or models:/NAME@ALIAS), or use reslstm.distributed.serve.app:build")
    predict = {k: os.environ[v] for k, v in ENV.items()
               if k != "max_upload_mb" and os.environ.get(v)}
    limit = os.environ.get(ENV["max_upload_mb"])
    return ServeConfig(predict=PredictConfig(model=ref, **predict),
                       **({"max_upload_mb": float(limit)} if limit else {}))


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
        model, payload = load_model(cfg.model, cfg.mlflow_uri)
        self.predictor = Predictor(model, payload, cfg)
        # torch and OpenCV on the CPUs this replica reserved (a CPU-less one: one thread),
        # whatever set them: ServeConfig, a Serve config file's ray_actor_options.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
        limit_threads(max(1, int(round(cpus))))
        self.limit = int(self.config.max_upload_mb * 2 ** 20)
        self.lock = threading.Lock()  # one classification at a time per replica
        self.tmp = Path(tempfile.mkdtemp(prefix="reslstm-serve-"))
        log.info(f"replica ready: {describe(self.predictor)}")

    def __del__(self):
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)

    # -- routes -------------------------------------------------------------------------------
    @api.get("/health")
    def health(self) -> dict:
        head = self.predictor.head
        return {"status": "ok", "model": self.predictor.cfg.model, "fusion": head.fusion,
                "classes": len(head.label_names)}

    @api.get("/")
    def info(self) -> dict:
        p = self.predictor
        return {"model": p.cfg.model, "fusion": p.head.fusion, "streams": list(p.head.streams),
                "labels": p.label_names, "routes": list(ROUTES),
                "max_upload_mb": self.config.max_upload_mb, "paths": self.config.allow_paths,
                "extraction": {"extractor": p.stage.extractor, "weights": p.stage.weights_ids,
                               "clip_len": p.stage.clip_len, "clip_stride": p.stage.clip_stride,
                               "crops": p.stage.crops, "flow": p.stage.flow_method}}

    @api.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        work = Path(tempfile.mkdtemp(dir=self.tmp))
        try:
            return await self._predict(request, work)
        except BadRequest as exc:
            return exc.response()
        except Exception as exc:  # noqa: BLE001 - a one-line 500, the traceback only in the log
            log.exception("prediction failed")
            return JSONResponse({"error": "internal", "message": f"{type(exc).__name__}: {exc}"
                                 .splitlines()[0]}, status_code=500)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # -- the work -----------------------------------------------------------------------------
    async def _predict(self, request: Request, work: Path) -> JSONResponse:
        q = request.query_params
        try:
            top_k = int(q.get("top_k", 5))
            if top_k < 1:
                raise ValueError
        except ValueError:
            raise BadRequest(400, "bad_query", f"top_k={q.get('top_k')!r}: use a whole number "
                             ">= 1") from None
        full = _flag(q.get("probabilities"), "probabilities")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            path, name = await self._named_video(request, work / "body.json")
        else:
            body = work / "body"
            await save_body(request, body, self.limit)
            path, name = body, "upload"
            if ctype == "multipart/form-data":
                filename, fields = split_multipart(body, request.headers["content-type"],
                                                   work / "video")
                if filename is not None:
                    path, name = work / "video", filename
                elif "path" in fields:
                    path = name = check_path(fields["path"], self.config.allow_paths, self.limit)
                else:
                    raise BadRequest(400, "bad_form", "the form has no file field (send the "
                                     "video as a file, e.g. curl -F video=@clip.mp4)")
            if isinstance(path, Path) and path.stat().st_size == 0:
                raise BadRequest(400, "empty", "the request has no video in it (0 bytes): send "
                                 "the file as the body or as a form file field")
        video_id = q.get("video_id") or name
        start = time.perf_counter()
        pred = await asyncio.to_thread(self._classify, str(path), str(video_id), str(name))
        seconds = time.perf_counter() - start
        # Server-Timing: the classification's own time, apart from HTTP and the upload.
        return JSONResponse(pred.to_dict(top_k, probabilities=full),
                            headers={"Server-Timing": f"predict;dur={1000 * seconds:.1f}"})

    async def _named_video(self, request: Request, body: Path) -> tuple[str, str]:
        await save_body(request, body, JSON_LIMIT)
        try:
            doc = json.loads(body.read_bytes())
        except ValueError:
            raise BadRequest(400, "bad_json", "the body is not JSON; send {\"path\": \"...\"}, "
                             "or the video itself with another content type") from None
        path = doc.get("path") if isinstance(doc, dict) else None
        if not isinstance(path, str) or not path:
            raise BadRequest(400, "bad_json", "JSON requests name a video: {\"path\": "
                             "\"s3://bucket/clip.mp4\"}")
        return check_path(path, self.config.allow_paths, self.limit), path

    def _classify(self, path: str, video_id: str, name: str):
        with self.lock:
            try:
                pred = self.predictor.predict(path, video_id=video_id)
                return dataclasses.replace(pred, path=name)  # an upload's name, not a temp file
            except VideoFailed as exc:
                f = exc.failures[0]
                message = str(f["message"]).replace(path, name)
                raise BadRequest(422, f["error_type"], f"{message} (stage: {f['stage']})") from None


# ---------------------------------------------------------------------------------------------
# Making the application
# ---------------------------------------------------------------------------------------------

def application(cfg: ServeConfig):
    """The application for ``cfg``: its replicas, CPUs and GPUs per replica."""
    return ActionRecognizer.options(
        num_replicas=cfg.replicas, max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.replica_cpus, "num_gpus": cfg.replica_gpus},
    ).bind(cfg)


def _typed(cls, args: dict) -> dict:
    """String arguments (``serve run ... key=value``) as the field types of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in args or f.metadata.get("cli", True) is False:
            continue
        value, kind = args[f.name], hints[f.name]
        base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        if isinstance(value, str):
            if base[0] is bool:
                value = value.lower() in ("1", "true", "yes")
            elif base[0] in (int, float):
                value = base[0](value)
        out[f.name] = value
    return out


def build(args: dict):
    """Application builder for ``serve run reslstm.distributed.serve.app:build model=RUN_DIR
    replicas=2 replica_cpus=1 max_upload_mb=200 ...`` (``PredictConfig`` and ``ServeConfig``
    fields; ``model`` defaults to ``RESLSTM_MODEL_URI``)."""
    args = dict(args)
    args.setdefault("model", os.environ.get(MODEL_ENV))
    unknown = set(args) - {f.name for f in dataclasses.fields(PredictConfig)} \
        - {f.name for f in dataclasses.fields(ServeConfig)}
    if unknown:
        raise ConfigError(f"unknown argument(s) {sorted(unknown)} for the reslstm Serve app")
    predict = PredictConfig(**_typed(PredictConfig, args))
    return application(ServeConfig(predict=predict, **_typed(ServeConfig, args)))


def start(cfg: ServeConfig, name: str = "reslstm", quiet: bool = False) -> str:
    """Start Serve's HTTP proxy on ``cfg.host:cfg.port`` in the connected Ray and run the app
    there; returns its URL. ``quiet``: Serve's own logs at WARNING, no access log."""
    logging_config = {"log_level": "WARNING", "enable_access_log": False} if quiet else None
    if quiet:
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # this process's Serve notes
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging_config)
    serve.run(application(cfg), name=name, route_prefix="/", logging_config=logging_config)
    return f"http://{cfg.host}:{cfg.port}"



def serve_until_stopped(cfg: ServeConfig) -> int:
    """``jobs/serve.py``: start the app on a cluster or a local Ray, then wait for Ctrl-C."""
    from reslstm.distributed.runtime import init_ray

    log.info(init_ray(cfg.address))
    try:
        url = start(cfg)
        log.info(f"serving {cfg.predict.model} at {url} ({cfg.replicas} replica(s)); "
                 f"try: curl -F video=@clip.mp4 {url}/predict   (Ctrl-C stops it)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log.info("stopping")
        serve.shutdown()
    return 0


# `serve run reslstm.distributed.serve.app:app`, cluster/serve.yaml: the model from RESLSTM_MODEL_URI
app = ActionRecognizer.bind()
