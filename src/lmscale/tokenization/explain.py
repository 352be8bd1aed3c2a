"""The classic byte-pair-encoding algorithm, step by step, for teaching.

`explain_chars` is Gage's (1994) data-compression BPE as usually taught: start from the
characters, repeatedly replace the most frequent adjacent pair by a new symbol (Z, Y, X, ...).
`explain_words` is the variant Sennrich et al. (2016) used for subword units: merges are learned
over a word-frequency table, each word ending in an end-of-word marker `</w>`, and the learned
merges then split a rare word into known pieces.

Both count a pair at every adjacent position (so `aaa` holds two `aa`), replace
non-overlapping occurrences from left to right, and break ties the same way: among pairs
with the highest count, the one met first when scanning left to right (words in order of first
appearance) wins. That is the rule of Sennrich et al.'s reference code (`max` over pairs in
insertion order).
"""
from __future__ import annotations

from dataclasses import dataclass, field

TIE_RULE = ("ties: among pairs with the same count, the pair met first when scanning left to right "
            "(words in order of first appearance) wins")
END_OF_WORD = "</w>"


@dataclass
class MergeStep:
    step: int
    pair: tuple[str, str]
    count: int
    symbol: str
    replaced: int
    sequence: str = ""
    tied_with: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"step": self.step, "pair": list(self.pair), "count": self.count, "symbol": self.symbol,
                "replaced": self.replaced, "sequence": self.sequence, "tied_with": [list(p) for p in self.tied_with]}


def pair_counts(words: list[tuple[list[str], int]]) -> dict[tuple[str, str], int]:
    """Adjacent-pair counts in scan order (dict insertion order carries the tie-break)."""
    counts: dict[tuple[str, str], int] = {}
    for symbols, freq in words:
        for a, b in zip(symbols, symbols[1:]):
            counts[(a, b)] = counts.get((a, b), 0) + freq
    return counts


def best_pair(counts: dict[tuple[str, str], int]) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    best = max(counts.values())
    tied = [p for p, c in counts.items() if c == best]
    return tied[0], tied[1:]


def merge_symbols(symbols: list[str], pair: tuple[str, str], new: str) -> tuple[list[str], int]:
    out: list[str] = []
    i = n = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new)
            i += 2
            n += 1
        else:
            out.append(symbols[i])
            i += 1
    return out, n


def _fresh_symbols(used: set[str]):
    for c in "ZYXWVUTSRQPONMLKJIHGFEDCBA":
        if c not in used:
            yield c
    for c in "ΩΨΧΦΥΤΣΡΠΟΞΝΜΛΚΙΘΗΖΕΔΓΒΑ":
        if c not in used:
            yield c
    k = 0
    while True:
        k += 1
        if f"<{k}>" not in used:
            yield f"<{k}>"


def explain_chars(text: str, merges: int) -> dict:
    """Gage-style BPE on one string; returns the steps, the symbol table and the final sequence."""
    symbols = list(text)
    fresh = _fresh_symbols(set(symbols))
    steps: list[MergeStep] = []
    table: dict[str, str] = {}
    pairs: dict[str, tuple[str, str]] = {}
    for k in range(1, merges + 1):
        counts = pair_counts([(symbols, 1)])
        if not counts or max(counts.values()) < 2:
            break  # nothing repeats: a new symbol would not compress anything
        pair, tied = best_pair(counts)
        new = next(fresh)
        symbols, n = merge_symbols(symbols, pair, new)
        table[new] = pair[0] + pair[1]
        pairs[new] = pair
        steps.append(MergeStep(k, pair, counts[pair], new, n, "".join(symbols), tied))
    expanded = {s: _expand(s, pairs) for s in table}
    return {"mode": "chars", "text": text, "tie_rule": TIE_RULE, "steps": [s.to_dict() for s in steps],
            "table": table, "expanded": expanded, "final": "".join(symbols),
            "length_before": len(text), "length_after": len(symbols)}


def _expand(symbol: str, pairs: dict[str, tuple[str, str]]) -> str:
    """The original characters a symbol stands for."""
    if symbol not in pairs:
        return symbol
    return "".join(_expand(c, pairs) for c in pairs[symbol])


def word_table(text: str) -> list[tuple[str, int]]:
    """Whitespace words with their counts, in order of first appearance."""
    counts: dict[str, int] = {}
    for w in text.split():
        counts[w] = counts.get(w, 0) + 1
    return list(counts.items())


def learn_word_merges(freqs: list[tuple[str, int]], merges: int) -> list[MergeStep]:
    words = [(list(w) + [END_OF_WORD], c) for w, c in freqs]
    steps: list[MergeStep] = []
    for k in range(1, merges + 1):
        counts = pair_counts(words)
        if not counts:
            break
        pair, tied = best_pair(counts)
        new = pair[0] + pair[1]
        total = 0
        for i, (symbols, c) in enumerate(words):
            merged, n = merge_symbols(symbols, pair, new)
            words[i] = (merged, c)
            total += n * c
        steps.append(MergeStep(k, pair, counts[pair], new, total, tied_with=tied))
    return steps


def apply_merges(word: str, merges: list[tuple[str, str]]) -> list[str]:
    """Segment a word by applying the learned merges in the order they were learned."""
    symbols = list(word) + [END_OF_WORD]
    for pair in merges:
        symbols, _ = merge_symbols(symbols, pair, pair[0] + pair[1])
    return symbols


def explain_words(text: str, merges: int, split_words: list[str] | None = None) -> dict:
    """Sennrich et al. 2016: merges over the word-frequency table, then segment rare words."""
    freqs = word_table(text)
    steps = learn_word_merges(freqs, merges)
    learned = [s.pair for s in steps]
    if not split_words:
        rare = [w for w, c in freqs if c == min(c for _, c in freqs)] if freqs else []
        split_words = rare[:3]
    return {"mode": "words", "tie_rule": TIE_RULE, "end_of_word": END_OF_WORD,
            "vocabulary": [{"word": w, "count": c} for w, c in freqs],
            "steps": [s.to_dict() for s in steps],
            "segmentations": {w: apply_merges(w, learned) for w in split_words}}


def format_explanation(result: dict) -> str:
    """Human-readable walk through the steps (what `lmscale tokenizer explain` prints)."""
    lines: list[str] = []
    if result["mode"] == "chars":
        lines.append(f"Byte-pair encoding of {result['text']!r}: start from its {result['length_before']} characters.")
        lines.append(f"Rule: replace the most frequent adjacent pair by a new symbol; {result['tie_rule']}.")
        for s in result["steps"]:
            a, b = s["pair"]
            tie = f" (tied with {', '.join(x + y for x, y in s['tied_with'])})" if s["tied_with"] else ""
            lines.append(f"step {s['step']}: pair {a + b!r} occurs {s['count']}x{tie} -> {s['symbol']}  "
                         f"({s['replaced']} replaced)  {s['sequence']}")
        if not result["steps"]:
            lines.append("no adjacent pair occurs twice: nothing to merge.")
        for sym, pair in result["table"].items():
            expanded = result["expanded"][sym]
            lines.append(f"  {sym} = {pair}" + (f" = {expanded}" if expanded != pair else ""))
        lines.append(f"result: {result['final']}  ({result['length_before']} -> {result['length_after']} symbols)")
    else:
        vocab = ", ".join(f"{v['word']}:{v['count']}" for v in result["vocabulary"][:12])
        more = " ..." if len(result["vocabulary"]) > 12 else ""
        lines.append(f"Subword BPE (Sennrich et al. 2016) over {len(result['vocabulary'])} word types "
                     f"({vocab}{more}); each word ends with {result['end_of_word']}.")
        lines.append(f"Rule: merge the most frequent adjacent symbol pair, counted over the word-frequency table; "
                     f"{result['tie_rule']}.")
        for s in result["steps"]:
            a, b = s["pair"]
            tie = f" (tied with {len(s['tied_with'])} other pair(s))" if s["tied_with"] else ""
            lines.append(f"merge {s['step']}: {a} + {b} -> {s['symbol']}  (count {s['count']}){tie}")
        for w, seg in result["segmentations"].items():
            lines.append(f"split {w!r}: {' '.join(seg)}")
    return "\n".join(lines)


class Explanation:
    """An explanation's data (`to_dict`) and its printed walk-through (`render`)."""

    def __init__(self, result: dict) -> None:
        self.result = result

    def to_dict(self) -> dict:
        return self.result

    def render(self) -> str:
        return format_explanation(self.result)

    def __str__(self) -> str:
        return self.render()


def explain_bpe(text: str, merges: int = 3, words: bool = False, split_words: list[str] | None = None) -> Explanation:
    """Character-level (Gage) or, with `words=True`, word-level (Sennrich) BPE, step by step."""
    return Explanation(explain_words(text, merges, split_words) if words else explain_chars(text, merges))
