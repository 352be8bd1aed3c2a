"""Continued pretraining (`pretrain --init-from`): a fresh run from a parent's weights, config and
tokenizer; its first loss is the parent's final weights on the same batch, it resumes from its own
checkpoints, and model keys that disagree with the checkpoint are refused by name."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import lmscale
from lmscale.cli.main import main
from lmscale.config import compose
from lmscale.training import distributed as dist_util
from lmscale.training.build import build_run
from lmscale.training.checkpoint import list_checkpoints
from lmscale.training.engine import compute_loss
from lmscale.training.loop import pretrain

pytestmark = pytest.mark.slow

WORDS = "the cat sat on a mat while dogs ran over lazy foxes and birds sang in brown trees".split()
MODEL = {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.d_ff": 64, "model.vocab_size": 300}
TRAIN = ["--train.seq_len", "32", "--train.batch_size", "8", "--train.eval_every", "0", "--train.eval_batches", "2",
         "--train.log_every", "1", "--train.warmup_steps", "1", "--train.report_to", "none", "--no-progress"]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if r["event"] == "train"}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A decoder trained for 20 steps on a generated corpus, and its shards."""
    from lmscale.data.shards import prepare
    from lmscale.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("init-from")
    r = random.Random(0)
    corpus = root / "corpus.txt"
    corpus.write_text("".join(" ".join(r.choice(WORDS) for _ in range(r.randint(20, 60))) + ".\n\n"
                              for _ in range(200)))
    tok = train_tokenizer("bpe", [corpus.read_text()], 300)
    tok.save(root / "tok")
    prepare(str(corpus), tok, root / "shards", workers=1, progress=False)
    run = root / "parent"
    ov = {**MODEL, "data.tokenizer": str(root / "tok"), "data.shards": str(root / "shards"), "out": str(run),
          "train.seq_len": 32, "train.batch_size": 8, "train.max_steps": 20, "train.eval_every": 0,
          "train.eval_batches": 2, "train.log_every": 1, "train.warmup_steps": 1, "train.lr": 3e-3,
          "train.report_to": ["none"]}
    assert pretrain(compose("gpt-tiny", [], ov), progress=False)["status"] == "finished"
    return root


def _child(parent: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--init-from", str(parent / "parent"), "--shards", str(parent / "shards"),
                 "--out", str(out), "--max-steps", "4", "--checkpoint-every", "2", *TRAIN, *extra])


def test_child_starts_from_the_parents_weights_and_resumes(parent, tmp_path):
    child = tmp_path / "child"
    assert _child(parent, child) == 0
    first = _losses(child)[1]

    # the same first batch through the parent's final weights, loaded on their own
    probe_cfg = compose(None, [child / "config.yaml"], {"out": str(tmp_path / "probe")})
    run = build_run(probe_cfg, dist_util.DistInfo())
    (batch,), _ = run.batches.take(0)
    model, tokenizer = lmscale.load(parent / "parent")
    with torch.no_grad():
        expected = float(compute_loss(model.train(), batch))
    assert first == pytest.approx(expected, rel=1e-5)
    # ... which is far below a fresh initialisation's loss on that batch (the parent's own first step)
    assert first < _losses(parent / "parent")[1] - 1.0

    saved = yaml.safe_load((child / "config.yaml").read_text())
    assert Path(saved["train"]["init_from"]).parent.parent == parent / "parent"  # its checkpoint, for lineage
    assert saved["model"]["d_model"] == 32 and saved["model"]["vocab_size"] == 300
    assert lmscale.load(child)[1].hash == tokenizer.hash  # the parent's tokenizer, copied into the run

    # the child resumes from its own checkpoint, not from the parent: steps 3-4 come out the same
    steps = dict(list_checkpoints(child))
    assert sorted(steps) == [2, 4]
    shutil.rmtree(steps[4])
    before = _losses(child)
    assert main(["pretrain", "--resume", str(child), "--no-progress"]) == 0
    after = _losses(child)
    assert [after[s] for s in (3, 4)] == pytest.approx([before[s] for s in (3, 4)], rel=1e-6)


def test_transformers_parent_gives_the_same_first_loss(parent, tmp_path):
    """A `convert --to-hf` copy of the parent starts the child exactly where the parent does."""
    hf = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(parent / "parent"), "--out", str(hf)]) == 0
    a, b = tmp_path / "from-run", tmp_path / "from-hf"
    assert _child(parent, a, "--max-steps", "1") == 0
    assert main(["pretrain", "--init-from", str(hf), "--shards", str(parent / "shards"), "--out", str(b),
                 "--max-steps", "1", *TRAIN]) == 0
    assert _losses(b)[1] == pytest.approx(_losses(a)[1], rel=1e-5)


def test_conflicting_model_keys_are_refused_by_name(parent, tmp_path, capsys):
    assert _child(parent, tmp_path / "c1", "--model.d_model", "64", "--model.n_layers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--model.d_model 64 (checkpoint: 32)" in err and "n_layers" not in err  # n_layers agrees
    assert not (tmp_path / "c1").exists()
    assert _child(parent, tmp_path / "c2", "--tokenizer", str(parent / "tok")) == 2
    assert "tokenizer from the checkpoint" in capsys.readouterr().err
    assert _child(parent, tmp_path / "c3", "--resume", str(tmp_path / "c3")) == 2
    assert "--init-from starts a new run" in capsys.readouterr().err
