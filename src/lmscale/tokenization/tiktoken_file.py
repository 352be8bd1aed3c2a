"""A local tiktoken encoding file (`NAME.tiktoken`: one `base64(token bytes) rank` per line) as an
lmscale BPE tokenizer (extra `lmscale[tiktoken]`).

A `.tiktoken` file holds the ranks only. The split pattern and the special tokens come from
tiktoken's own definition of the encoding when the file is named after one it knows
(`cl100k_base.tiktoken`, `o200k_base.tiktoken`, `r50k_base.tiktoken`, `p50k_base.tiktoken`; nothing
is downloaded), otherwise `pattern` (default: cl100k_base's) and `<|endoftext|>` after the last
rank. The ranks become a byte-level BPE in the `tokenizers` library the way `transformers`
converts tiktoken encodings: each token of rank r is the merge of the two lower-ranked tokens that
make it up, and a pre-token that is itself in the vocabulary is never split (tiktoken's rule), so
the ids are tiktoken's.
"""
from __future__ import annotations

import importlib
import stat
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as _Backend

from lmscale.errors import DataError
from lmscale.tokenization.fast_bpe import BYTE_TO_UNICODE

DEFAULT_EOS = "<|endoftext|>"
MAX_FILE_BYTES = 64 << 20  # o200k_base, the largest encoding tiktoken defines, is under 4 MiB
MAX_UNUSED_IDS = 4096  # ids a known encoding leaves between its ranks and its special tokens (a handful)


def _tiktoken(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError("a .tiktoken encoding needs the tiktoken package: pip install 'lmscale[tiktoken]'") from None


def known_encoding(name: str) -> tuple[str, dict[str, int]] | None:
    """(split pattern, special tokens) of an encoding tiktoken defines, read from its definition
    without fetching the ranks; None for a name it does not know."""
    ext = _tiktoken("tiktoken_ext.openai_public")
    ctor = getattr(ext, "ENCODING_CONSTRUCTORS", {}).get(name)
    if ctor is None:
        return None
    real = ext.load_tiktoken_bpe
    ext.load_tiktoken_bpe = lambda *a, **k: {}  # the definition, not its 100k ranks from the network
    try:
        spec = ctor()
    except Exception:  # a definition that needs more than the ranks (gpt2's data-gym files)
        return None
    finally:
        ext.load_tiktoken_bpe = real
    return spec["pat_str"], dict(spec["special_tokens"])


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks -> a byte-level BPE vocabulary and its merges in rank order."""
    enc = BYTE_TO_UNICODE

    def s(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {s(t): r for t, r in ranks.items()}
    merges: list[tuple[int, str, str, int, int]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        for i in range(1, len(token)):
            a, b = token[:i], token[i:]
            if a in ranks and b in ranks:
                merges.append((rank, s(a), s(b), ranks[a], ranks[b]))
    merges.sort(key=lambda m: (m[0], m[3], m[4]))
    return vocab, [(a, b) for _, a, b, _, _ in merges]


def load_tiktoken_file(path: str | Path, pattern: str | None = None,
                       special_tokens: dict[str, int] | None = None) -> tuple[_Backend, dict]:
    """A `tokenizers` backend for a `.tiktoken` file, and the meta to keep with it."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise DataError(f"{p}: {exc.strerror or 'cannot read'}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise DataError(f"{p}: not a regular file; a .tiktoken encoding is a file of `base64 rank` lines")
    if st.st_size > MAX_FILE_BYTES:
        raise DataError(f"{p}: {st.st_size:,} bytes, more than any tiktoken encoding "
                        f"({MAX_FILE_BYTES >> 20} MiB at most)")
    load = _tiktoken("tiktoken.load")
    try:
        ranks = load.load_tiktoken_bpe(str(p))
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except Exception as exc:  # base64 / format errors name no file
        raise DataError(f"{p}: not a .tiktoken file ({exc})") from None
    if not ranks:
        raise DataError(f"{p}: no ranks")
    if len(set(ranks.values())) != len(ranks) or min(ranks.values()) != 0 or max(ranks.values()) != len(ranks) - 1:
        raise DataError(f"{p}: ranks are not 0..{len(ranks) - 1} without gaps")
    known = known_encoding(p.name[: -len(".tiktoken")]) if p.name.endswith(".tiktoken") else None
    if pattern is None:
        pattern = known[0] if known else known_encoding("cl100k_base")[0]  # type: ignore[index]
    if special_tokens is None:
        special_tokens = known[1] if known else {DEFAULT_EOS: max(ranks.values()) + 1}
    if special_tokens and max(special_tokens.values()) - len(ranks) > MAX_UNUSED_IDS:
        name = p.name[: -len(".tiktoken")]
        raise DataError(f"{p}: holds {len(ranks):,} ranks, but {name}'s special tokens have ids up to "
                        f"{max(special_tokens.values()):,}; this is not the {name} encoding: rename the file")
    vocab, merges = vocab_and_merges(ranks)
    backend = _Backend(models.BPE(vocab, merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    by_id = {i: t for t, i in special_tokens.items()}
    if min(by_id) < len(ranks):
        raise DataError(f"{p}: special token ids must follow the ranks (>= {len(ranks)})")
    # ids the encoding leaves unused between the ranks and its special tokens get placeholders,
    # so every special token keeps the encoding's id
    backend.add_special_tokens([by_id.get(i, f"<|unused_{i}|>") for i in range(len(ranks), max(by_id) + 1)])
    eos = DEFAULT_EOS if DEFAULT_EOS in special_tokens else min(special_tokens, key=special_tokens.get)
    meta = {"source": f"tiktoken:{p.name}", "eos_token": eos}
    return backend, meta
