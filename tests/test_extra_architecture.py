"""An architecture added from outside the package, as docs/adding-a-model.md describes: this module
defines a decoder whose token mixer is causal linear attention (Katharopoulos et al. 2020, feature
map elu + 1) and registers it as family `toy-linear`; tests/presets/toy-extra.yaml is its preset.
With no edit anywhere else it pretrains, checkpoints, resumes exactly, counts its parameters,
loads, generates (with and without the cache), scores perplexity and fine-tunes."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmscale
from lmscale.config import ConfigError, ModelConfig, load_run_config
from lmscale.errors import CheckpointError
from lmscale.models import DecoderModel, FamilySpec, build_model, family_spec, register_family
from lmscale.models.blocks import SelfAttention

PRESET = Path(__file__).parent / "presets" / "toy-extra.yaml"
WORDS = "the cat sat on a mat while dogs ran over lazy foxes and birds sang in quick brown trees".split()


class LinearAttention(SelfAttention):
    """Causal linear attention: weights phi(q).phi(k) instead of a softmax, phi = elu + 1. The
    projections are attention's own, so `ModelConfig`'s parameter count holds unchanged, and the
    cache is the same keys and values."""

    def forward(self, x, mask=None, is_causal=False, rope=None, past=None, use_cache=False):
        b, t, _ = x.shape
        q, k, v = (z.transpose(1, 2) for z in self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(2))
        if past is not None:
            k, v = torch.cat((past[0], k), 2), torch.cat((past[1], v), 2)
        present = (k, v) if use_cache else None
        n = k.shape[2]
        allowed = mask
        if allowed is None:  # no padding: causal over the cache and the new tokens
            allowed = torch.arange(n, device=x.device)[None] <= torch.arange(n - t, n, device=x.device)[:, None]
        w = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2) * allowed
        y = (w @ v) / w.sum(-1, keepdim=True).clamp_min(1e-6)
        return self.out(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)), present


class LinearAttentionDecoder(DecoderModel):
    """GPT-2's decoder with every self-attention replaced by `LinearAttention`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        for layer in self.layers:
            mixer = LinearAttention(cfg)
            mixer.load_state_dict(layer.attn.state_dict())
            layer.attn = mixer


SPEC = register_family(FamilySpec(
    name="toy-linear", model_class=LinearAttentionDecoder, objective="causal", tokenizer_kind="bpe",
    causal=True, head="last_token", scoring="causal", poolings=("last",),
    description="decoder with causal linear attention",
))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lmscale.data.shards import prepare
    from lmscale.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("extra-data")
    r = random.Random(0)
    text = "".join(" ".join(r.choice(WORDS) for _ in range(r.randint(20, 60))) + ".\n\n" for _ in range(200))
    tok = train_tokenizer(SPEC.tokenizer_kind, [text], 300)
    tok.save(root / "tok")
    prepare(str(_write(root / "corpus.txt", text)), tok, root / "shards", workers=1, progress=False)
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _cfg(data: Path, run: Path, **overrides):
    ov = {"data.tokenizer": str(data / "tok"), "data.shards": str(data / "shards"), "out": str(run), **overrides}
    return load_run_config(config_file=PRESET, overrides=ov)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "train"]


def test_the_family_is_registered_for_configs_and_models():
    cfg = ModelConfig(family="toy-linear", vocab_size=50, d_model=16, n_layers=1, n_heads=2)
    model = build_model(cfg)
    assert type(model) is LinearAttentionDecoder and family_spec(model) is SPEC
    assert SPEC.can_generate and not SPEC.can_fill_mask and not SPEC.is_encoder_decoder
    with pytest.raises(ConfigError, match="toy-linear"):  # the registry names it among the choices
        ModelConfig(family="toy-linearr")
    # the mixer really differs: the same weights in GPT-2's decoder give other logits
    plain = build_model(ModelConfig(family="decoder", vocab_size=50, d_model=16, n_layers=1, n_heads=2))
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (2, 7))
    assert not torch.allclose(plain.eval()(ids).logits, model.eval()(ids).logits)


def test_pretrain_resume_load_generate_and_finetune(data, tmp_path):
    from lmscale.evaluation.perplexity import perplexity
    from lmscale.finetune import FinetuneConfig, finetune, load_task
    from lmscale.inference.generate import generate
    from lmscale.models.hf import to_hf
    from lmscale.training import loop

    full = loop.pretrain(_cfg(data, tmp_path / "full"), progress=False)
    assert full["status"] == "finished" and full["steps"] == 6
    cut = loop.pretrain(_cfg(data, tmp_path / "cut", **{"train.time_cap_s": 1e-6}), progress=False)
    assert cut["status"] == "time_cap" and cut["steps"] < 6
    resumed = loop.pretrain(_cfg(data, tmp_path / "cut"), resume=True, progress=False)
    assert resumed["steps"] == 6 and _losses(tmp_path / "cut")[-1] == pytest.approx(_losses(tmp_path / "full")[-1])

    model, tok = lmscale.load(tmp_path / "full")
    assert type(model) is LinearAttentionDecoder
    counted = SPEC.parameter_counts(model.config)
    assert counted == model.num_parameters() and full["params"]["total"] == counted["total"]

    cached = generate(model, tok, "the cat", max_new_tokens=6, greedy=True, stop_at_eos=False)
    uncached = generate(model, tok, "the cat", max_new_tokens=6, greedy=True, stop_at_eos=False, use_cache=False)
    assert len(cached.token_ids) == 6 and cached.token_ids == uncached.token_ids
    assert perplexity(model, tok, "the cat sat on a mat.").kind == "perplexity"
    with pytest.raises(CheckpointError, match="no transformers architecture"):
        to_hf(model, tok, tmp_path / "hf")

    rows = [{"sentence": " ".join(random.Random(i).choices(WORDS, k=6)), "label": i % 2} for i in range(24)]
    files = {"train": tmp_path / "train.jsonl", "dev": tmp_path / "dev.jsonl"}
    files["train"].write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    files["dev"].write_text("".join(json.dumps(r) + "\n" for r in rows[16:]))
    task = load_task(files)
    res = finetune(model, tok, task, FinetuneConfig(epochs=1, max_steps=2, batch_size=8, max_length=16))
    assert res["family"] == "toy-linear"
