"""The paper presets: their sweeps, results over seeds, claims checked with their uncertainty,
the report table beside the paper's numbers, the figures; and one preset end to end."""

import math

import numpy as np
import pytest
from mlflow import MlflowClient

from featurestore_fixture import make_feature_store
from reslstm.configs import PaperConfig
from reslstm.distributed.tune.paper_runs import preset_sweep, run_preset
from reslstm.paper.figures import plot_examples, plot_grouped_confusion, plot_preset
from reslstm.paper.report import aggregate, check, table_rows, write_table
from reslstm.paper.presets import NOT_RECORDED, PLOT_ONLY, PRESETS, Claim, paper_value


def _rows(values: dict, field: str, key="test_top1"):
    return [{field: v, "seed": s, key: acc} for v, accs in values.items() for s, acc in enumerate(accs)]


def test_aggregate_gives_mean_and_sample_std_per_configuration():
    rows = _rows({5: [0.5, 0.7], 25: [0.8, 0.8, 0.9]}, "T") + [{"T": 5, "seed": 9, "test_top1": float("nan")}]
    cells = {c.config["T"]: c for c in aggregate(rows, ["T"])}
    assert cells[5].values == [0.5, 0.7] and cells[5].mean == pytest.approx(0.6)
    assert cells[5].std == pytest.approx(math.sqrt(0.02))  # ddof 1
    assert cells[25].n == 3 and cells[25].text() == "83.3 +- 5.8 (n=3)"


def test_claims_hold_only_beyond_twice_their_standard_error():
    strict = Claim("25 beats 5", ({"T": 25},), ({"T": 5},))
    clear = check(strict, _rows({5: [0.50, 0.52, 0.48], 25: [0.80, 0.82, 0.78]}, "T"))
    assert clear.outcome == "held" and clear.difference == pytest.approx(0.30)
    assert clear.error == pytest.approx(math.sqrt(2 * 0.0004 / 3))
    close = check(strict, _rows({5: [0.50, 0.60], 25: [0.52, 0.62]}, "T"))
    assert close.outcome == "not shown"  # +0.02 within 2 x 0.071
    reverse = check(strict, _rows({5: [0.80, 0.82], 25: [0.50, 0.52]}, "T"))
    assert reverse.outcome == "did not hold"
    at_least = Claim("35 >= 25", ({"T": 35},), ({"T": 25},), strict=False)
    assert check(at_least, _rows({25: [0.60, 0.62], 35: [0.59, 0.61]}, "T")).outcome == "held"
    assert check(at_least, _rows({25: [0.80, 0.82], 35: [0.50, 0.52]}, "T")).outcome == "did not hold"
    one_seed = check(strict, _rows({5: [0.5], 25: [0.9]}, "T"))
    assert math.isnan(one_seed.error) and "no error estimate (1 seed)" in one_seed.text()
    assert check(strict, _rows({5: [0.5]}, "T")).outcome == "no data"


def test_each_preset_states_the_papers_claims():
    texts = {name: [c.text for c in PRESETS[name].claims(quick=False)] for name in PRESETS}
    assert texts["hidden"][0] == "larger h helps up to h=1024: h=1024 beats h=256"
    assert texts["depth"] == ["residual >= plain at depth 3", "residual >= plain at depth 4"]
    assert texts["T"][0] == "more clips help: T=25 beats T=5"
    assert texts["fusion"] == ["late fusion beats mid fusion (mean of each)",
                               "mid product beats mid sum", "late product beats late sum"]
    late_vs_mid = PRESETS["fusion"].claims(quick=False)[0]
    assert {c["fusion"] for c in late_vs_mid.better} == {"late-product", "late-sum", "late-weighted"}


def test_the_sweep_of_a_preset_takes_the_papers_settings_and_overrides():
    preset, scfg = preset_sweep(PaperConfig(preset="depth", features="f"))
    assert (scfg.depth, scfg.residual, scfg.hidden) == ((1, 2, 3, 4), (True, False), (256, 512, 1024, 2048))
    assert (scfg.T, scfg.fusion, scfg.seeds, scfg.scheduler, scfg.test_all) == ((25,), ("rgb",), 3, "none", True)
    assert (scfg.base.lr, scfg.base.input_proj, scfg.base.epochs) == (1e-3, "pca", 20)
    _, quick = preset_sweep(PaperConfig(preset="T", features="f", quick=True))
    assert (quick.T, quick.hidden, quick.seeds, quick.base.epochs, quick.base.workers) == (
        (2, 4, 8, 12), (64,), 2, 12, 1)
    _, over = preset_sweep(PaperConfig(preset="fusion", features="f", fusion=("late-sum",), seeds=5,
                                       epochs=3, hidden=(128,)))
    assert (over.fusion, over.seeds, over.base.epochs, over.hidden) == (("late-sum",), 5, 3, (128,))
    assert preset_sweep(PaperConfig(preset="final", features="f"))[1].register_model == "reslstm-final"


def test_table_sets_ours_beside_the_papers_numbers(tmp_path):
    preset = PRESETS["fusion"]
    rows = _rows({"late-product": [0.7, 0.72], "mid-sum": [0.6, 0.64]}, "fusion")
    cells = aggregate(rows, ["fusion"])
    table = {r["fusion"]: r for r in table_rows(preset, cells, quick=False)}
    assert table["late-product"]["paper HMDB-51"] == "68.0"
    assert table["late-product"]["paper UCF-101"] == NOT_RECORDED
    assert table["late-product"]["ours (test top-1 %)"] == "71.0 +- 1.4 (n=2)"
    assert paper_value("hidden", "hmdb51", 1024) == PLOT_ONLY
    verdicts = [check(c, rows) for c in preset.claims(quick=False)]
    files = write_table(preset, cells, verdicts, tmp_path, quick=False)
    md = open(files["fusion_md"]).read()
    assert "| late-product | 71.0 +- 1.4 (n=2) | 68.0 | n/r |" in md
    assert "late fusion beats mid fusion (mean of each): held" in md
    assert open(files["fusion_csv"]).read().startswith("fusion,ours (test top-1 %),paper HMDB-51")


def test_final_table_has_one_row_per_head_and_the_paper_beside_the_fused_one(tmp_path):
    import dataclasses

    preset = PRESETS["final"]
    rows = [{"fusion": "late-product", "seed": s, "test_top1": f, "test_top1_rgb": r}
            for s, f, r in ((0, 0.70, 0.50), (1, 0.72, 0.54))]
    cells = [dataclasses.replace(c, config={**c.config, "head": head})
             for metric, head in (("test_top1", "fused"), ("test_top1_rgb", "rgb"))
             for c in aggregate(rows, ["fusion"], metric=metric)]
    md = open(write_table(preset, cells, [], tmp_path, quick=False)["final_md"]).read()
    assert "| late-product | fused | 71.0 +- 1.4 (n=2) | 68.0 | n/r |" in md
    assert "| late-product | rgb | 52.0 +- 2.8 (n=2) | n/r | n/r |" in md


def test_trial_table_keeps_every_column_of_every_trial(tmp_path):
    from reslstm.reports.sweep_tables import write_sweep_report

    rows = [{"trial": "a", "fusion": "mid-sum", "test_top1": 0.5},
            {"trial": "b", "fusion": "late-sum", "test_top1": 0.6, "test_top1_rgb": 0.4}]
    files = write_sweep_report(rows, {"a": [(1, 0.5)], "b": [(1, 0.6)]}, tmp_path, "t")
    lines = open(files["trials_csv"]).read().splitlines()
    assert lines == ["trial,fusion,test_top1,test_top1_rgb", "a,mid-sum,0.5,", "b,late-sum,0.6,0.4"]


def test_figures_are_written(tmp_path):
    rows = [{"depth": L, "residual": r, "hidden": 32, "seed": s, "test_top1": 0.5 + 0.05 * L * r + 0.01 * s}
            for L in (1, 2, 3) for r in (True, False) for s in (0, 1)]
    cells = aggregate(rows, ["depth", "residual", "hidden"])
    assert plot_preset(PRESETS["depth"], cells, tmp_path / "d.png", "Fig. 3b").stat().st_size > 10_000
    names = ["a1", "a2", "b1"]
    conf = np.array([[3, 1, 0], [0, 4, 0], [1, 0, 2]])
    path = plot_grouped_confusion(conf, names, {"a1": "A", "a2": "A", "b1": "B"}, tmp_path / "c.png", "t")
    assert path.stat().st_size > 10_000
    examples = [{"video_id": "v", "frame": np.zeros((20, 30, 3), np.uint8), "truth": "a1",
                 "top": [("a2", 0.6), ("a1", 0.3), ("b1", 0.1)]}]
    assert plot_examples(examples, tmp_path / "e.png", "t").stat().st_size > 5_000


@pytest.mark.integration
def test_a_preset_end_to_end_with_its_mlflow_parent(ray_local, tmp_path):
    store = make_feature_store(tmp_path / "store", seed=13)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # Mid-sum fusion: this is where it is trained end to end (the other fusions: test_train).
    res = run_preset(PaperConfig(preset="T", features=str(store.root), out=str(tmp_path / "paper"),
                                 T=(5,), hidden=(8,), seeds=2, epochs=1, workers=1,
                                 fusion=("mid-sum",), input_proj="linear", batch_size=8, lr=1e-2,
                                 mlflow_uri=uri))
    # One configuration, once per seed: its table row is their mean +- std.
    assert len(res.rows) == 2 and {(r["T"], r["seed"]) for r in res.rows} == {(5, 0), (5, 1)}
    assert all(0 <= r["test_top1"] <= 1 for r in res.rows)
    assert {r["fusion"] for r in res.rows} == {"mid-sum"}
    accs = [100 * r["test_top1"] for r in res.rows]
    assert f"| 5 | {np.mean(accs):.1f} +- {np.std(accs, ddof=1):.1f} (n=2) |" in res.table, res.table
    assert "## Claims" in res.table
    client = MlflowClient(uri)
    parent = client.get_run(res.sweep.parent_run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string="tags.`reslstm.kind` = 'trial'")
    assert len(children) == 2 and {c.data.tags["mlflow.parentRunId"] for c in children} == {
        parent.info.run_id}
    assert all("test_top1" in c.data.metrics for c in children)  # every run tested
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"T.csv", "T.md", "T.png"} <= artifacts
    assert any(k.startswith("claim_") for k in parent.data.tags)
