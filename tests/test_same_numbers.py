"""Refactoring guard: fixed-seed 200-step runs of gpt-tiny, bert-tiny and t5-tiny (tokenizer trained on
a generated corpus, dropout on) reproduce the per-step losses recorded in tests/golden/. On the machine
class that recorded them (same torch build and CPU capability) the match is bit for bit; elsewhere
kernels may round differently, so the check is to 1e-4 relative there.

Re-record only for an intended change of numbers: `python tests/test_same_numbers.py`."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "losses_200_steps.json"
STEPS = 200
WORDS = ("the cat sat on a mat while dogs were running over lazy foxes and birds sang in quick "
         "brown trees near rivers under bright skies").split()
SHAPE = ["--model.d_model", "32", "--model.n_layers", "2", "--model.n_heads", "2", "--model.d_ff", "64",
         "--model.vocab_size", "300", "--model.dropout", "0.1"]
FAMILIES = {
    "gpt-tiny": SHAPE,
    "bert-tiny": SHAPE,
    "t5-tiny": SHAPE + ["--model.n_decoder_layers", "2", "--model.d_head", "16"],
}


def _corpus(path: Path) -> Path:
    r = random.Random(0)
    path.write_text("".join(" ".join(r.choice(WORDS) for _ in range(r.randint(20, 80))) + ".\n\n"
                            for _ in range(300)))
    return path


def _run(preset: str, root: Path) -> list[float]:
    from lmscale.cli import main

    run = root / preset
    argv = ["pretrain", "--preset", preset, "--corpus", str(_corpus(root / "corpus.txt")), "--out", str(run),
            "--max-steps", str(STEPS), "--seed", "3", "--no-progress", "--json",
            "--train.seq_len", "32", "--train.batch_size", "8", "--train.eval_every", "0",
            "--train.log_every", "1", "--train.warmup_steps", "10", "--train.compile", "false",
            *FAMILIES[preset]]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(old)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["event"] == "train"]


def _machine() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(FAMILIES))
def test_losses_match_the_recorded_run(preset, tmp_path, capsys):
    golden = json.loads(GOLDEN.read_text())
    losses = _run(preset, tmp_path)
    capsys.readouterr()
    expected = golden["losses"][preset]
    assert len(losses) == len(expected) == STEPS
    if golden["machine"] == _machine():
        assert losses == expected
    else:
        assert losses == pytest.approx(expected, rel=1e-4)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = {"machine": _machine(), "losses": {p: _run(p, Path(tmp)) for p in sorted(FAMILIES)}}
    GOLDEN.write_text(json.dumps(out, indent=1) + "\n")
    print(f"recorded {GOLDEN}", file=sys.stderr)
