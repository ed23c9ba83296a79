"""The Ray Serve endpoint (reslstm.distributed.serve.app): started on a free local port, it answers
real, synthetic and broken videos (uploaded raw or as a form, or named by path) with exactly
the probabilities of jobs/predict.py on the same files; bad requests get a 4xx with a message;
a replica that met a broken file keeps serving. Also cluster/serve.yaml and the app builder."""

import json
from pathlib import Path

import pytest
import yaml

from predict_fixture import payload, save_payload, write_videos
from jobs_loader import job as load_job
from reslstm.configs import PredictConfig, ServeConfig

REPO = Path(__file__).resolve().parents[1]
LIMIT_MB = 3.0
# Ray Serve's own pydantic models use a form pydantic 2 deprecates; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`")


def post(url: str, route: str = "/predict", **kwargs):
    import requests

    return requests.post(url + route, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_videos(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return save_payload(tmp_path_factory.mktemp("model") / "model.pt", payload("late-product"))


@pytest.fixture(scope="module")
def endpoint(ray_local, model_file):
    """The app on 127.0.0.1:<free port>, one replica, a 3 MiB upload limit."""
    from ray import serve

    from reslstm.distributed.runtime import free_port
    from reslstm.distributed.serve.app import start

    cfg = ServeConfig(predict=PredictConfig(model=str(model_file)), port=free_port(),
                      max_upload_mb=LIMIT_MB, replica_cpus=1)
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
    info = requests.get(endpoint + "/", timeout=30).json()
    assert info["max_upload_mb"] == LIMIT_MB and "POST /predict" in info["routes"]


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
                     "replica_gpus": "1", "max_upload_mb": "50", "allow_paths": "false",
                     "batch_size": "8"})
    d = app._bound_deployment
    assert d.num_replicas == 2 and d.ray_actor_options == {"num_cpus": 0.5, "num_gpus": 1.0}
    (cfg,) = d.init_args
    assert (cfg.max_upload_mb, cfg.allow_paths, cfg.predict.batch_size) == (50.0, False, 8)
    with pytest.raises(ValueError, match="unknown argument"):
        srv.build({"model": "m", "replica": "2"})
    monkeypatch.delenv(srv.MODEL_ENV, raising=False)
    with pytest.raises(ValueError, match="RESLSTM_MODEL_URI"):
        srv.config_from_env()
    monkeypatch.setenv(srv.MODEL_ENV, "models:/reslstm@champion")
    monkeypatch.setenv("RESLSTM_WEIGHTS", "rgb.pt")
    monkeypatch.setenv("RESLSTM_MAX_UPLOAD_MB", "12.5")
    cfg = srv.config_from_env()
    assert (cfg.predict.model, cfg.predict.weights, cfg.max_upload_mb) == \
        ("models:/reslstm@champion", "rgb.pt", 12.5)


def test_multipart_bodies_are_split_without_loading_them_whole(tmp_path):
    from reslstm.distributed.serve.app import BadRequest, split_multipart

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


def test_named_paths_obey_allow_paths_and_the_size_limit(tmp_path):
    from reslstm.distributed.serve.app import BadRequest, check_path

    with pytest.raises(BadRequest) as info:
        check_path(str(tmp_path / "clip.mp4"), allowed=False, limit=1000)
    assert (info.value.status, info.value.error) == (403, "paths_disabled")
    (tmp_path / "big.mp4").write_bytes(b"\0" * 1001)
    with pytest.raises(BadRequest) as info:
        check_path(str(tmp_path / "big.mp4"), allowed=True, limit=1000)
    assert info.value.status == 413
    missing = str(tmp_path / "missing.mp4")  # the decoder reports it, as VideoDecodeError:missing
    assert check_path(missing, allowed=True, limit=1000) == missing
