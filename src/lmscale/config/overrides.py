"""Dict plumbing and `--section.key value` overrides: building a config dataclass from a nested
mapping (with type coercion), dotted-key overrides, and did-you-mean suggestions that know the
names other tools give our keys (`learning_rate` -> `train.lr`, `n_embd` -> `model.d_model`).

Generic over config dataclasses: nothing here knows the run config's sections.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import fields
from typing import Any, Optional

from lmscale.config.yamlfile import parse_yaml_value
from lmscale.errors import ConfigError


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain dict (JSON/YAML-safe)."""
    return dataclasses.asdict(cfg)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(path: str, value: Any, tp: Any) -> Any:
    base, optional = _unwrap_optional(tp)
    if typing.get_origin(base) is list and (value is None or str(value).strip().lower() in ("", "none", "null")):
        return []  # report_to: none
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{path} cannot be null")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(f"{path}={value!r} is not a boolean (use true/false)")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} is not an integer")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} is not an integer") from None
        if not f.is_integer():
            raise ConfigError(f"{path}={value!r} is not an integer")
        return int(f)
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}={value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}={value!r} is not a number") from None
    if base is str:
        return str(value)
    origin = typing.get_origin(base)
    if origin is list:
        # `--train.report_to wandb,mlflow`, a YAML list, or none
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={value!r} is not a list (use a YAML list or comma-separated names)")
        return [str(v).strip() for v in value if str(v).strip() and str(v).strip().lower() != "none"]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}={value!r} is not a mapping")
        return dict(value)
    return value


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(cls: type, data: dict[str, Any] | None, path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys suggest the nearest valid key."""
    data = dict(data or {})
    hints = _type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}{key}"
        if key not in names:
            near = suggest_key(str(key), names)
            hint = f"; did you mean {path}{near!r}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key {full!r}{hint}{_alias_note(str(key), near)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{full} must be a mapping")
            kwargs[key] = from_dict(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(full, value, tp)
    return cls(**kwargs)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = _type_hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_all_keys(tp, f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


# names other tools (transformers' TrainingArguments and configs, nanoGPT, litgpt, Megatron) give to
# our keys: an unknown key is matched on meaning first, then on spelling
KEY_ALIASES: dict[str, str] = {
    "learning_rate": "lr", "lr_rate": "lr", "base_lr": "lr", "max_lr": "lr", "min_lr": "min_lr_ratio",
    "epochs": "max_steps", "num_epochs": "max_steps", "num_train_epochs": "max_steps", "max_epochs": "max_steps",
    "steps": "max_steps", "max_iters": "max_steps", "num_steps": "max_steps", "total_steps": "max_steps",
    "train_steps": "max_steps", "train_iters": "max_steps",
    "warmup": "warmup_steps", "num_warmup_steps": "warmup_steps", "warmup_iters": "warmup_steps",
    "lr_warmup_steps": "warmup_steps", "warmup_ratio": "warmup_fraction",
    "scheduler": "schedule", "lr_scheduler": "schedule", "lr_scheduler_type": "schedule", "lr_schedule": "schedule",
    "lr_decay_style": "schedule", "max_grad_norm": "grad_clip", "clip_grad": "grad_clip",
    "gradient_clipping": "grad_clip", "clip_grad_norm": "grad_clip",
    "adam_beta1": "beta1", "adam_beta2": "beta2", "adam_epsilon": "eps", "adam_eps": "eps", "wd": "weight_decay",
    "global_batch_size": "batch_size", "train_batch_size": "batch_size", "micro_batch": "micro_batch_size",
    "per_device_train_batch_size": "micro_batch_size", "gradient_accumulation_steps": "micro_batch_size",
    "max_seq_length": "seq_len", "seq_length": "seq_len", "block_size": "seq_len", "context_length": "seq_len",
    "eval_interval": "eval_every", "eval_steps": "eval_every", "eval_iters": "eval_batches",
    "log_interval": "log_every", "logging_steps": "log_every", "save_steps": "checkpoint_every",
    "save_interval": "checkpoint_every", "save_total_limit": "keep_last", "precision": "dtype",
    "mixed_precision": "dtype", "bf16": "dtype", "fp16": "dtype",
    "logger": "report_to", "logger_name": "report_to", "loggers": "report_to", "log_with": "report_to",
    "project": "tracker_project", "wandb_project": "tracker_project", "experiment_name": "tracker_project",
    "run_name": "tracker_run_name", "wandb_run_name": "tracker_run_name", "group": "tracker_group",
    "hidden_size": "d_model", "n_embd": "d_model", "dim": "d_model", "width": "d_model", "n_embed": "d_model",
    "num_hidden_layers": "n_layers", "num_layers": "n_layers", "n_layer": "n_layers", "depth": "n_layers",
    "num_attention_heads": "n_heads", "n_head": "n_heads", "num_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads", "n_kv_head": "n_kv_heads", "n_query_groups": "n_kv_heads",
    "head_dim": "d_head", "d_kv": "d_head", "head_size": "d_head",
    "intermediate_size": "d_ff", "n_inner": "d_ff", "ffn_dim": "d_ff", "ffn_hidden_size": "d_ff",
    "max_position_embeddings": "max_positions", "n_positions": "max_positions", "n_ctx": "max_positions",
    "vocab": "vocab_size", "padded_vocab_size": "vocab_size", "tie_word_embeddings": "tie_embeddings",
    "layer_norm_eps": "norm_eps", "layer_norm_epsilon": "norm_eps", "rms_norm_eps": "norm_eps",
    "hidden_act": "activation", "activation_function": "activation", "rotary_pct": "rotary_fraction",
    "partial_rotary_factor": "rotary_fraction", "rotary_percentage": "rotary_fraction",
    "rotary_emb_base": "rope_theta", "rope_base": "rope_theta", "use_parallel_residual": "parallel_residual",
    "parallel_attn": "parallel_residual", "hidden_dropout": "dropout", "resid_pdrop": "dropout",
    "dropout_rate": "dropout", "hidden_dropout_prob": "dropout", "attn_pdrop": "attention_dropout",
    "attention_probs_dropout_prob": "attention_dropout", "initializer_range": "init_std",
    "mlm_prob": "mlm_probability", "masking_probability": "mlm_probability",
}
# what an alias cannot say by pointing at one key
KEY_NOTES: dict[str, str] = {
    "max_steps": "pretraining is budgeted in train.max_steps, train.max_tokens, train.max_flops or "
                 "train.max_time_s, not in epochs",
    "micro_batch_size": "train.batch_size is the global batch in sequences, train.micro_batch_size "
                        "what one process runs per step; gradient accumulation fills the rest",
    "dtype": "train.dtype is auto, fp32, bf16 or fp16",
}


def suggest_key(key: str, valid: list[str]) -> Optional[str]:
    """The valid dotted key nearest to an unknown one: the same name in another section, a common
    alias (`learning_rate` -> `lr`, `epochs` -> `max_steps`, `warmup` -> `warmup_steps`) in this
    section or another, else the closest spelling."""
    section, _, leaf = key.rpartition(".")
    leaf = leaf.replace("-", "_")
    by_leaf: dict[str, list[str]] = {}
    for k in valid:
        by_leaf.setdefault(k.rpartition(".")[2], []).append(k)

    def in_section(name: str) -> Optional[str]:
        keys = by_leaf.get(name, [])
        same = [k for k in keys if k.rpartition(".")[0] == section]
        return (same or keys or [None])[0]

    for name in (leaf, KEY_ALIASES.get(leaf.lower()), KEY_ALIASES.get(leaf.lower().lstrip("_"))):
        if name and (found := in_section(name)) is not None and found != key:
            return found
    own = [k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section]
    near = difflib.get_close_matches(leaf, own, n=1, cutoff=0.6) or difflib.get_close_matches(
        leaf, list(by_leaf), n=1, cutoff=0.6)
    return in_section(near[0]) if near else None


def _alias_note(key: str, suggestion: Optional[str]) -> str:
    """A note on what the suggested key means, when it was found through an alias."""
    leaf = key.rpartition(".")[2].replace("-", "_").lower()
    note = KEY_NOTES.get((suggestion or "").rpartition(".")[2]) if leaf in KEY_ALIASES else None
    return f" ({note})" if note else ""


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of `cfg` with dotted-key overrides (`{"model.d_model": 256}`) applied."""
    data = to_dict(cfg)
    valid = _all_keys(type(cfg))
    for key, value in overrides.items():
        if key not in valid:
            near = suggest_key(key, valid)
            hint = f"; did you mean --{near}?{_alias_note(key, near)}" if near else ""
            raise ConfigError(f"unknown option --{key}{hint}")
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node[p]
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def parse_override_args(argv: list[str]) -> dict[str, Any]:
    """Parse `--a.b value` / `--a.b=value` pairs; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --model.d_model 256")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"option --{key} needs a value")
            raw = argv[i + 1]
            i += 2
        key = key.replace("-", "_") if "." not in key else ".".join(
            p.replace("-", "_") for p in key.split(".")
        )
        out[key] = parse_yaml_value(raw, f"--{key}") if raw != "" else ""
    return out
