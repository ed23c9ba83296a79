"""The Ray Serve endpoint (reslstm.distributed.serve.app): started on a free local port, it answers
real, synthetic and broken videos (uploaded raw or as a form, or named by path) with exactly
the probabilities of jobs/predict.py on the same files; bad requests get a 4xx with a message;
a replica that met a broken file keeps serving. The refusals of an endpoint safe to expose:
a token, locations outside the allowed prefixes, a full queue (503), a time limit (504), an
upload cut off halfway; concurrent requests batched with the numbers of one at a time. Also
cluster/serve.yaml and the app builder."""

import json
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from predict_fixture import payload, save_payload, write_videos
from jobs_loader import job as load_job
from conftest import SHARED_VIDEOS
from reslstm.configs import PredictConfig, ServeConfig

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 3.0
TOKEN = secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Ray Serve's own pydantic models use a form pydantic 2 deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")


def post(url: str, route: str = "/predict", auth: dict | None = AUTH, **kwargs):
    import requests

    return requests.post(url + route, timeout=120, headers={**(auth or {}),
                                                            **kwargs.pop("headers", {})}, **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_payload(tmp_path_factory.mktemp("model") / "model.pt", payload("late-product"))


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    return tmp_path_factory.mktemp("uploads")


@pytest.fixture(scope="module")
def endpoint(ray_local, model_file, files, uploads, tmp_path_factory):
    """The app on 127.0.0.1:<free port>, one replica, a 3 MiB upload limit, a token, the
    folders of the test videos allowed, batches of up to 4 requests within 100 ms."""
    from ray import serve

    from reslstm.distributed.runtime import free_port
    from reslstm.distributed.serve.app import start

    token = tmp_path_factory.mktemp("secret") / "token"
    token.write_text(TOKEN + "\n")
    cfg = ServeConfig(predict=PredictConfig(model=str(model_file)), port=free_port(),
                      max_upload_mb=LIMIT_MB, replica_cpus=1, token_file=str(token),
                      allow_prefix=(str(files["empty"].parent), str(SHARED_VIDEOS)),
                      upload_dir=str(uploads), batch_wait_ms=100)
    url = start(cfg, quiet=True)
    yield url
    serve.shutdown()


def cli_answers(paths, model_file, capsys) -> dict:
    """jobs/predict.py --json on ``paths``: {path: its JSON object}."""
    capsys.readouterr()
    assert load_job("predict").main([*map(str, paths), "--model", str(model_file), "--json"]) == 0
    return {d["path"]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}


def same_answers(endpoint, model_file, capsys, uploads: dict) -> dict:
    """Post each file as ``uploads`` says; check every answer against jobs/predict.py --json
    on the same file (identical probabilities of every head); the JSON answers."""
    expected = cli_answers(list(uploads), model_file, capsys)
    answers = {}
    for path, how in uploads.items():
        query = {"probabilities": "true"}
        if how == "raw":
            response = post(endpoint, data=path.read_bytes(), params=query)
        elif how == "form":
            response = post(endpoint, files={"video": (path.name, path.read_bytes())}, params=query)
        else:
            response = post(endpoint, json={"path": str(path)}, params=query)
        assert response.status_code == 200, response.text
        got, want = response.json(), expected[str(path)]
        assert got["probabilities"] == want["probabilities"]  # identical floats, every head
        assert got["top"] == want["top"] and set(got["top"]) == {"rgb", "flow", "fused"}
        assert (got["num_frames"], got["num_clips"], got["notes"], got["padded"]) == \
            (want["num_frames"], want["num_clips"], want["notes"], want["padded"])
        answers[path] = got
    return answers


@pytest.mark.integration
def test_synthetic_videos_get_the_answers_of_the_command_line(endpoint, files, model_file, capsys):
    good, short = files["grow_then_shrink"], files["short"]
    answers = same_answers(endpoint, model_file, capsys,
                           {good: "raw", short: "form", files["slide_up"]: "path"})
    assert answers[short]["path"] == short.name  # the upload's name, not a temporary file
    assert answers[short]["padded"] and answers[short]["notes"]
    assert answers[files["slide_up"]]["path"] == str(files["slide_up"])
    named = post(endpoint, data=good.read_bytes(), params={"top_k": "1", "video_id": "g"}).json()
    assert named["video_id"] == "g" and len(named["top"]["fused"]) == 1
    assert "probabilities" not in named


@pytest.mark.integration
def test_real_videos_get_the_answers_of_the_command_line(endpoint, model_file, shared_videos,
                                                         capsys):
    same_answers(endpoint, model_file, capsys,
                 {shared_videos / "kinetics_demo_340x256.mp4": "raw",
                  shared_videos / "xvid_mp3_320x240.avi": "form",
                  shared_videos / "short_32f_340x256.mp4": "path"})


@pytest.mark.integration
def test_bad_requests_get_a_4xx_with_a_message_and_the_replica_keeps_serving(endpoint, files):
    import requests

    def check(response, status, error):
        assert response.status_code == status, response.text
        doc = response.json()
        assert doc["error"] == error and doc["message"] and "Traceback" not in response.text

    check(post(endpoint, data=b""), 400, "empty")
    check(post(endpoint, files={"video": ("none.mp4", b"")}), 400, "empty")
    check(post(endpoint, data=files["not_a_video"].read_bytes()), 422,
          "VideoDecodeError:not_a_video")
    truncated = post(endpoint, files={"video": ("cut.mp4", files["truncated"].read_bytes())})
    check(truncated, 422, "VideoDecodeError:truncated")
    assert truncated.json()["message"].startswith("cut.mp4: ")  # named as uploaded
    check(post(endpoint, json={"path": str(files["empty"].parent / "nowhere.mp4")}), 422,
          "VideoDecodeError:missing")
    big = b"\0" * int((LIMIT_MB + 1) * 2 ** 20)
    check(post(endpoint, data=big), 413, "too_large")
    check(post(endpoint, data=iter([big[:2 ** 20]] * 5)), 413, "too_large")  # chunked: no length
    check(post(endpoint, data="{no json", headers={"content-type": "application/json"}), 400,
          "bad_json")
    check(post(endpoint, json={"video": "x"}), 400, "bad_json")
    check(post(endpoint, json={"path": "x" * 70_000}), 413, "too_large")
    check(post(endpoint, files={"note": (None, "hello")}), 400, "bad_form")
    check(post(endpoint, data=b"x", params={"top_k": "0"}), 400, "bad_query")
    check(post(endpoint, data=b"x", params={"probabilities": "maybe"}), 400, "bad_query")
    check(requests.get(endpoint + "/nowhere", timeout=30), 404, "not_found")
    check(requests.get(endpoint + "/predict", timeout=30), 405, "method_not_allowed")
    # After all that, the same replica still classifies a good video and says it is healthy.
    good = post(endpoint, data=files["slide_up"].read_bytes())
    assert good.status_code == 200 and good.json()["top"]["fused"]
    health = requests.get(endpoint + "/health", timeout=30)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": health.json()["model"],
                             "fusion": "late-product", "classes": 3}
    info = requests.get(endpoint + "/", timeout=30, headers=AUTH).json()
    assert info["max_upload_mb"] == LIMIT_MB and "POST /predict" in info["routes"]
    assert info["token"] is True and info["paths"][0] == str(files["empty"].parent)


@pytest.mark.integration
def test_a_token_and_the_allowed_prefixes_guard_the_endpoint(endpoint, files, tmp_path):
    """401 without the token or with a wrong one (a WWW-Authenticate challenge; /health stays
    open); 403 for a location outside the allowed prefixes, whether it exists or not."""
    import requests

    video = files["slide_up"].read_bytes()
    for auth in (None, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = post(endpoint, data=video, auth=auth)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized", r.text
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert requests.get(endpoint + "/", timeout=30, headers=auth).status_code == 401
    assert requests.get(endpoint + "/health", timeout=30).status_code == 200
    allowed = files["empty"].parent
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(files["slide_up"].read_bytes())
    link = allowed / "link_out.mp4"
    link.symlink_to(secret)
    try:
        answers = []
        for named in (f"{allowed}/../{tmp_path.name}/secret.mp4", str(link), str(secret),
                      str(tmp_path / "missing.mp4"), "s3://bucket/clip.mp4", "/etc/passwd"):
            for how in ("json", "form"):
                r = (post(endpoint, json={"path": named}) if how == "json"
                     else post(endpoint, files={"path": (None, named)}))
                assert r.status_code == 403, (named, r.text)
                assert r.json()["error"] == "location_not_allowed"
                answers.append(r.json()["message"])
        assert len(set(answers)) == 1  # existing or not, the same words
        big = allowed / "big.mp4"
        big.write_bytes(b"\0" * int((LIMIT_MB + 1) * 2 ** 20))
        assert post(endpoint, json={"path": str(big)}).status_code == 413  # allowed, too large
        big.unlink()
        ok = post(endpoint, json={"path": "file://" + str(files["slide_up"])})
        assert ok.status_code == 200 and ok.json()["path"] == "file://" + str(files["slide_up"])
    finally:
        link.unlink()
    # Neither the token nor the wrong guesses reached a log of the replicas or the proxy.
    import ray._private.worker

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    written = [f.read_bytes() for f in logs.rglob("*") if f.is_file()]
    assert written and not any(TOKEN.encode() in text or b"Bearer wrong" in text
                               for text in written)


@pytest.mark.integration
def test_concurrent_requests_are_batched_with_the_numbers_of_one_at_a_time(endpoint, files,
                                                                           model_file, capsys):
    videos = [files["grow_then_shrink"], files["slide_up"], files["short"]]
    expected = cli_answers(videos, model_file, capsys)
    batches = []
    for _ in range(3):  # bursts until one shares a batch (each burst is checked in full)
        with ThreadPoolExecutor(len(videos)) as pool:
            responses = list(pool.map(lambda v: post(endpoint, json={"path": str(v)},
                                                     params={"probabilities": "true"}), videos))
        for video, r in zip(videos, responses):
            assert r.status_code == 200, r.text
            assert r.json()["probabilities"] == expected[str(video)]["probabilities"]
            batches.append(int(r.headers["Server-Timing"].split('batch;desc="')[1].rstrip('"')))
        if max(batches) > 1:
            break
    assert max(batches) > 1, batches


@pytest.mark.integration
def test_an_upload_cut_off_halfway_leaves_no_file(endpoint, uploads):
    host, port = endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}"
                     "\r\nContent-Type: video/mp4\r\nContent-Length: 2000000\r\n\r\n".encode())
        sock.sendall(b"\0" * 500_000)
        deadline = time.monotonic() + 30
        while not [f for f in uploads.rglob("*") if f.is_file() and f.stat().st_size > 0]:
            assert time.monotonic() < deadline, "the upload never reached the replica's folder"
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while [f for f in uploads.rglob("*") if f.is_file()]:
        assert time.monotonic() < deadline, list(uploads.rglob("*"))
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tight(endpoint, model_file):
    """A second app on the same Serve: one request at a time, one more queued, 6 s each (long
    enough that all six requests of the test below reach the router while the first runs, also
    on a busy 2-core machine: at 3.5 s, a run on a clean clone once admitted a request that
    arrived after the first had ended)."""
    from reslstm.distributed.serve.app import start

    port = int(endpoint.rsplit(":", 1)[1])
    cfg = ServeConfig(predict=PredictConfig(model=str(model_file), clips_per_segment=2),
                      port=port, replica_cpus=0.5, max_ongoing_requests=1, max_batch=1,
                      max_queued_requests=1, retry_after=3, request_timeout=6.0)
    return start(cfg, name="tight", quiet=True, route_prefix="/tight")


@pytest.mark.integration
def test_a_full_queue_answers_503_at_once_and_a_slow_video_504(tight, files, tmp_path):
    """Six requests for a long video (the first, then five at once): one runs, one waits, four
    are turned away with Retry-After; the two admitted pass the time limit (504), and their work stops at its next
    segment (the replica's count of videos in progress drops to 0 at once, not after the
    ~15 s the video takes). The replica then classifies a short video."""
    import requests

    from reslstm.datasets.synthetic import synthesize_video, write_mp4

    frames = synthesize_video("slide_up", 1, seed=4, height=72, width=96)
    long_video = tmp_path / "long.mp4"
    write_mp4(np.concatenate([frames] * 100), long_video)  # ~7500 frames: > 15 s of work
    body = long_video.read_bytes()

    def timed(_):
        start = time.monotonic()
        r = post(tight, data=body)
        return r, time.monotonic() - start

    with ThreadPoolExecutor(6) as pool:
        # The first alone, then the five others: sent all at once, the first could still be in
        # the router's queue when the second arrived, which was then turned away too (a clean
        # clone's run once got five 503s).
        first = pool.submit(timed, 0)
        time.sleep(1.0)
        results = [*pool.map(timed, range(5)), first.result()]
    codes = sorted(r.status_code for r, _ in results)
    assert codes == [503] * 4 + [504] * 2, [(r.status_code, r.text[:80]) for r, _ in results]
    for r, seconds in results:
        if r.status_code == 503:
            # turned away at once: before the running classification reached its time limit
            assert r.headers["Retry-After"] == "3" and seconds < 6.0, seconds
        else:
            assert r.json()["error"] == "timeout"
    assert requests.get(tight + "/health", timeout=30).status_code == 200
    deadline = time.monotonic() + 3  # the work of both stops at its next segment (2 clips)
    while requests.get(tight + "/", timeout=30, headers=AUTH).json()["working"]:
        assert time.monotonic() < deadline, "a timed-out video is still being classified"
        time.sleep(0.1)
    r = post(tight, data=files["short"].read_bytes())
    assert r.status_code == 200, r.text
    # This app has no token: its replica said so when it started.
    import ray._private.worker

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    assert any(b"this endpoint is unauthenticated" in f.read_bytes()
               for f in logs.rglob("*") if f.is_file())


def test_serve_yaml_binds_localhost_and_matches_the_rayservice():
    schema = pytest.importorskip("ray.serve.schema")
    doc = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    schema.ServeDeploySchema.model_validate(doc)
    assert doc["http_options"]["host"] == "127.0.0.1"
    [app] = doc["applications"]
    assert app["import_path"] == "reslstm.distributed.serve.app:app"
    assert [d["name"] for d in app["deployments"]] == ["ActionRecognizer"]
    service = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    [svc_app] = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    assert set(svc_app["runtime_env"]["env_vars"]) <= set(app["runtime_env"]["env_vars"])


def test_the_builder_and_the_environment_configure_the_app(monkeypatch):
    from reslstm.distributed.serve import app as srv

    app = srv.build({"model": "runs/late", "replicas": "2", "replica_cpus": "0.5",
                     "replica_gpus": "1", "max_upload_mb": "50", "batch_size": "8",
                     "allow_prefix": "/data/in s3://bucket/in/", "max_queued_requests": "5",
                     "retry_after": "7"})
    d = app._bound_deployment
    assert d.num_replicas == 2 and d.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1.0}
    assert d._deployment_config.max_queued_requests == 5
    assert d._deployment_config.backpressure_config.retry_after_s == 7
    (cfg,) = d.init_args
    assert (cfg.max_upload_mb, cfg.predict.batch_size) == (50.0, 8)
    assert cfg.allow_prefix == ("/data/in", "s3://bucket/in/")
    scaled = srv.build({"model": "m", "min_replicas": "1", "max_replicas": "3",
                        "target_ongoing": "1.5"})._bound_deployment
    auto = scaled._deployment_config.autoscaling_config
    assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (1, 3, 1.5)
    with pytest.raises(ValueError, match="unknown argument"):
        srv.build({"model": "m", "replica": "2"})
    with pytest.raises(ValueError, match="max-replicas"):
        srv.build({"model": "m", "min_replicas": "1"})
    with pytest.raises(ValueError, match="max-batch"):
        srv.build({"model": "m", "max_batch": "8", "max_ongoing_requests": "4"})
    monkeypatch.delenv(srv.MODEL_ENV, raising=False)
    with pytest.raises(ValueError, match="RESLSTM_MODEL_URI"):
        srv.config_from_env()
    monkeypatch.setenv(srv.MODEL_ENV, "models:/reslstm@champion")
    monkeypatch.setenv("RESLSTM_WEIGHTS", "rgb.pt")
    monkeypatch.setenv("RESLSTM_MAX_UPLOAD_MB", "12.5")
    monkeypatch.setenv("RESLSTM_ALLOW_PREFIX", "s3://bucket/in/ /data/videos")
    monkeypatch.setenv("RESLSTM_TOKEN_FILE", "/run/secrets/token")
    monkeypatch.setenv("RESLSTM_REQUEST_TIMEOUT", "30")
    cfg = srv.config_from_env()
    assert (cfg.predict.model, cfg.predict.weights, cfg.max_upload_mb) == \
        ("models:/reslstm@champion", "rgb.pt", 12.5)
    assert cfg.allow_prefix == ("s3://bucket/in/", "/data/videos")
    assert (cfg.token_file, cfg.request_timeout) == ("/run/secrets/token", 30.0)


def test_serve_options_on_the_command_line():
    import argparse

    from reslstm.cli import add_config_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_config_arguments(p, ServeConfig)
    a = p.parse_args(["--allow-prefix", "/data/in", "--allow-prefix", "s3://b/in/",
                      "--min-replicas", "1", "--max-replicas", "2", "--token-file", "t"])
    cfg = config_from_args(ServeConfig, a, predict=PredictConfig(model="m"))
    assert cfg.allow_prefix == ("/data/in", "s3://b/in/") and cfg.token_file == "t"
    assert cfg.autoscaling["max_replicas"] == 2
    assert config_from_args(ServeConfig, p.parse_args([]), predict=None).allow_prefix == ()


def test_multipart_bodies_are_split_without_loading_them_whole(tmp_path):
    from reslstm.distributed.serve.request_body import BadRequest, split_multipart

    video = bytes(range(256)) * 1000 + b"\r\n--notthe boundary\r\n"
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"a b.mp4\"\r\n"
            b"Content-Type: video/mp4\r\n\r\n" + video + b"\r\n--XyZ--\r\n")
    (tmp_path / "body").write_bytes(body)
    name, fields = split_multipart(tmp_path / "body", "multipart/form-data; boundary=XyZ",
                                   tmp_path / "video")
    assert (name, fields) == ("a b.mp4", {"note": "hi"})
    assert (tmp_path / "video").read_bytes() == video
    (tmp_path / "cut").write_bytes(body[:-20])
    with pytest.raises(BadRequest, match="cut short"):
        split_multipart(tmp_path / "cut", "multipart/form-data; boundary=XyZ", tmp_path / "v2")
    with pytest.raises(BadRequest, match="without a boundary"):
        split_multipart(tmp_path / "body", "multipart/form-data", tmp_path / "v3")
