"""ResLSTM against a hand-written LSTM loop (eq. 1-2), the input projections, and ActionModel."""

import dataclasses

import numpy as np
import pytest
import torch

from reslstm.errors import ConfigError
from reslstm.fusion import late_fuse, mid_fuse
from reslstm.model import (
    ActionModel,
    InputProjection,
    ModelConfig,
    ResLSTM,
    TemporalMeanPool,
    build_model,
)
from reslstm.pca import pca_basis

FUSIONS = ["rgb", "flow", "mid-sum", "mid-product", "late-product", "late-sum", "late-weighted"]


def lstm_by_hand(lstm: torch.nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """Step the LSTM cell equations t by t from the layer's own weights; (B, T, h) -> m (B, T, h).

    Gate order in PyTorch's weights: input i, forget f, cell candidate g, output o.
    """
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    b = lstm.bias_ih_l0 + lstm.bias_hh_l0
    B, T, _ = x.shape
    h = lstm.hidden_size
    m = torch.zeros(B, h, dtype=x.dtype)
    c = torch.zeros(B, h, dtype=x.dtype)
    outs = []
    for t in range(T):
        z = x[:, t] @ w_ih.T + m @ w_hh.T + b  # (B, 4h)
        i, f, g, o = z[:, :h], z[:, h:2 * h], z[:, 2 * h:3 * h], z[:, 3 * h:]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        m = torch.sigmoid(o) * torch.tanh(c)
        outs.append(m)
    return torch.stack(outs, dim=1)


def reslstm_by_hand(model: ResLSTM, feats: torch.Tensor, residual: bool):
    """x^0 -> (m^L (B, T, h), x^L (B, T, h)) following eq. (1) literally."""
    lin = model.proj.linear
    x = feats @ lin.weight.T + lin.bias  # x^0
    for lstm in model.layers:
        m = lstm_by_hand(lstm, x)
        x = m + x if residual else m
    return m, x


@pytest.mark.parametrize("residual", [True, False])
def test_stack_equals_hand_written_loop(residual):
    torch.manual_seed(0)
    model = ResLSTM(5, 4, num_layers=3, num_classes=3, residual=residual).double()
    feats = torch.randn(2, 6, 5, dtype=torch.float64)
    m_L, _ = reslstm_by_hand(model, feats, residual)
    expected = m_L[:, -1] @ model.classifier.weight.T  # W_y^T m_T^L, no bias
    assert model.classifier.bias is None
    torch.testing.assert_close(model(feats), expected, rtol=1e-10, atol=1e-12)


def test_residual_changes_the_output():
    torch.manual_seed(0)
    a = ResLSTM(4, 4, 2, 3, residual=True, input_proj="none").double()
    b = ResLSTM(4, 4, 2, 3, residual=False, input_proj="none").double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    assert not torch.allclose(a(x), b(x))
    # With one layer there is no skip between layers, and the classifier reads m, not x^1,
    # so the residual flag must not matter.
    c = ResLSTM(4, 4, 1, 3, residual=True, input_proj="none").double()
    d = ResLSTM(4, 4, 1, 3, residual=False, input_proj="none").double()
    d.load_state_dict(c.state_dict())
    torch.testing.assert_close(c(x), d(x))


def test_classifier_reads_m_T_L_not_x_T_L():
    torch.manual_seed(1)
    model = ResLSTM(3, 3, num_layers=2, num_classes=3, residual=True).double()
    # Inputs far from zero make x_T^L = m_T^L + x_T^{L-1} clearly differ from m_T^L.
    feats = 5 + torch.randn(2, 4, 3, dtype=torch.float64)
    m_L, x_L = reslstm_by_hand(model, feats, residual=True)
    assert (x_L[:, -1] - m_L[:, -1]).abs().min() > 0.1
    w = model.classifier.weight
    logits = model(feats)
    torch.testing.assert_close(logits, m_L[:, -1] @ w.T)
    assert (logits - x_L[:, -1] @ w.T).abs().max() > 0.1


def test_each_layer_is_its_own_single_layer_lstm():
    model = ResLSTM(8, 8, num_layers=3, num_classes=2, input_proj="none")
    assert len(model.layers) == 3
    for lstm in model.layers:
        assert isinstance(lstm, torch.nn.LSTM)
        assert lstm.num_layers == 1 and lstm.batch_first and lstm.input_size == lstm.hidden_size == 8


def test_dropout_default_is_identity_and_off_in_eval():
    torch.manual_seed(0)
    x = torch.randn(3, 4, 6)
    model = ResLSTM(6, 6, 2, 4, input_proj="none").train()
    torch.testing.assert_close(model(x), model(x))
    dropped = ResLSTM(6, 6, 2, 4, input_proj="none", dropout=0.5)
    dropped.load_state_dict(model.state_dict())
    dropped.eval()
    torch.testing.assert_close(dropped(x), model(x))
    dropped.train()
    assert not torch.allclose(dropped(x), model(x))


# --- input projections -----------------------------------------------------------------------

# Variances along x (18), y (2) and z (~0.008), no cross terms: components are e_x and e_y.
PCA_DATA = np.array([[3, 0, 0], [-3, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0.1]])


def test_pca_projection_by_hand():
    proj = InputProjection(3, 2, "pca").double()
    proj.fit_pca(PCA_DATA)
    np.testing.assert_allclose(proj.mean.numpy(), [0, 0, 0.02], atol=1e-12)
    np.testing.assert_allclose(proj.components.numpy(), [[1, 0, 0], [0, 1, 0]], atol=1e-12)
    x = torch.tensor([[[1.0, 2.0, 3.0], [-1.0, 0.5, 0.02]]], dtype=torch.float64)  # (1, 2, 3)
    torch.testing.assert_close(proj(x), torch.tensor([[[1.0, 2.0], [-1.0, 0.5]]], dtype=torch.float64))
    torch.testing.assert_close(proj(x), (x - proj.mean) @ proj.components.T)


def test_pca_centres_before_the_svd_and_before_projecting():
    """Three points on the line y = 10: centred, they vary along x only, so the one component
    is e_x. An SVD of the raw points would pick about the direction of their mean (5, 10), and
    a projection without ``- mean`` would be off by mean . e_x = 5."""
    proj = InputProjection(2, 1, "pca").double()
    proj.fit_pca(np.array([[3.0, 10.0], [5.0, 10.0], [7.0, 10.0]]))
    np.testing.assert_allclose(proj.mean.numpy(), [5, 10], atol=1e-12)
    np.testing.assert_allclose(proj.components.numpy(), [[1, 0]], atol=1e-12)
    x = torch.tensor([[[3.0, 10.0], [9.0, 0.0]]], dtype=torch.float64)  # (1, 2, 2)
    torch.testing.assert_close(proj(x), torch.tensor([[[-2.0], [4.0]]], dtype=torch.float64))


def test_pca_general_case_is_orthonormal_and_centres():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    proj = InputProjection(6, 3, "pca").fit_pca(feats)
    comps = proj.components.double().numpy()
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-5)
    out = proj(torch.from_numpy(feats).float()[None]).double().numpy()[0]  # (40, 3)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    var = out.var(axis=0)
    assert var[0] >= var[1] >= var[2]  # sorted by explained variance


def test_pca_survives_a_state_dict_round_trip():
    model = ResLSTM(3, 2, 1, 4, input_proj="pca")
    model.proj.fit_pca(PCA_DATA)
    x = torch.randn(2, 3, 3)
    fresh = ResLSTM(3, 2, 1, 4, input_proj="pca")
    assert {"proj.mean", "proj.components"} <= set(model.state_dict())
    # the fitted flag is an integer buffer: DDP broadcasts it and .to(dtype) leaves it alone
    assert model.state_dict()["proj.fitted"].dtype == torch.uint8
    with pytest.raises(RuntimeError, match="fit_pca"):
        fresh(x)
    fresh.load_state_dict(model.state_dict())
    assert fresh.proj.is_fitted
    torch.testing.assert_close(fresh.proj.components, model.proj.components)
    torch.testing.assert_close(fresh(x), model(x))


def test_pca_errors():
    """Each PCA misuse is refused with a message that says what to do instead; an unfitted
    PCA reports ``is_fitted`` as a plain False."""
    with pytest.raises(ConfigError, match=r"PCA cannot project 3-d features up to hidden_size=4; "
                       r"use hidden_size <= input_dim or input_proj='linear'"):
        InputProjection(3, 4, "pca")
    proj = InputProjection(3, 2, "pca")
    assert proj.is_fitted is False
    with pytest.raises(ValueError, match="more than 2"):
        proj.fit_pca(PCA_DATA[:2])
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        proj.fit_pca(np.zeros((10, 4)))
    with pytest.raises(RuntimeError, match=r"^PCA input projection used before fitting: call "
                       r"fit_pca\(train_features\) \(ActionModel\.input_projections\(\) gives one "
                       r"per stream\) or load a checkpoint$"):
        proj(torch.zeros(1, 2, 3))


def test_pca_basis_keeps_every_direction_in_float64_and_refuses_non_finite_features():
    """``pca.pca_basis`` (what ``fit_pca`` and a sweep's shared fit use): float64 whatever the
    input's dtype; min(N, d_f) directions, so fewer samples than dims give N rows, not d_f."""
    few = np.array([[1, 0, 0, 0], [-1, 0, 0, 0], [0, 2, 0, 0]], dtype=np.float32)  # N=3 < d_f=4
    basis = pca_basis(few, 4)
    assert basis.mean.dtype == basis.components.dtype == np.float64 and basis.samples == 3
    assert basis.components.shape == (3, 4)
    np.testing.assert_allclose(basis.mean, [0, 2 / 3, 0, 0], atol=1e-15)
    np.testing.assert_allclose(basis.components[:2], [[0, 1, 0, 0], [1, 0, 0, 0]], atol=1e-15)
    # float64 throughout: the basis of float32 features is the float64 one of the same values
    feats = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    np.testing.assert_array_equal(pca_basis(feats, 5).components,
                                  pca_basis(feats.astype(np.float64), 5).components)
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"^fit_pca got non-finite feature values \(NaN or "
                           r"inf\)$"):
            pca_basis(np.array([[0.0, 1.0], [bad, 2.0], [1.0, 0.0]]), 2)


def test_none_projection():
    x = torch.randn(2, 3, 4)
    assert InputProjection(4, 4, "none")(x) is x
    with pytest.raises(ValueError, match="input_dim == hidden_size"):
        InputProjection(5, 4, "none")
    with pytest.raises(ValueError, match="input_dim == hidden_size"):
        ResLSTM(5, 4, 2, 3, input_proj="none")
    with pytest.raises(ConfigError, match=r"unknown input projection 'lda'; valid: pca, linear, none$"):
        InputProjection(4, 4, "lda")
    assert InputProjection(5, 4).kind == "linear"  # the default


def test_only_the_linear_projection_has_a_learned_map():
    """``linear`` is the nn.Linear for kind "linear" and None for "pca" and "none"."""
    assert isinstance(InputProjection(5, 4, "linear").linear, torch.nn.Linear)
    assert InputProjection(4, 4, "none").linear is None
    assert InputProjection(5, 4, "pca").linear is None


@pytest.mark.parametrize("kind", ["linear", "pca", "none"])
def test_wrong_feature_dim_is_a_clear_error(kind):
    """Every projection checks d_f first and names the expected dim and the shape it got."""
    proj = InputProjection(3, 3, kind)
    with pytest.raises(ValueError, match=r"^expected features of dim 3, got shape \(1, 2, 4\)$"):
        proj(torch.zeros(1, 2, 4))


def test_reslstm_needs_at_least_one_layer():
    with pytest.raises(ValueError, match=r"^num_layers must be >= 1, got 0$"):
        ResLSTM(4, 4, 0, 3, input_proj="none")


def test_pca_may_keep_every_dimension():
    """h = d_f is allowed: PCA is then a rotation onto the principal axes (no reduction)."""
    proj = InputProjection(3, 3, "pca").double().fit_pca(PCA_DATA)
    np.testing.assert_allclose(proj.components.numpy(), np.eye(3), atol=1e-12)


def test_temporal_mean_pool():
    torch.manual_seed(0)
    pool = TemporalMeanPool(5, 3, 4, "linear")
    x = torch.randn(2, 6, 5)
    expected = pool.classifier(pool.proj(x).mean(dim=1))
    torch.testing.assert_close(pool(x), expected)
    assert pool(x).shape == (2, 3)
    assert TemporalMeanPool(5, 3, 4).proj.kind == "linear"  # the default projection
    # input_proj reaches the projection: "none" feeds x itself to the mean
    bare = TemporalMeanPool(4, 3, 4, "none")
    assert bare.proj.kind == "none"
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(bare(x), bare.classifier(x.mean(dim=1)))


# --- ModelConfig and ActionModel -------------------------------------------------------------

def small_config(**kw) -> ModelConfig:
    base = dict(input_dim=6, num_classes=5, hidden_size=4, num_layers=2)
    base.update(kw)
    return ModelConfig(**base)


def inputs(batch=3, T=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"rgb": torch.randn(batch, T, d, generator=g), "flow": torch.randn(batch, T, d, generator=g)}


@pytest.mark.parametrize("arch", ["reslstm", "meanpool"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_action_model_heads_and_probabilities(fusion, arch):
    torch.manual_seed(0)
    cfg = small_config(fusion=fusion, arch=arch)
    model = build_model(cfg)
    logits = model(inputs())
    expected_heads = {"rgb": ["rgb"], "flow": ["flow"]}.get(
        fusion, ["mid"] if fusion.startswith("mid") else ["rgb", "flow"])
    assert list(logits) == expected_heads == list(cfg.heads)
    for value in logits.values():
        assert value.shape == (3, 5)
    probs = model.probabilities(logits)
    assert probs.shape == (3, 5)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    assert sorted(model.input_projections()) == sorted(cfg.streams)


def test_streams():
    assert small_config(fusion="rgb").streams == ("rgb",)
    assert small_config(fusion="flow").streams == ("flow",)
    assert small_config(fusion="mid-sum").streams == ("rgb", "flow")
    assert small_config(fusion="late-product").streams == ("rgb", "flow")


@pytest.mark.parametrize("fusion", ["mid-sum", "mid-product"])
def test_mid_fusion_shares_one_stack(fusion):
    torch.manual_seed(0)
    model = build_model(small_config(fusion=fusion))
    x = inputs()
    projs = model.input_projections()
    assert projs["rgb"] is not projs["flow"]
    x0 = mid_fuse(projs["rgb"](x["rgb"]), projs["flow"](x["flow"]), fusion.split("-")[1])
    torch.testing.assert_close(model(x)["mid"], model.core.forward_x0(x0))
    n_lstms = sum(isinstance(m, torch.nn.LSTM) for m in model.modules())
    assert n_lstms == 2  # one stack of L = 2 layers, shared by both streams


@pytest.mark.parametrize("fusion", ["late-product", "late-sum", "late-weighted"])
def test_late_fusion_has_independent_networks(fusion):
    torch.manual_seed(0)
    model = build_model(small_config(fusion=fusion))
    x = inputs()
    logits = model(x)
    torch.testing.assert_close(logits["rgb"], model.nets["rgb"](x["rgb"]))
    torch.testing.assert_close(logits["flow"], model.nets["flow"](x["flow"]))
    rgb_params = {id(p) for p in model.nets["rgb"].parameters()}
    assert rgb_params.isdisjoint(id(p) for p in model.nets["flow"].parameters())
    expected = late_fuse(logits["rgb"].softmax(-1), logits["flow"].softmax(-1), fusion.split("-")[1])
    torch.testing.assert_close(model.probabilities(logits), expected)


def test_action_model_from_config_dict_round_trip():
    torch.manual_seed(0)
    cfg = small_config(fusion="late-weighted", input_proj="pca", residual=False, dropout=0.1)
    model = ActionModel(cfg)
    feats = np.random.default_rng(0).normal(size=(20, 6))
    for proj in model.input_projections().values():
        proj.fit_pca(feats)
    stored = dataclasses.asdict(cfg)  # what a checkpoint holds
    rebuilt = ActionModel(stored)
    assert rebuilt.config == cfg
    rebuilt.load_state_dict(model.state_dict())
    model.eval()
    rebuilt.eval()
    x = inputs()
    for head, value in model(x).items():
        torch.testing.assert_close(rebuilt(x)[head], value)


def test_config_passes_its_settings_to_the_networks():
    torch.manual_seed(0)
    assert ResLSTM(4, 4, 2, 3, input_proj="none").residual  # residual by default (eq. 1)
    for arch in ("reslstm", "meanpool"):
        late = build_model(small_config(fusion="late-sum", arch=arch, dropout=0.25))
        assert {net.drop.p for net in late.nets.values()} == {0.25}
    for residual in (True, False):
        model = build_model(small_config(residual=residual))
        assert model.nets["rgb"].residual is residual
        assert build_model(small_config(fusion="mid-sum", residual=residual)).core.residual is residual
    mid = build_model(small_config(fusion="mid-product", input_proj="pca"))
    assert {p.kind for p in mid.input_projections().values()} == {"pca"}
    assert mid.core.proj.kind == "none"  # the shared stack reads the fused x^0 as it is


def test_config_bounds():
    ModelConfig(input_dim=1, num_classes=1, hidden_size=1, num_layers=1)  # all at their minimum
    for name in ("input_dim", "num_classes", "hidden_size", "num_layers"):
        with pytest.raises(ValueError, match=name):
            small_config(**{name: 0})
    small_config(dropout=0.0)
    small_config(dropout=0.99)
    for dropout in (1.0, -0.1):
        with pytest.raises(ValueError, match="dropout"):
            small_config(dropout=dropout)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        ActionModel({**dataclasses.asdict(small_config()), "heads": 3})
    with pytest.raises(ValueError, match="fusion"):
        small_config(fusion="early-sum")
    with pytest.raises(ValueError, match="arch"):
        small_config(arch="transformer")
    with pytest.raises(ConfigError, match=r"ModelConfig\.input_proj 'lda' unknown; valid: "
                       r"\('pca', 'linear', 'none'\)"):
        small_config(input_proj="lda")
    with pytest.raises(ValueError, match="hidden_size"):
        build_model(small_config(input_proj="pca", hidden_size=8))  # PCA cannot go 6 -> 8


def test_missing_stream_is_a_clear_error():
    model = build_model(small_config(fusion="mid-sum"))
    with pytest.raises(KeyError, match=r"fusion 'mid-sum' needs streams \['rgb', 'flow'\], "
                       r"missing \['flow'\] \(got \['rgb'\]\)"):
        model({"rgb": torch.zeros(1, 2, 6)})
    with pytest.raises(KeyError, match=r"fusion 'rgb' needs streams \['rgb'\], missing \['rgb'\]"):
        build_model(small_config(fusion="rgb"))({"flow": torch.zeros(1, 2, 6)})


def test_pca_basis_by_chunks_is_the_svd_of_the_whole_sample(monkeypatch):
    """The basis from the tall-skinny QR, a few rows at a time, is the one an SVD of the whole
    centred sample gives (same mean, same signed directions), however the rows are chunked."""
    import reslstm.pca as pca_module

    rng = np.random.default_rng(4)
    feats = (rng.normal(size=(103, 7)) @ rng.normal(size=(7, 7)) + 3).astype(np.float32)
    x = feats.astype(np.float64)
    mean = x.mean(axis=0)
    _, _, want = np.linalg.svd(x - mean, full_matrices=False)
    want *= np.sign(want[np.arange(7), np.abs(want).argmax(axis=1)])[:, None]
    for chunk_rows in (7, 10, 50, 103, 1000):  # the rows of a chunk: max(d_f, bytes / 8 d_f)
        monkeypatch.setattr(pca_module, "CHUNK_BYTES", chunk_rows * 8 * 7)
        basis = pca_module.pca_basis(feats, 7)
        np.testing.assert_allclose(basis.mean, mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(basis.components, want, rtol=0, atol=1e-10)
        assert basis.samples == 103
    few = pca_module.pca_basis(feats[:4], 7)  # N < d_f across chunks of 7 rows: N directions
    assert few.components.shape == (4, 7)
    np.testing.assert_allclose(few.components @ few.components.T, np.eye(4), atol=1e-12)
    with pytest.raises(ValueError, match="^fit_pca needs at least one feature vector$"):
        pca_basis(np.zeros((0, 7), np.float32), 7)
    monkeypatch.setattr(pca_module, "CHUNK_BYTES", 10 * 8 * 7)
    for row in (0, 60, 102):  # the first row, a later chunk, the last row
        bad = feats.copy()
        bad[row, 2] = np.inf
        with pytest.raises(ValueError, match=r"^fit_pca got non-finite feature values"):
            pca_module.pca_basis(bad, 7)
