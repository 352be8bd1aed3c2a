"""`experiment transfer`: both starts trained at every size and seed, the effective data
transferred read off the random-init curve, and the transfer law over several checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from lmscale.errors import LmscaleError
from lmscale.experiments.pretraining_effect import PretrainingEffectConfig
from lmscale.experiments.transfer import TransferConfig, run_transfer
from test_finetune_experiment import make_data, tiny_encoder_checkpoint

torch.set_num_threads(1)


def _checkpoint(path, seed, tokens):
    tiny_encoder_checkpoint(path, seed=seed)
    (path / "summary.json").write_text(json.dumps({"tokens": tokens}))
    return path


@pytest.mark.parametrize("method", ["probe", "finetune"])
def test_transfer_table_figure_and_results(tmp_path, method):
    _, task = make_data(tmp_path, n_train=64, n_dev=40)
    ckpts = [_checkpoint(tmp_path / "a", 0, 10_000), _checkpoint(tmp_path / "b", 1, 40_000)]
    ft = PretrainingEffectConfig(epochs=1, min_steps=4, max_steps=6, evaluations=1, regression=False)
    out = run_transfer(TransferConfig(checkpoints=ckpts, out_dir=tmp_path / "out", task=task, sizes=(8, 16, 64),
                                      seeds=(0, 1), method=method, max_length=16, finetune=ft, device="cpu"),
                       log=None)
    assert [r["pretraining_tokens"] for r in out["checkpoints"]] == [10_000, 40_000]
    for r in out["checkpoints"]:
        assert [p["labels"] for p in r["transfer"]] == [8, 16, 64]
        assert set(r["table"]) == {"pretrained", "random"}
        assert all(r["table"][init][str(n)]["n"] == 2 for init in r["table"] for n in (8, 16, 64))
        for p in r["transfer"]:
            # the factor is what the random curve says, never below one
            assert p["factor"] is None or p["factor"] >= 1.0
    # same architecture and tokenizer: one random-init curve serves both checkpoints
    assert len(out["random_runs"]) == 3 * 2
    assert (tmp_path / "out" / "transfer.png").stat().st_size > 0
    text = (tmp_path / "out" / "table.txt").read_text()
    assert "Effective data transferred" in text and method in text
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["method"] == method and len(saved["checkpoints"]) == 2


def test_one_label_count_is_refused(tmp_path):
    with pytest.raises(LmscaleError, match="two or more label counts"):
        TransferConfig(checkpoints=["x"], sizes=(100,))


def test_more_labels_than_the_task_has_is_refused(tmp_path):
    _, task = make_data(tmp_path, n_train=10, n_dev=10)
    ckpt = _checkpoint(tmp_path / "a", 0, 1000)
    with pytest.raises(LmscaleError, match="training examples"):
        run_transfer(TransferConfig(checkpoints=[ckpt], out_dir=tmp_path / "o", task=task, sizes=(5, 50),
                                    method="probe", device="cpu"), log=None)
