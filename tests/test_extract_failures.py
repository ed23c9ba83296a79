"""Extraction jobs that say when they failed: systemic errors stop the job with the cause, a run
whose failures pass --max-failed exits non-zero after writing what it could, and a model that
cannot load is not mistaken for a lost node."""

import io
from contextlib import redirect_stderr

import pyarrow as pa
import pytest
import torch

from reslstm import features as fs
from reslstm.configs import ExtractConfig
from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.synthetic import synthesize_video, write_mp4
from reslstm.extraction.driver import root_cause, run_local
from reslstm.extraction.segments import is_systemic
from reslstm.extraction.settings import ExtractError, TooManyFailures


def _manifest(tmp_path, good: int, missing: int):
    rows = []
    for i in range(good):
        path = tmp_path / f"v{i}.mp4"
        write_mp4(synthesize_video("grow_then_shrink", i, seed=1, height=48, width=64)[:20], path)
        rows.append({"video_id": f"v{i}", "path": str(path)})
    rows += [{"video_id": f"gone{i}", "path": str(tmp_path / f"gone{i}.mp4")} for i in range(missing)]
    table = pa.Table.from_pylist([{**r, "label": 0, "label_name": "a", "split": "train"}
                                  for r in rows], schema=MANIFEST_SCHEMA)
    return write_manifest(table, tmp_path / "manifest.parquet")


def _cfg(manifest, out, **kw):
    return ExtractConfig(manifest=str(manifest), out=str(out), streams=("rgb",),
                         extractor="tiny3d", crops=1, **kw)


def test_systemic_errors_are_told_from_one_videos_errors():
    assert is_systemic(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_systemic(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_systemic(MemoryError())
    assert not is_systemic(ValueError("frames of 40x40 are smaller than tiny3d's 64 crop"))
    assert not is_systemic(RuntimeError("segment 2 gave 3 clip features, expected 4"))


def test_root_cause_is_the_original_error_inside_rays_wrapper():
    wrapped = RuntimeError(
        "The actor died because of an error raised in its creation task, \x1b[36mray::MapWorker"
        "(MapBatches(FeatureStage)).__init__()\x1b[39m\n  File \"x.py\", line 3, in __init__\n"
        "    raise WeightsError(msg)\nreslstm.extractors.base.WeightsError: weights file w.pt "
        "does not match tiny3d (rgb, 3 input channels):")
    assert root_cause(wrapped) == ("reslstm.extractors.base.WeightsError: weights file w.pt "
                                   "does not match tiny3d (rgb, 3 input channels):")
    assert root_cause(ValueError("a bug")) == "ValueError: a bug"


def test_failures_over_the_threshold_fail_the_run_after_writing_the_rest(tmp_path):
    manifest = _manifest(tmp_path, good=3, missing=1)  # 1 of 4 pairs fails: 25 %
    with pytest.raises(TooManyFailures, match=r"1 of the 4 .* --max-failed 0.1 .* 3 others are written"):
        run_local(_cfg(manifest, tmp_path / "strict"))
    assert fs.written_ids(tmp_path / "strict", "rgb") == {"v0", "v1", "v2"}
    assert fs.failed_ids(tmp_path / "strict", "rgb") == {"gone0"}
    summary = run_local(_cfg(manifest, tmp_path / "lenient", max_failed=0.25))
    assert summary.written == {"rgb": 3} and sum(summary.failed.values()) == 1


def test_a_systemic_error_stops_the_job_with_its_cause(tmp_path, monkeypatch):
    import reslstm.extractors as extractors

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(extractors, "clip_features", out_of_memory)
    manifest = _manifest(tmp_path, good=2, missing=0)
    with pytest.raises(ExtractError, match=r"the pipeline stopped: OutOfMemoryError: CUDA out "
                                           r"of memory.*rerun the same command"):
        run_local(_cfg(manifest, tmp_path / "store"))
    assert not fs.failed_ids(tmp_path / "store", "rgb")  # not blamed on the videos


@pytest.mark.integration
def test_a_job_where_every_video_fails_exits_1(ray_local, tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "jobs"))
    import extract

    manifest = _manifest(tmp_path, good=0, missing=3)
    code = extract.main(["--manifest", str(manifest), "--out", str(tmp_path / "store"),
                         "--extractor", "tiny3d", "--streams", "rgb", "--flow", "dis",
                         "--crops", "1"])
    err = capsys.readouterr().err
    assert code == 1
    assert "extract: 3 of the 3 (video, stream) pairs this run attempted failed" in err
    assert "Traceback" not in err


@pytest.mark.integration
def test_a_model_that_cannot_load_stops_the_job_at_once(ray_local, tmp_path):
    """Weights that pass the driver's check (a readable file) but not the model's strict load:
    the feature actors cannot start. That is the job's error, not a lost node: no retries."""
    from reslstm.distributed.extract import job as ex

    torch.save({"conv1.weight": torch.zeros(16, 3, 1, 1, 1)}, tmp_path / "wrong.pt")
    manifest = _manifest(tmp_path, good=1, missing=0)
    calls = []
    real = ex.build_pipeline
    ex_build = lambda todo, plan: calls.append(len(todo)) or real(todo, plan)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp, redirect_stderr(io.StringIO()):
        mp.setattr(ex, "build_pipeline", ex_build)
        with pytest.raises(ExtractError, match=r"stopped: .*WeightsError: weights file .*wrong\.pt "
                                               r"does not match tiny3d"):
            ex.run_extraction(_cfg(manifest, tmp_path / "store", weights=str(tmp_path / "wrong.pt"),
                                   flow="dis"))
    assert calls == [1]  # never rerun as if a node had died
