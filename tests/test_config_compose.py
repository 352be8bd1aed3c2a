"""The config package's one YAML reader, one composer (preset < files < overrides), one deep merge
that sweeps use too, and the model-family registry that config validation reads."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lmscale.config import (
    FAMILIES,
    FAMILY_OBJECTIVE,
    FAMILY_TOKENIZER,
    ConfigError,
    ModelConfig,
    RunConfig,
    compose,
    deep_merge,
    families,
    load_preset,
    load_run_config,
    load_yaml,
    parse_override_args,
    to_dict,
)
from lmscale.experiments.sweep import DEMO_SWEEP, SweepConfig, plan
from lmscale.finetune.trainer import FinetuneConfig

# ----------------------------------------------------------------------------- load_yaml


def _one_line_naming(exc: pytest.ExceptionInfo, path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("dir", "is a directory"),
    (b"\xff\xfe\x00binary", "is not UTF-8"),
    ("model: {d_model: 64\ntrain: [", "is not valid YAML (line"),
    ("- a\n- b\n", "must hold a mapping"),
    ("just text", "must hold a mapping"),
])
def test_load_yaml_errors_are_one_line_and_name_the_file(tmp_path, content, expected):
    path = tmp_path / "cfg.yaml"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    assert expected in _one_line_naming(exc, path)


def test_load_yaml_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {}\n")

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # (chmod does not stop root)
    with pytest.raises(ConfigError, match="cannot read it \\(Permission denied\\)") as exc:
        load_yaml(path)
    _one_line_naming(exc, path)


def test_load_yaml_reads_mappings_and_empty_files(tmp_path):
    (tmp_path / "a.yaml").write_text("model: {d_model: 64}\n")
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "a.yaml") == {"model": {"d_model": 64}}
    assert load_yaml(tmp_path / "empty.yaml") == {}
    (tmp_path / "obj.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # the safe loader builds no objects
        load_yaml(tmp_path / "obj.yaml")


def test_load_yaml_names_the_kind_of_file(tmp_path):
    with pytest.raises(ConfigError, match="^sweep config .* does not exist$"):
        load_yaml(tmp_path / "nope.yaml", what="sweep config")


def test_sweep_config_files_go_through_load_yaml(tmp_path):
    p = tmp_path / "sweep.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="^sweep config .*sweep.yaml is not valid YAML") as exc:
        SweepConfig.load(p)
    _one_line_naming(exc, p)


def test_an_invalid_yaml_override_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"--train.lr '\[1,' is not a valid YAML value"):
        parse_override_args(["--train.lr", "[1,"])


# ----------------------------------------------------------------------------- compose


def test_compose_order_is_preset_then_files_then_overrides(tmp_path):
    preset = load_preset("gpt-tiny")
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({"model": {"n_layers": 3, "d_model": 64}, "train": {"lr": 0.01, "seed": 7}}))
    second.write_text(yaml.safe_dump({"model": {"n_layers": 5}, "train": {"seed": 8}}))
    cfg = compose("gpt-tiny", [first, second], {"model.n_layers": 2})
    assert cfg.model.n_layers == 2  # the override beats both files
    assert cfg.train.seed == 8  # the later file beats the earlier one
    assert cfg.model.d_model == 64 and cfg.train.lr == 0.01  # a file beats the preset
    assert cfg.model.d_ff == preset.model.d_ff and cfg.model.activation == preset.model.activation  # the preset
    assert cfg.train.batch_size == preset.train.batch_size  # sibling keys of overridden ones survive
    assert cfg.preset == "gpt-tiny"


def test_compose_reads_the_preset_a_file_names_and_equals_load_run_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"preset": "bert-tiny", "train": {"lr": 0.003}}))
    cfg = compose(files=[path], overrides={"train.seed": 5})
    assert cfg.model.family == "encoder" and cfg.train.lr == 0.003 and cfg.train.seed == 5
    assert to_dict(cfg) == to_dict(load_run_config(path, None, {"train.seed": 5}))
    assert to_dict(compose()) == to_dict(RunConfig())


def test_compose_takes_mappings_and_leaves_them_untouched():
    layer = {"model": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}, "train": {"tracker_params": {"a": 1}}}
    later = {"model": {"rope_scaling": {"factor": 2.0}}, "train": {"tracker_params": {"b": 2}}}
    before = copy.deepcopy([layer, later])
    cfg = compose("llama-tiny", [layer, later])
    assert [layer, later] == before
    # a nested mapping merges key by key
    assert cfg.train.tracker_params == {"a": 1, "b": 2}
    assert cfg.model.rope_scaling == {"rope_type": "linear", "factor": 2.0}


def test_compose_overrides_keep_the_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean --train.lr"):
        compose("gpt-tiny", overrides={"train.learning_rate": 1e-3})


def test_deep_merge_is_deep_and_pure():
    base = {"a": {"b": {"c": 1, "d": 2}, "e": [1]}, "f": 1}
    over = {"a": {"b": {"c": 9}}, "f": {"g": 1}}
    out = deep_merge(base, over)
    assert out == {"a": {"b": {"c": 9, "d": 2}, "e": [1]}, "f": {"g": 1}}
    assert base == {"a": {"b": {"c": 1, "d": 2}, "e": [1]}, "f": 1} and over == {"a": {"b": {"c": 9}}, "f": {"g": 1}}
    out["a"]["e"].append(2)
    assert base["a"]["e"] == [1]


# ----------------------------------------------------------------------------- sweeps


def test_sweep_base_is_deep_merged_over_its_preset(tmp_path, monkeypatch):
    """A nested key of the sweep's `base` changes only that key: its siblings in the preset stay
    (the per-section update sweeps used before replaced the whole `rope_scaling` mapping)."""
    import lmscale.config.presets as presets

    (tmp_path / "rope-tiny.yaml").write_text(yaml.safe_dump({
        "about": {"description": "test"},
        "model": {"family": "decoder", "vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4,
                  "max_positions": 64, "position": "rope",
                  "rope_scaling": {"rope_type": "linear", "factor": 4.0}},
        "train": {"seq_len": 32, "batch_size": 4, "lr": 0.002},
    }))
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    sweep = SweepConfig.from_dict({
        "name": "deep", "preset": "rope-tiny", "sizes": [3e4], "tokens": [1280], "seeds": [0],
        "base": {"model": {"rope_scaling": {"factor": 8.0}}, "train": {"tracker_params": {"team": "x"}},
                 "data": {"corpus": "wikitext-2"}},
    })
    base = sweep.base_config()
    assert base.model.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    assert base.model.vocab_size == 512 and base.train.batch_size == 4
    (spec,) = plan(sweep, tmp_path / "out")
    assert spec.config.model.rope_scaling == {"rope_type": "linear", "factor": 8.0}
    params = spec.config.train.tracker_params
    assert params["team"] == "x" and params["sweep"] == "deep" and params["seed"] == 0


def test_sweep_run_ids_are_those_of_existing_registries(tmp_path):
    """Run ids hash the planned config: they were recorded with the sweep composition before the
    one composer, and registries written then must find their runs again."""
    specs = plan(SweepConfig.from_dict(copy.deepcopy(DEMO_SWEEP)), tmp_path)
    assert sorted(s.run_id for s in specs) == [
        "027620beb146", "0e00136b7249", "35237e1feae8", "51c2762d3795", "58c5b777df15", "7add52b0efa9",
        "b7d0c0e52be7", "ca855c6585e2", "d7e1260db397"]


def test_a_preset_key_in_the_sweep_base_stays_a_label():
    sweep = SweepConfig.from_dict({"name": "lbl", "preset": None, "sizes": [1e5], "tokens": [1e6],
                                   "base": {"preset": "gpt-tiny"}})
    cfg = sweep.base_config()
    assert cfg.preset == "gpt-tiny" and to_dict(cfg.model) == to_dict(ModelConfig())


# ----------------------------------------------------------------------------- families


def test_family_constants_come_from_the_registry():
    assert FAMILIES == ("encoder", "decoder", "encoder-decoder")
    assert FAMILY_TOKENIZER == {"encoder": "wordpiece", "decoder": "bpe", "encoder-decoder": "unigram"}
    assert FAMILY_OBJECTIVE == {"encoder": "mlm", "decoder": "causal", "encoder-decoder": "span"}


def test_a_registered_family_passes_config_validation():
    with pytest.raises(ConfigError, match="model.family='decoder-x'"):
        ModelConfig(family="decoder-x")
    families.register_family("decoder-x", "bpe", "causal", description="a test family")
    try:
        assert families.register_family("decoder-x", "bpe", "causal").name == "decoder-x"  # again: a no-op
        cfg = RunConfig(model=ModelConfig(family="decoder-x"))
        assert cfg.tokenizer_kind == "bpe" and cfg.objective_kind == "causal"
        assert "decoder-x" in families.FAMILIES and families.FAMILY_OBJECTIVE["decoder-x"] == "causal"
        import lmscale.config as config

        assert "decoder-x" in config.FAMILIES
        with pytest.raises(ConfigError, match="already registered"):
            families.register_family("decoder-x", "unigram", "span")
        assert families.register_family("decoder-x", "unigram", "span", replace=True).objective == "span"
    finally:
        families.unregister_family("decoder-x")
    assert not families.is_family("decoder-x")


def test_family_registration_is_checked():
    with pytest.raises(ConfigError, match="did you mean 'wordpiece'"):
        families.register_family("enc-x", "wordpeice", "mlm")
    with pytest.raises(ConfigError, match="objective"):
        families.register_family("enc-x", "wordpiece", "denoise")
    with pytest.raises(ConfigError, match="built in"):
        families.register_family("decoder", "bpe", "causal")
    with pytest.raises(ConfigError, match="built in"):
        families.unregister_family("encoder")
    with pytest.raises(ConfigError, match="did you mean 'decoder'"):
        families.get_family("decodr")


# ----------------------------------------------------------------------------- fine-tuning validators


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "heads"}, "mode='heads' is not one of auto, head, text-to-text; did you mean 'head'"),
    ({"dropout": 1.0}, r"dropout=1.0 must be in \[0, 1\)"),
    ({"epochs": True}, "epochs=True must be a positive"),
    ({"weight_decay": float("nan")}, r"weight_decay=nan must be in \[0, inf\)"),
    ({"max_steps": 0}, "max_steps=0 must be a positive"),
    ({"patience": -1}, r"patience=-1 must be in \[0, inf\)"),
])
def test_finetune_config_uses_the_config_validators(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneConfig(**kwargs)
