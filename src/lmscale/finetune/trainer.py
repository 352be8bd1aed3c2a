"""Fine-tuning: pretrain once, fine-tune many times.

`finetune(model, tokenizer, task, cfg, out_dir)` adds a task head (or uses the LM head for
text-to-text), trains the whole network on the labelled examples, evaluates on dev after each
epoch, keeps the best checkpoint, stops early when dev stops improving, and writes
`results.json` with the best checkpoint's dev and test metrics.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer as Backend
from torch import nn

from lmscale.config import TrainConfig, from_dict
from lmscale.config.validate import choice, in_range, positive
from lmscale.errors import CheckpointError, DataError
from lmscale.finetune import metrics as M
from lmscale.finetune.features import Encoded, Featurizer, InputFormat, add_gpt_tokens, collate, pad_batch
from lmscale.finetune.heads import SequenceHead
from lmscale.finetune.tasks import Example, TaskData
from lmscale.io import atomic_directory, atomic_path, atomic_write_json, atomic_write_text, dumps_json
from lmscale.io.outputs import only_known_entries
from lmscale.models.serialization import load_model_dir, write_model_files
from lmscale.models.spec import family_spec
from lmscale.tokenization import Tokenizer
from lmscale.training.optim import adamw, lr_at, parameter_groups
from lmscale.training.step import BadSteps, OptimizerStep, record_step, streak_message

FORMAT = "lmscale-finetune"


FINETUNE_DIR_ENTRIES = frozenset({"best", "metrics.jsonl", "results.json", ".lmscale", ".lock"})


def looks_like_finetune_dir(path: Path) -> bool:
    """A fine-tuning run directory (written before run directories carried the output marker)."""
    recognised = (Path(path) / "results.json").is_file() or (Path(path) / "best" / "finetune.json").is_file()
    return recognised and only_known_entries(path, FINETUNE_DIR_ENTRIES)


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters; defaults suit tiny models on a CPU (BERT's recipe, scaled)."""

    mode: str = "auto"  # auto | head | text-to-text (label words as targets)
    pooling: Optional[str] = None  # encoder: cls | mean | pooler; encoder-decoder: mean | first
    freeze_body: bool = False  # linear probe: train only the head (and new token embeddings)
    max_length: int = 64
    max_target_length: int = 16
    batch_size: int = 32
    eval_batch_size: int = 128
    epochs: int = 3
    min_steps: int = 0  # small training sets: repeat epochs until at least this many steps
    max_steps: Optional[int] = None
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1  # of the steps; then a linear decay to zero (BERT's schedule)
    grad_clip: float = 1.0
    dropout: float = 0.1
    patience: Optional[int] = 3  # evaluations without dev improvement before stopping
    eval_every: Optional[int] = None  # evaluate every N steps instead of after each epoch
    seed: int = 0
    padding_side: str = "right"  # decoders: left or right padding
    symmetric: bool = False  # pair tasks whose order does not matter (GPT similarity)
    metric: Optional[str] = None  # dev metric that selects the best checkpoint
    train_examples: Optional[int] = None  # seeded random subset of the training split
    label_words: Optional[list[str]] = None  # text-to-text targets per class
    device: str = "cpu"

    def __post_init__(self) -> None:
        # the config package's validators, so fine-tuning refuses what run configs refuse, in the same words
        choice("mode", self.mode, ("auto", "head", "text-to-text"))
        choice("padding_side", self.padding_side, ("left", "right"))
        for name in ("max_length", "max_target_length", "batch_size", "eval_batch_size", "epochs", "lr"):
            positive(name, getattr(self, name))
        for name in ("max_steps", "eval_every", "train_examples"):
            positive(name, getattr(self, name), allow_none=True)
        for name in ("min_steps", "weight_decay", "grad_clip", "seed"):
            in_range(name, getattr(self, name), 0)
        in_range("patience", self.patience, 0, allow_none=True)
        in_range("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        in_range("dropout", self.dropout, 0.0, 1.0, hi_open=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FinetuneConfig":
        """Build from a mapping (a YAML file, saved results); an unknown key is a `ConfigError`
        that names the nearest valid key, as in run configs."""
        return from_dict(cls, d)

    def schedule(self, total_steps: int) -> TrainConfig:
        """The learning-rate schedule in pretraining's terms, for `lmscale.training.optim.lr_at`:
        linear warm-up over `warmup_fraction` of the steps, then linear decay to zero."""
        return TrainConfig(lr=self.lr, schedule="linear", min_lr_ratio=0.0,
                           warmup_steps=int(self.warmup_fraction * total_steps))


def copy_tokenizer(tokenizer):
    """An independent copy, so adding fine-tuning tokens never changes the caller's tokenizer."""
    return Tokenizer(Backend.from_str(tokenizer.to_json()), kind=tokenizer.kind, meta=dict(tokenizer.meta))


# ----------------------------------------------------------------------------- the fine-tuned model

class FinetunedModel(nn.Module):
    """A body plus what the task needs: a `SequenceHead`, or nothing (text-to-text)."""

    def __init__(self, body: nn.Module, tokenizer, meta: dict[str, Any]):
        super().__init__()
        self.meta = meta
        self.tokenizer = tokenizer
        self.family = body.config.family
        self.spec = family_spec(self.family)
        self.fmt = InputFormat(**meta["input_format"])
        self.featurizer = Featurizer(tokenizer, self.fmt)
        if meta["mode"] == "head":
            self.net: nn.Module = SequenceHead(body, self.family, meta["num_outputs"], meta["pooling"],
                                               meta.get("dropout", 0.1), meta["multiple_choice"])
        else:
            self.net = body

    @property
    def body(self) -> nn.Module:
        return self.net.body if isinstance(self.net, SequenceHead) else self.net

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    def encode(self, ex: Example) -> Encoded:
        """Token ids for one example; classification cast as text-to-text gets the task prefix
        (`sst2 sentence: ...`) and its label word as the target, keeping the class index."""
        words = self.meta.get("label_words")
        if words is None:
            return self.featurizer.encode(ex)
        prefix = self.meta["task"]
        text = (f"{prefix} sentence: {ex.text}" if ex.text_pair is None
                else f"{prefix} sentence1: {ex.text} sentence2: {ex.text_pair}")
        target = words[ex.label] if ex.label is not None else None
        e = self.featurizer.encode(Example(text, label=target, source=ex.source, line=ex.line))
        e.label = ex.label
        return e

    # --------------------------------------------------------------- batches
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def head_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        dev = self._device()
        return self.net(batch["input_ids"].to(dev), batch["attention_mask"].to(dev),
                        batch.get("token_type_ids").to(dev) if "token_type_ids" in batch else None,
                        batch["n_views"])

    def loss(self, encs: Sequence[Encoded]) -> torch.Tensor:
        if self.meta["mode"] == "head":
            batch = collate(encs, self.tokenizer.pad_id, self.fmt.padding_side, self.kind == "regression")
            logits = self.head_logits(batch)
            labels = batch["labels"].to(logits.device)
            if self.kind == "regression":
                mean, std = self.meta["target_mean"], self.meta["target_std"]
                return F.mse_loss(logits.squeeze(-1), (labels - mean) / std)
            return F.cross_entropy(logits, labels)
        return self._lm_loss(encs)

    def _lm_batch(self, encs: Sequence[Encoded],
                  targets: Optional[Sequence[list[int]]] = None) -> dict[str, torch.Tensor]:
        """Model kwargs whose `labels` score `targets` (default: each example's own target)."""
        targets = targets if targets is not None else [e.target for e in encs]
        if any(t is None for t in targets):
            raise DataError("text-to-text training needs a target for every example")
        pad = self.tokenizer.pad_id
        dev = self._device()
        if self.spec.is_encoder_decoder:
            b = pad_batch([e.views[0] for e in encs], pad, "right")
            lab = pad_batch(targets, pad, "right")
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
            return {"input_ids": b["input_ids"].to(dev), "attention_mask": b["attention_mask"].to(dev),
                    "labels": labels.to(dev)}
        seqs = [e.views[0] + t for e, t in zip(encs, targets)]
        b = pad_batch(seqs, pad, self.fmt.padding_side)
        labels = torch.full_like(b["input_ids"], -100)
        T = b["input_ids"].shape[1]
        for i, t in enumerate(targets):
            end = T if self.fmt.padding_side == "left" else len(seqs[i])
            labels[i, end - len(t):end] = torch.tensor(t)
        return {"input_ids": b["input_ids"].to(dev), "attention_mask": b["attention_mask"].to(dev),
                "labels": labels.to(dev)}

    def _lm_loss(self, encs: Sequence[Encoded]) -> torch.Tensor:
        return self.body(**self._lm_batch(encs)).loss

    def target_logprobs(self, encs: Sequence[Encoded], targets: Sequence[list[int]]) -> torch.Tensor:
        """Sum of log p(target token) for each (input, target) pair: rank classification."""
        batch = self._lm_batch(encs, targets)
        out = self.body(**batch)
        logits = out.logits
        labels = batch["labels"]
        if self.spec.causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        logp = torch.log_softmax(logits.float(), dim=-1)
        mask = labels != -100
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * mask).sum(dim=1)

    @torch.no_grad()
    def greedy(self, encs: Sequence[Encoded]) -> list[list[int]]:
        """Greedy decoding of at most `max_target_length` tokens (no cache: targets are short)."""
        eos, pad, dev = self.tokenizer.eos_id, self.tokenizer.pad_id, self._device()
        n_max = self.fmt.max_target_length
        done = [False] * len(encs)
        outs: list[list[int]] = [[] for _ in encs]
        if self.spec.is_encoder_decoder:
            b = pad_batch([e.views[0] for e in encs], pad, "right")
            ids, mask = b["input_ids"].to(dev), b["attention_mask"].to(dev)
            start = self.body.config.decoder_start_token_id
            dec = torch.full((len(encs), 1), start, dtype=torch.long, device=dev)
            for _ in range(n_max):
                logits = self.body(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits[:, -1]
                nxt = logits.argmax(-1)
                dec = torch.cat([dec, nxt[:, None]], dim=1)
                for i, t in enumerate(nxt.tolist()):
                    if not done[i]:
                        if t == eos:
                            done[i] = True
                        else:
                            outs[i].append(t)
                if all(done):
                    break
            return outs
        seqs = [list(e.views[0]) for e in encs]
        for _ in range(n_max):
            b = pad_batch(seqs, pad, "left")
            logits = self.body(b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev)).logits[:, -1]
            nxt = logits.argmax(-1).tolist()
            for i, t in enumerate(nxt):
                seqs[i].append(t)
                if not done[i]:
                    if t == eos:
                        done[i] = True
                    else:
                        outs[i].append(t)
            if all(done):
                break
        return outs

    # --------------------------------------------------------------- prediction
    @torch.no_grad()
    def predict_encoded(self, encs: Sequence[Encoded], batch_size: int = 128) -> dict[str, Any]:
        """Raw predictions: class indices + probabilities, scores, or output strings."""
        # length-sorted batches waste little on padding; results go back to the input order
        order = sorted(range(len(encs)), key=lambda i: sum(len(v) for v in encs[i].views))
        out = self._predict_sorted([encs[i] for i in order], batch_size)
        inverse = [0] * len(order)
        for pos, i in enumerate(order):
            inverse[i] = pos
        return {k: [v[inverse[i]] for i in range(len(order))] if v else v for k, v in out.items()}

    def _predict_sorted(self, encs: Sequence[Encoded], batch_size: int) -> dict[str, Any]:
        was_training = self.training
        self.eval()
        try:
            preds: list[Any] = []
            probs: list[list[float]] = []
            mode, kind = self.meta["mode"], self.kind
            words = self.meta.get("label_word_ids")
            for i in range(0, len(encs), batch_size):
                chunk = encs[i:i + batch_size]
                if mode == "head":
                    batch = collate([Encoded(e.views, e.types) for e in chunk], self.tokenizer.pad_id,
                                    self.fmt.padding_side)
                    logits = self.head_logits(batch).float()
                    if kind == "regression":
                        s = logits.squeeze(-1) * self.meta["target_std"] + self.meta["target_mean"]
                        preds.extend(s.tolist())
                    else:
                        p = logits.softmax(-1)
                        preds.extend(p.argmax(-1).tolist())
                        probs.extend(p.tolist())
                elif words:
                    n = len(words)
                    rep = [e for e in chunk for _ in range(n)]
                    tg = [w for _ in chunk for w in words]
                    lp = self.target_logprobs(rep, tg).view(len(chunk), n)
                    p = lp.softmax(-1)
                    preds.extend(p.argmax(-1).tolist())
                    probs.extend(p.tolist())
                else:
                    for ids in self.greedy(chunk):
                        preds.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
            return {"predictions": preds, "probabilities": probs}
        finally:
            self.train(was_training)

    def evaluate(self, encs: Sequence[Encoded], batch_size: int = 128) -> dict[str, float]:
        out = self.predict_encoded(encs, batch_size)
        preds = out["predictions"]
        gold = [e.label for e in encs]
        if self.kind == "regression":
            return M.regression_metrics(gold, preds)
        if self.kind == "classification":
            return M.classification_metrics(gold, preds, self.meta["num_outputs"])
        em = [p.strip() == str(g).strip() for p, g in zip(preds, gold)]
        return {"exact_match": float(np.mean(em)) if em else float("nan")}

    def predict(self, examples: Sequence[Example], batch_size: int = 128) -> list[dict[str, Any]]:
        """User-facing predictions: label and probabilities, score, or generated text."""
        encs = [self.encode(Example(ex.text, ex.text_pair, ex.choices, None, ex.source, ex.line))
                for ex in examples]
        out = self.predict_encoded(encs, batch_size)
        labels = self.meta.get("labels")
        rows = []
        for i, p in enumerate(out["predictions"]):
            if self.kind == "regression":
                rows.append({"score": float(p)})
            elif self.kind == "classification":
                probs = out["probabilities"][i]
                names = labels or [str(k) for k in range(len(probs))]
                rows.append({"label": names[p], "label_index": int(p),
                             "probabilities": {n: float(q) for n, q in zip(names, probs)}})
            else:
                rows.append({"output": p})
        return rows

    # --------------------------------------------------------------- persistence
    def save(self, out_dir: str | Path) -> Path:
        """`out_dir/model/` (a model dir any lmscale command loads), `head.safetensors`, `finetune.json`."""
        out_dir = Path(out_dir)
        with atomic_directory(out_dir) as tmp:
            write_model_files(self.body, self.tokenizer, tmp / "model")
            if isinstance(self.net, SequenceHead):
                state = {k: v.detach().cpu().contiguous() for k, v in self.net.head.state_dict().items()}
                with atomic_path(tmp / "head.safetensors") as p:
                    save_file(state, str(p))
            atomic_write_json(tmp / "finetune.json", {"format": FORMAT, "version": 1, **self.meta})
        return out_dir

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "FinetunedModel":
        """Load a fine-tuned model from its directory or from the run directory holding `best/`."""
        path = Path(path)
        if (path / "best" / "finetune.json").is_file():
            path = path / "best"
        meta_file = path / "finetune.json"
        if not meta_file.is_file():
            raise CheckpointError(f"{path}: not a fine-tuned model (no finetune.json; "
                                  "expected a fine-tuning run directory or its best/ directory)")
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{meta_file}: not a readable fine-tuning record ({exc}); the file is "
                                  "damaged: fine-tune again") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise CheckpointError(f"{meta_file}: unknown format {found!r}")
        meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
        _check_meta(meta, meta_file)
        body, tok = load_model_dir(path / "model", device=device)
        model = cls(body, tok, meta)
        if isinstance(model.net, SequenceHead):
            try:
                state = load_file(str(path / "head.safetensors"))
            except (OSError, SafetensorError) as exc:
                raise CheckpointError(f"{path / 'head.safetensors'}: cannot read the task head ({exc}); the "
                                      "file is damaged: fine-tune again") from None
            try:
                model.net.head.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(f"{path / 'head.safetensors'}: {exc}") from None
        return model.to(device).eval()


def _check_meta(meta: dict[str, Any], meta_file: Path) -> None:
    """The fields `FinetunedModel` reads, each of its type: a damaged record is named, not a KeyError."""
    need: dict[str, tuple[type, ...]] = {"mode": (str,), "kind": (str,), "input_format": (dict,)}
    if meta.get("mode") == "head":
        need |= {"num_outputs": (int,), "pooling": (str, type(None)), "multiple_choice": (bool,)}
    for key, types in need.items():
        if key not in meta:
            raise CheckpointError(f"{meta_file}: no {key!r} field; the record is damaged: fine-tune again")
        if not isinstance(meta[key], types) or (types == (int,) and isinstance(meta[key], bool)):
            raise CheckpointError(f"{meta_file}: field {key!r} is {meta[key]!r}; the record is damaged: "
                                  "fine-tune again")
    if meta["mode"] not in ("head", "text-to-text"):
        raise CheckpointError(f"{meta_file}: mode {meta['mode']!r} is not head or text-to-text")
    try:
        InputFormat(**meta["input_format"])
    except TypeError as exc:
        raise CheckpointError(f"{meta_file}: input_format is damaged ({exc})") from None


# ----------------------------------------------------------------------------- setup

def prepare(body: nn.Module, tokenizer, task: TaskData, cfg: FinetuneConfig) -> FinetunedModel:
    """Decide the mode, add decoder special tokens (resizing the embeddings) and build the head."""
    family = body.config.family
    spec = family_spec(family)
    kind = task.kind
    mode = cfg.mode
    if mode == "auto":
        mode = "text-to-text" if kind == "text-to-text" else "head"
    if kind == "text-to-text" and mode != "text-to-text":
        raise DataError("a text-to-text task (input -> target) has no head; use mode text-to-text")
    if mode == "text-to-text":
        if not spec.can_generate:
            raise DataError("encoders cannot generate text; use mode head (a classifier on [CLS])")
        if kind == "regression" or task.spec.choice_columns:
            raise DataError("text-to-text fine-tuning covers classification and text-to-text tasks")
    if not spec.causal and cfg.padding_side == "left":
        raise DataError("left padding is for decoders (the last real token is then at the end)")
    tok = copy_tokenizer(tokenizer)
    special: dict[str, int] = {}
    new_ids: list[int] = []
    if spec.head == "last_token":
        before = tok.vocab_size
        special = add_gpt_tokens(tok)
        new_ids = [i for i in special.values() if i >= before]
    if tok.vocab_size > body.config.vocab_size:
        body.resize_token_embeddings(tok.vocab_size)
    input_format = "text-to-text" if mode == "text-to-text" else task.spec.input_format
    fmt = InputFormat(family=family, max_length=cfg.max_length, input_format=input_format,
                      symmetric=bool(cfg.symmetric and task.spec.text_pair_column), padding_side=cfg.padding_side,
                      special=special, max_target_length=cfg.max_target_length)
    meta: dict[str, Any] = {
        "kind": kind, "mode": mode, "family": family,
        "pooling": (cfg.pooling or spec.default_pooling) if mode == "head" else None,
        "num_outputs": task.num_labels, "multiple_choice": bool(task.spec.choice_columns),
        "labels": task.labels, "input_format": fmt.to_dict(), "dropout": cfg.dropout,
        "task": task.name, "task_spec": asdict(task.spec), "new_token_ids": new_ids,
        "target_mean": 0.0, "target_std": 1.0,
    }
    if kind == "regression":
        ys = np.array([ex.label for ex in task.splits["train"]], dtype=np.float64)
        meta["target_mean"] = float(ys.mean())
        meta["target_std"] = float(ys.std()) or 1.0
    if mode == "text-to-text" and kind == "classification":
        words = cfg.label_words or task.labels
        if len(words) != len(task.labels):
            raise DataError(f"{len(words)} label words for {len(task.labels)} labels ({', '.join(task.labels)})")
        meta["label_words"] = list(words)
        meta["label_word_ids"] = [tok.encode(w) + [tok.eos_id] for w in words]
    return FinetunedModel(body, tok, meta)


def _encode(model: FinetunedModel, examples: Sequence[Example]) -> tuple[list[Encoded], int]:
    if model.meta.get("label_words") is None:
        return model.featurizer.encode_all(examples)
    encs = [model.encode(ex) for ex in examples]
    return encs, sum(e.truncated for e in encs)


def _freeze_body(model: FinetunedModel) -> None:
    """Linear probe: the body is frozen, except the embeddings of tokens added for fine-tuning,
    which have no pretrained value and must be learned (GPT's extract/delimiter tokens)."""
    for p in model.body.parameters():
        p.requires_grad_(False)
    new_ids = model.meta.get("new_token_ids") or []
    if new_ids:
        w = model.body.get_input_embeddings().weight
        w.requires_grad_(True)
        keep = torch.zeros(w.shape[0], 1, dtype=w.dtype)
        keep[new_ids] = 1.0
        w.register_hook(lambda g: g * keep.to(g.device))


# ----------------------------------------------------------------------------- the loop

def finetune(
    body: nn.Module,
    tokenizer,
    task: TaskData,
    cfg: Optional[FinetuneConfig] = None,
    out_dir: Optional[str | Path] = None,
    log: Optional[Callable[[dict[str, Any]], None]] = None,
    train_examples: Optional[list[Example]] = None,
) -> dict[str, Any]:
    """Fine-tune `body` (trained in place) on `task`; returns the results dict, whose `model`
    entry is the `FinetunedModel` with the best checkpoint's weights (ready for `predict`).

    With `out_dir`, the best checkpoint is kept in `out_dir/best/`, one JSON line per evaluation
    goes to `out_dir/metrics.jsonl`, and `out_dir/results.json` holds the best checkpoint's
    `{"dev": {...}, "test": {...}}` plus run facts (epochs, steps, truncation counts).
    """
    cfg = cfg or FinetuneConfig()
    if "dev" not in task.splits:
        raise DataError(f"task {task.name}: a dev split is needed for evaluation and early stopping")
    torch.manual_seed(cfg.seed)
    body.to(cfg.device)
    model = prepare(body, tokenizer, task, cfg).to(cfg.device)
    if train_examples is None:
        train_examples = task.subset("train", cfg.train_examples, cfg.seed)
    train_encs, train_cut = _encode(model, train_examples)
    splits_encs = {s: _encode(model, task.splits[s]) for s in task.splits if s != "train"}
    truncated = {"train": train_cut, **{s: v[1] for s, v in splits_encs.items()}}
    if cfg.freeze_body:
        _freeze_body(model)
    metric = cfg.metric or M.main_metric(task.kind)
    dev = _DevTracker(model, splits_encs["dev"][0], metric, task.kind, cfg, out_dir, log)
    epochs_run, steps, stopped_early = _train(model, train_encs, cfg, dev)
    assert dev.best is not None and dev.best_state is not None
    model.load_state_dict(dev.best_state)
    model.eval()
    results = _scores(model, task, splits_encs, metric, dev.best["dev"], cfg.eval_batch_size)
    results.update({
        "best_epoch": dev.best["epoch"], "best_step": dev.best["step"], "epochs_run": epochs_run,
        "evaluations": len(dev.history), "steps": steps,
        "stopped_early": stopped_early, "train_examples": len(train_encs), "truncated": truncated,
        "max_length": cfg.max_length, "labels": task.labels, "wall_s": round(time.perf_counter() - dev.t0, 3),
        "config": asdict(cfg),
    })
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "results.json", results)
    results["model"] = model
    return results


def total_steps(cfg: FinetuneConfig, n_examples: int) -> int:
    """Optimizer steps of a run: `epochs` passes (more when `min_steps` asks), at most `max_steps`."""
    steps_per_epoch = math.ceil(n_examples / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch)) if cfg.min_steps else cfg.epochs
    total = epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


class _DevTracker:
    """Dev evaluations of one run: the history, the best weights so far, and early stopping."""

    def __init__(self, model: FinetunedModel, dev_encs: list[Encoded], metric: str, kind: str,
                 cfg: FinetuneConfig, out_dir: Optional[str | Path],
                 log: Optional[Callable[[dict[str, Any]], None]]) -> None:
        self.model, self.dev_encs, self.metric, self.kind = model, dev_encs, metric, kind
        self.cfg, self.out_dir, self.log = cfg, out_dir, log
        self.history: list[dict[str, Any]] = []
        self.best: Optional[dict[str, Any]] = None
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self.bad_evals = 0
        self.t0 = time.perf_counter()

    def evaluate(self, epoch: float, step: int, losses: list[float]) -> bool:
        """Evaluate on dev, keep the best state; True when early stopping says stop."""
        dev = self.model.evaluate(self.dev_encs, self.cfg.eval_batch_size)
        if self.metric not in dev:
            raise DataError(f"metric {self.metric!r} is not computed for {self.kind} tasks (have {', '.join(dev)})")
        value = dev[self.metric]
        record = {"event": "eval", "epoch": round(epoch, 3), "step": step,
                  "train_loss": float(np.mean(losses)) if losses else None,
                  "dev": dev, "wall_s": round(time.perf_counter() - self.t0, 3)}
        self.history.append(record)
        if self.log:
            self.log(record)
        best = self.best
        if best is None or (math.isfinite(value) and (not math.isfinite(best["value"]) or value > best["value"])):
            self.best = {"value": value, "epoch": record["epoch"], "step": step, "dev": dev}
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.bad_evals = 0
            if self.out_dir is not None:
                self.model.save(Path(self.out_dir) / "best")
        else:
            self.bad_evals += 1
        if self.out_dir is not None:
            atomic_write_text(Path(self.out_dir) / "metrics.jsonl",
                              "".join(dumps_json(h) + "\n" for h in self.history))
        return self.cfg.patience is not None and self.bad_evals >= self.cfg.patience


def _train(model: FinetunedModel, encs: list[Encoded], cfg: FinetuneConfig,
           dev: _DevTracker) -> tuple[int, int, bool]:
    """Shuffled passes over `encs` on pretraining's schedule (`lr_at`) and optimizer step
    (`OptimizerStep`: a non-finite step is skipped and counted, `max_bad_steps` in a row stop the
    run), evaluating on dev every `eval_every` steps or after each pass; returns (passes begun,
    steps, stopped early)."""
    groups = parameter_groups(model, cfg.weight_decay)
    opt = adamw(groups, cfg.device, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    optimizer_step = OptimizerStep(model, opt, cfg.grad_clip, params=[p for g in groups for p in g["params"]])
    n = len(encs)
    total = total_steps(cfg, n)
    schedule = cfg.schedule(total)
    bad = BadSteps()
    rng = random.Random(cfg.seed)
    model.train()
    step, epoch, stopped_early = 0, 0, False
    losses: list[float] = []
    while step < total and not stopped_early:
        epoch += 1
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n, cfg.batch_size):
            if step >= total:
                break
            batch = [encs[j] for j in order[i:i + cfg.batch_size]]
            loss, _, skipped = optimizer_step(lr_at(step, total, schedule), partial(model.loss, batch)).read()
            step += 1
            if record_step(bad, skipped, schedule.max_bad_steps):
                raise DataError(f"fine-tuning: {streak_message(bad.consecutive_bad, step)}; lower lr or grad_clip")
            if not skipped:
                losses.append(loss)
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == total):
                stopped_early = dev.evaluate(epoch - 1 + (i + cfg.batch_size) / n, step, losses) and step < total
                losses = []
                if stopped_early:
                    break
        if not cfg.eval_every and not stopped_early:
            stopped_early = dev.evaluate(epoch, step, losses) and step < total
            losses = []
    return epoch, step, stopped_early


def _scores(model: FinetunedModel, task: TaskData, splits_encs: dict[str, tuple[list[Encoded], int]],
            metric: str, dev: dict[str, float], batch_size: int) -> dict[str, Any]:
    """The best checkpoint's dev scores, its test scores, and each task's own for a mixture."""
    results: dict[str, Any] = {
        "task": task.name, "kind": task.kind, "family": model.family, "mode": model.meta["mode"],
        "metric": metric, "dev": dev,
    }
    if "test" in splits_encs:
        results["test"] = model.evaluate(splits_encs["test"][0], batch_size)
    for split in ("dev", "test"):
        names = sorted({e.task for e in task.splits.get(split, []) if e.task is not None})
        if len(names) > 1:  # a multi-task mixture: each task's own score as well
            results[f"{split}_by_task"] = {
                name: model.evaluate(_encode(model, [e for e in task.splits[split] if e.task == name])[0],
                                     batch_size) for name in names}
    return results
