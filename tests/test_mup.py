"""muP (Tensor Programs V): the coordinate check, Adam's per-group rates, and sp unchanged."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lmscale.config import ConfigError, ModelConfig, TrainConfig
from lmscale.experiments.coord_check import CoordCheckConfig, run_coord_check, token_stream, widen
from lmscale.models import build_model
from lmscale.models.blocks import attention_scale
from lmscale.training.optim import build_optimizer, parameter_groups

BASE = ModelConfig(family="decoder", vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=128, max_positions=32,
                   activation="gelu_tanh")


def test_config_fields_are_validated():
    assert BASE.parametrization == "sp" and BASE.width_mult == 1.0
    assert dataclasses.replace(BASE, d_model=128, parametrization="mup", mup_base_width=32).width_mult == 4.0
    with pytest.raises(ConfigError, match="parametrization"):
        dataclasses.replace(BASE, parametrization="ntk")
    with pytest.raises(ConfigError, match="mup_base_width"):
        dataclasses.replace(BASE, mup_base_width=32)
    with pytest.raises(ConfigError, match="mup_base_width"):
        dataclasses.replace(BASE, parametrization="mup", mup_base_width=0)
    with pytest.raises(ConfigError, match="encoder"):
        dataclasses.replace(BASE, family="encoder", parametrization="mup")


def test_sp_model_and_optimizer_are_unchanged_by_the_new_fields():
    """The default builds the same weights, logits and optimizer groups as a config without muP."""
    torch.manual_seed(0)
    m = build_model(BASE)
    ids = torch.randint(0, 256, (2, 16))
    assert m.readout_mult is None
    assert attention_scale(BASE) is None
    assert attention_scale(dataclasses.replace(BASE, position="relative")) == 1.0
    torch.manual_seed(0)
    ref = build_model(dataclasses.replace(BASE, parametrization="mup"))  # base width = its own width
    for (n, a), (_, b) in zip(m.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n
    torch.testing.assert_close(m(ids).logits, ref(ids).logits, rtol=1e-6, atol=1e-6)
    groups = build_optimizer(m, TrainConfig(lr=1e-3)).param_groups
    assert all("lr_scale" not in g for g in groups)
    assert [len(g["params"]) for g in groups] == [len(g["params"]) for g in parameter_groups(m, 0.1)]


def test_mup_scalings_against_tensor_programs_v():
    """At width multiplier 4: hidden init std / 2, readout x 1/4, attention 1/d_head, hidden Adam lr / 4."""
    wide = widen(BASE, 128, "mup", 32)
    assert wide.d_ff == 512 and wide.head_dim == 32
    torch.manual_seed(0)
    m = build_model(wide)
    assert m.readout_mult == pytest.approx(0.25)
    # 1/d_head, equal to sp's 1/sqrt(d_head) at the base head size 8
    assert attention_scale(wide) == pytest.approx(math.sqrt(8) / 32)
    qkv = m.layers[0].attn.qkv.weight
    assert qkv.std().item() == pytest.approx(0.02 / 2, rel=0.05)
    assert m.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)  # input weights: unscaled
    opt = build_optimizer(m, TrainConfig(lr=1e-3))
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale_of[id(qkv)] == 0.25
    assert scale_of[id(m.layers[0].mlp.fc_out.weight if hasattr(m.layers[0].mlp, "fc_out") else qkv)] == 0.25
    assert scale_of[id(m.tok_emb.weight)] == 1.0  # embedding (and tied readout): vector-like
    assert scale_of[id(m.layers[0].attn.qkv.bias)] == 1.0
    from lmscale.training.step import OptimizerStep

    OptimizerStep(m, opt).set_lr(2e-3)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(qkv)] == pytest.approx(5e-4) and lrs[id(m.tok_emb.weight)] == 2e-3


def test_untied_readout_keeps_base_init_and_rate():
    m = build_model(widen(dataclasses.replace(BASE, tie_embeddings=False), 128, "mup", 32))
    opt = build_optimizer(m, TrainConfig(lr=1e-3))
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    assert scale_of[id(m.lm_head.weight)] == 1.0
    assert m.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_coord_check_logits_flat_under_mup_and_growing_under_sp():
    """Tensor Programs V Fig. 5: after a few Adam steps sp's logits grow with width, muP's do not."""
    res = run_coord_check(CoordCheckConfig(dataclasses.replace(BASE, d_model=32), widths=[32, 128], steps=4,
                                           lr=1e-2, seeds=2, batch_size=4, seq_len=32))
    g = res["growth_last_step"]
    assert g["sp"]["logits"] > 1.6, g
    assert 0.7 < g["mup"]["logits"] < 1.3, g
    for k in ("embedding", "block0", "block1"):
        assert 0.7 < g["mup"][k] < 1.3, (k, g)
    # identical models at the base width: sp and muP start from the same numbers
    assert res["activations"]["sp"]["32"] == res["activations"]["mup"]["32"]


def test_token_stream_is_deterministic_and_zipfian():
    a, b = token_stream(256, 4096, 0), token_stream(256, 4096, 0)
    assert torch.equal(a, b)
    counts = torch.bincount(a, minlength=256)
    assert counts[0] > counts[10] > counts[200]


def test_cli_coord_check(tmp_path, capsys):
    from lmscale.cli import main

    out = tmp_path / "cc"
    assert main(["experiment", "coord-check", "--preset", "gpt-tiny", "--widths", "32,64", "--steps", "1",
                 "--seeds", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mup: width 32 -> 64" in text and "logits" in text
    assert (out / "coord_check.json").is_file() and (out / "coord_check.png").is_file()


def test_a_mup_model_off_its_base_width_is_not_exported_to_transformers():
    """Its attention scale and logit multiplier have no place in a transformers config: refused,
    not exported into a model that computes other logits; at the base width muP is SP and exports."""
    from lmscale.errors import CheckpointError
    from lmscale.models.hf import hf_state_dict

    kw = dict(family="decoder", vocab_size=64, d_model=64, n_layers=1, n_heads=2, max_positions=16,
              activation="gelu_tanh", parametrization="mup")
    with pytest.raises(CheckpointError, match="parametrization=mup"):
        hf_state_dict(build_model(ModelConfig(**kw, mup_base_width=32)))
    assert hf_state_dict(build_model(ModelConfig(**kw, mup_base_width=64)))[0] == "GPT2LMHeadModel"
