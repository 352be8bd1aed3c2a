"""Host time to make one training batch: lmscale's objectives against `transformers`' collator.

On an accelerator the host builds every step's inputs (sample windows from the token shards,
mask or corrupt them, make tensors). The training loop builds step k+1's batch while the device
still runs step k, so this time is hidden as long as it stays under the device's step time; this
benchmark says how much there is to hide, at batch shapes typical of GPU pretraining:

- causal LM, 32 x 1024 (GPT-2 small);
- masked LM, 256 x 128 and 256 x 512 (BERT's two phases), with and without next-sentence pairs;
- span corruption, 128 x 512 encoder tokens (T5).

lmscale's time is the whole path the loop runs: the sampler's windows from a memory-mapped token
array, one keyed generator per example, `Objective.build`. The baseline is
`transformers.DataCollatorForLanguageModeling` (mlm=True / mlm=False) called on the same windows
as a list of `{"input_ids": [...]}` features, as the `Trainer` calls it (the lists are made before
the clock starts); transformers has no span-corruption collator in the library, so T5 has no
baseline. The two alternate for `--rounds` rounds; medians reported.

    python benchmarks/host_batches.py [--rounds 7] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lmscale.data.objectives import (  # noqa: E402
    CausalObjective,
    MLMObjective,
    SpanObjective,
    example_rngs,
)
from lmscale.data.sampler import WindowSampler  # noqa: E402
from lmscale.io import atomic_write_json  # noqa: E402
from lmscale.training.metrics import cpu_name  # noqa: E402

VOCAB = 30522
PAD, UNK, CLS, SEP, MASK = range(5)


class _Stream:
    """A token stream standing in for a shard: `tokens` is all the sampler reads."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.tokens = np.random.default_rng(seed).integers(5, VOCAB, n).astype(np.uint16)


def _hf_tokenizer():
    """A fast tokenizer with BERT's special tokens over a 30,522-id vocabulary (built locally)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    vocab.update({f"w{i}": i for i in range(5, VOCAB)})
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def cases() -> list[tuple[str, object, int, int, bool]]:
    """(name, objective, batch, sequence length, baseline is the masked-LM collator)."""
    specials = frozenset(range(5))
    mlm = dict(kind="mlm", pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, vocab_size=VOCAB,
               special_ids=specials)
    return [
        ("causal 32x1024", CausalObjective(kind="causal", seq_len=1024, pad_id=PAD), 32, 1024, False),
        ("masked LM 256x128", MLMObjective(seq_len=128, **mlm), 256, 128, True),
        ("masked LM + NSP 256x128", MLMObjective(seq_len=128, nsp=True, **mlm), 256, 128, True),
        ("masked LM 256x512", MLMObjective(seq_len=512, **mlm), 256, 512, True),
        ("span corruption 128x512", SpanObjective(kind="span", seq_len=512, pad_id=PAD, eos_id=1,
                                                  sentinel_ids=tuple(range(VOCAB - 100, VOCAB))), 128, 512, None),
    ]


def ours(objective, sampler: WindowSampler, step: int) -> dict:
    rows, partners = sampler.next_batch_with_partners(partners=objective.uses_partners)
    rngs = example_rngs(0, step, 0, len(rows)) if objective.uses_example_rngs else ()
    return objective.build(rows, rngs, partners)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host_batches.json"))
    args = ap.parse_args()
    from transformers import DataCollatorForLanguageModeling

    hf_tok = _hf_tokenizer()
    collators = {True: DataCollatorForLanguageModeling(hf_tok, mlm=True, mlm_probability=0.15, return_tensors="pt"),
                 False: DataCollatorForLanguageModeling(hf_tok, mlm=False, return_tensors="pt")}
    stream = _Stream(20_000_000)
    load_before = os.getloadavg()
    results = {}
    print(f"{'batch':<26}{'lmscale ms':>12}{'transformers ms':>17}{'ratio':>8}")
    for name, objective, batch, seq, mlm in cases():
        raw = objective.raw_length(seq)
        sampler = WindowSampler(stream, raw, batch, seed=0)
        # the baseline sees finished sequences of the same length: BERT's [CLS] ... [SEP] added
        feature_rng = np.random.default_rng(1)
        times: dict[str, list[float]] = {"lmscale": [], "transformers": []}
        ours(objective, sampler, 0)
        for r in range(args.rounds):
            order = ("lmscale", "transformers") if r % 2 == 0 else ("transformers", "lmscale")
            for side in order:
                if side == "lmscale":
                    t0 = time.perf_counter()
                    out = ours(objective, sampler, r + 1)
                    times[side].append(time.perf_counter() - t0)
                    assert out["input_ids"].shape[0] == batch
                elif mlm is not None:
                    ids = feature_rng.integers(5, VOCAB, (batch, seq))
                    if mlm:
                        ids[:, 0], ids[:, -1] = CLS, SEP
                    features = [{"input_ids": row} for row in ids.tolist()]
                    t0 = time.perf_counter()
                    collators[mlm](features)
                    times[side].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items() if v}
        ratio = med["transformers"] / med["lmscale"] if "transformers" in med else None
        results[name] = {"batch": batch, "seq_len": seq, "ms": med,
                         "ms_per_round": {k: [round(x * 1e3, 3) for x in v] for k, v in times.items()},
                         "speedup_vs_transformers": ratio}
        hf = f"{med['transformers']:>17.1f}" if "transformers" in med else f"{'(none)':>17}"
        print(f"{name:<26}{med['lmscale']:>12.1f}{hf}{(f'{ratio:.2f}x' if ratio else '-'):>8}", flush=True)
    atomic_write_json(args.out, {
        "benchmark": "host_batches",
        "machine": {"cpu": cpu_name() or platform.machine(), "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "load_average_1_5_15_min": {"start": list(load_before), "end": list(os.getloadavg())}},
        "setup": {"clock": "wall (one process, no threads of its own)", "rounds": args.rounds,
                  "vocab": VOCAB, "baseline": "transformers.DataCollatorForLanguageModeling"},
        "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
