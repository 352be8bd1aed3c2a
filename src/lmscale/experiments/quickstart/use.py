"""Stage 4: the pretrained models used: fill-mask (encoder), greedy and sampled generation
(decoder), span infilling (encoder-decoder), each judged by a check fixed before training."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from rich.console import Console

from lmscale.data.readers import iter_texts
from lmscale.experiments.quickstart.core import Check, Context, StageResult, checks_from_dicts, checks_to_dicts
from lmscale.experiments.quickstart.data import DataResult
from lmscale.experiments.quickstart.fragments import render
from lmscale.experiments.quickstart.pretrain import PretrainResult
from lmscale.inference.fill_mask import fill_mask
from lmscale.inference.generate import generate, infill
from lmscale.models.loading import load

LECTURE_PROMPTS = [
    "I put ___ fork down on the table.",
    "The woman walked across the street, checking for traffic over ___ shoulder.",
    "University of Minnesota is located in ___, Minnesota.",
]
PLACE_PROMPT = LECTURE_PROMPTS[2]
# what a place-name answer to PLACE_PROMPT may be (lower-cased single tokens)
PLACE_NAMES = {"minneapolis", "minnesota", "st", "saint", "paul", "duluth", "rochester", "mankato", "morris",
               "crookston", "bloomington", "winona", "moorhead"}
PLACE_RANK_DEPTH = 100  # where the place name is looked for when it is shown, not judged
# factual prompts fixed before any training, with the answer that must reach the top 5
FACTUAL_PROMPTS = [
    ("Paris is the capital of ___.", "france"),
    ("The Pacific is the largest ___ on Earth.", "ocean"),
    ("January is the first ___ of the year.", "month"),
    ("William Shakespeare was an English ___ and playwright.", "poet"),
    ("London is the capital of ___.", "england"),
]
FACTUAL_NEEDED = 3
TOP_K = 5
GENERATION_PROMPTS = ["The history of the city", "In 1998 , the band", "The album was released",
                      "During the war , the", "The species is found"]
NEW_TOKENS = 40
# sampling settings, printed beside each sample; the in-domain ones were chosen on held-out prompts
# (not the judged ones below) as the setting that met all three text checks with the widest margins
# (BENCHMARKS.md, "Sampling settings for the CPU profile's decoder")
SAMPLING = {"lecture": {"temperature": 0.8, "top_p": 0.95}, "in-domain": {"temperature": 1.0, "top_k": 20}}


def sampled_label(settings: dict[str, float]) -> str:
    parts = {"temperature": "T={:g}", "top_k": "top-k {:d}", "top_p": "top-p {:g}"}
    return "sampled (" + ", ".join(parts[k].format(v) for k, v in settings.items()) + ")"


DISTINCT_2_TARGET = 0.6
SEEN_WORDS_TARGET = 0.95
INFILL_PROMPT = "Thank you <X> me to your party <Y> week."

# In-domain prompts for a model pretrained on movie reviews, each with the answers that count,
# fixed before training: a word of the kind the sentence asks for, not one expected answer.
EVALUATIVE = frozenset("""good great bad terrible awful excellent amazing horrible boring fantastic wonderful
    brilliant funny fun interesting ok okay fine decent poor weak stupid dull superb perfect entertaining enjoyable
    beautiful nice solid lousy mediocre average incredible outstanding hilarious silly disappointing pathetic
    ridiculous lame strong believable convincing wooden flat better worse best worst impressive terrific awesome
    cool scary sad touching moving powerful competent adequate wonderful bland cheesy predictable""".split())
SUPERLATIVES = frozenset("""best worst most least greatest finest funniest scariest dumbest stupidest weirdest
    strangest saddest silliest cheesiest creepiest coolest oddest ugliest dullest lamest worse better""".split())
FILM_NOUNS = frozenset("""cinematography photography scenery music score soundtrack film movie story plot acting
    setting ending camera camerawork direction animation location locations costumes lighting set sets visuals
    scene scenes picture imagery landscape landscapes art design dialogue script cast production editing effects
    video filming color colors cinema""".split())
DOMAIN_FILL_PROMPTS: list[tuple[str, frozenset]] = [
    ("This movie was ___.", EVALUATIVE),
    ("The acting was ___ and the story was boring.", EVALUATIVE),
    ("This is one of the ___ films I have ever seen.", SUPERLATIVES),
    ("The ___ was beautiful and the music was great.", FILM_NOUNS),
    ("The special ___ were terrible.", frozenset({"effects", "effect", "fx"})),
    ("The director did a ___ job with this film.", EVALUATIVE),
]
DOMAIN_FILL_NEEDED = 4
DOMAIN_GENERATION_PROMPTS = ["This movie was", "The acting in this film", "I watched this movie because",
                             "The plot of the film", "My favorite scene is"]
DOMAIN_INFILL_PROMPTS = [INFILL_PROMPT, "This movie was <X> and the acting was <Y>.",
                         "The plot <X> boring, but the <Y> was great."]
# the corpus a profile trains on decides which prompts judge it
IN_DOMAIN_CORPORA = ("movie-reviews",)


def repeated_ngram(tokens: list[str], n: int = 4) -> bool:
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def distinct_n(texts: list[list[str]], n: int = 2) -> float:
    """Distinct n-grams over all n-grams of the samples (Li et al. 2016's distinct-n)."""
    grams = [tuple(t[i:i + n]) for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class FillMask:
    prompt: str
    predictions: list[dict[str, Any]]  # fill_mask's entries ({"token", "token_id", "probability"}), best first

    @property
    def words(self) -> list[str]:
        """The predicted tokens as words: lower-cased, WordPiece's ## dropped."""
        return [p["token"].lower().lstrip("#") for p in self.predictions]

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "predictions": self.predictions}


@dataclass
class Generation:
    prompt: str
    mode: str  # "greedy" or `sampled_label(...)`
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "mode": self.mode, "text": self.text}


@dataclass
class Infill:
    prompt: str
    spans: list[str]
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "spans": self.spans, "text": self.text}


@dataclass
class UseResult(StageResult):
    stage: ClassVar[str] = "use"
    fill_mask: list[FillMask]
    generation: list[Generation]
    infills: list[Infill]
    checks: list[Check] = field(default_factory=list)

    @property
    def infill(self) -> Optional[Infill]:
        """The lecture's prompt (the first one)."""
        return self.infills[0] if self.infills else None

    def to_dict(self) -> dict[str, Any]:
        return {"fill_mask": [f.to_dict() for f in self.fill_mask],
                "generation": [g.to_dict() for g in self.generation],
                "infills": [i.to_dict() for i in self.infills], "checks": checks_to_dicts(self.checks)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UseResult:
        infills = d.get("infills") or ([d["infill"]] if d.get("infill") else [])
        return cls(fill_mask=[FillMask(**f) for f in d["fill_mask"]],
                   generation=[Generation(**g) for g in d["generation"]],
                   infills=[Infill(**i) for i in infills], checks=checks_from_dicts(d.get("checks")))

    def render_console(self, console: Console, ctx: Context) -> None:
        for item in self.fill_mask:
            console.print(f"{item.prompt}  ->  " + ", ".join(f"{p['token']} {p['probability']:.2f}"
                                                              for p in item.predictions))
        for g in self.generation:
            console.print(f"[bold]{g.mode.split()[0]}[/]: {g.prompt}[cyan]{g.text}[/]")
        for i in self.infills:
            console.print(f"T5 infilling: {i.prompt} spans {i.spans} -> [cyan]{i.text}[/]")

    def render_html(self) -> str:
        return render("use.html.j2", r=self)


def worded(span: Optional[str]) -> bool:
    """A span filled with a word: not empty, not punctuation or digits only."""
    return bool(re.search(r"[^\W\d_]", span or ""))


WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def words_of(text: str) -> list[str]:
    return WORD.findall(text.lower())


def seen_share(samples: list[str], vocabulary: set[str]) -> float:
    """Share of the generated words (lower-cased letters, with an apostrophe inside) that occur in
    the training text: a model that has learnt words writes few it never saw."""
    words = [w for text in samples for w in words_of(text)]
    return sum(w in vocabulary for w in words) / len(words) if words else 0.0


def _lecture_checks(fill: list[FillMask], greedy_repeats: list[bool], distinct_2: float,
                    infills: list[Infill]) -> list[Check]:
    top = {item.prompt: item.words for item in fill}
    place = [w for w in top[PLACE_PROMPT] if w in PLACE_NAMES]
    hits = [answer for prompt, answer in FACTUAL_PROMPTS if answer in top[prompt]]
    spans = infills[0].spans
    n_fact, n_gen = len(FACTUAL_PROMPTS), len(greedy_repeats)
    return [
        Check("fill-mask: a place name for Minnesota", f"in the top {TOP_K}", ", ".join(place) or "none",
              bool(place)),
        Check("fill-mask: factual prompts answered", f">= {FACTUAL_NEEDED} of {n_fact} in the top {TOP_K}",
              f"{len(hits)} of {n_fact} ({', '.join(hits) or 'none'})", len(hits) >= FACTUAL_NEEDED),
        Check(f"greedy text: no repeated 4-gram in {NEW_TOKENS} tokens", f"{n_gen} of {n_gen} prompts",
              f"{greedy_repeats.count(False)} of {n_gen}", not any(greedy_repeats)),
        Check("sampled text: distinct-2", f">= {DISTINCT_2_TARGET}", f"{distinct_2:.2f}",
              distinct_2 >= DISTINCT_2_TARGET),
        Check("T5 fills both spans with words", "2 of 2", f"{sum(map(worded, spans))} of {len(spans)}",
              len(spans) == 2 and all(map(worded, spans))),
    ]


def _place_rank(model: Any, tok: Any) -> str:
    preds = fill_mask(model, tok, PLACE_PROMPT, top_k=PLACE_RANK_DEPTH)[0]
    for rank, p in enumerate(preds, start=1):
        if p["token"].lower().lstrip("#") in PLACE_NAMES:
            return f"rank {rank} ({p['token']})"
    return f"not in the top {PLACE_RANK_DEPTH}"


def _domain_checks(fill: list[FillMask], place_rank: str, greedy_repeats: list[bool], sample_repeats: list[bool],
                   distinct_2: float, seen: float, infills: list[Infill]) -> list[Check]:
    top = {item.prompt: item.words for item in fill}
    answered = [next((w for w in top[prompt] if w in accepted), None) for prompt, accepted in DOMAIN_FILL_PROMPTS]
    hits = [w for w in answered if w]
    n_fill, n_gen = len(DOMAIN_FILL_PROMPTS), len(sample_repeats)
    spans = [s for i in infills for s in i.spans]
    return [
        Check("fill-mask: in-domain prompts answered", f">= {DOMAIN_FILL_NEEDED} of {n_fill} in the top {TOP_K}",
              f"{len(hits)} of {n_fill} ({', '.join(hits) or 'none'})", len(hits) >= DOMAIN_FILL_NEEDED),
        Check("fill-mask: a place name for Minnesota", "out of reach at this compute (shown, not judged)",
              place_rank, None),
        Check("sampled text: distinct-2", f">= {DISTINCT_2_TARGET}", f"{distinct_2:.2f}",
              distinct_2 >= DISTINCT_2_TARGET),
        Check("sampled text: words seen in the training text", f">= {SEEN_WORDS_TARGET:.0%}", f"{seen:.1%}",
              seen >= SEEN_WORDS_TARGET),
        Check(f"sampled text: no repeated 4-gram in {NEW_TOKENS} tokens", f"{n_gen} of {n_gen} prompts",
              f"{sample_repeats.count(False)} of {n_gen}", not any(sample_repeats)),
        Check(f"greedy text: no repeated 4-gram in {NEW_TOKENS} tokens", "shown, not judged",
              f"{greedy_repeats.count(False)} of {len(greedy_repeats)}", None),
        Check("T5 fills every span with words", f"{len(spans)} of {len(spans)}",
              f"{sum(map(worded, spans))} of {len(spans)}", bool(spans) and all(map(worded, spans))),
    ]


def _training_words(files: list[str]) -> set[str]:
    vocabulary: set[str] = set()
    for text in iter_texts(files):
        vocabulary.update(words_of(text))
    return vocabulary


def run(ctx: Context) -> UseResult:
    pre = ctx.need(PretrainResult)
    in_domain = ctx.corpus in IN_DOMAIN_CORPORA
    model, tok = load(pre.model_dir("encoder"))
    prompts = [p for p, _ in DOMAIN_FILL_PROMPTS] if in_domain else LECTURE_PROMPTS + [p for p, _ in FACTUAL_PROMPTS]
    fill = [FillMask(prompt, fill_mask(model, tok, prompt, top_k=TOP_K)[0]) for prompt in prompts]
    place_rank = _place_rank(model, tok) if in_domain else ""

    model, tok = load(pre.model_dir("decoder"))
    generations, greedy_repeats, sample_repeats, samples, texts = [], [], [], [], []
    sampling = SAMPLING["in-domain" if in_domain else "lecture"]
    # each prompt samples with its own seed: one shared seed gives every sample the same draws
    for seed, prompt in enumerate(DOMAIN_GENERATION_PROMPTS if in_domain else GENERATION_PROMPTS):
        greedy = generate(model, tok, prompt, max_new_tokens=NEW_TOKENS, greedy=True)
        sampled = generate(model, tok, prompt, max_new_tokens=NEW_TOKENS, seed=seed if in_domain else 0, **sampling)
        greedy_repeats.append(repeated_ngram([tok.id_to_token(i) for i in greedy.token_ids[:NEW_TOKENS]]))
        sampled_tokens = [tok.id_to_token(i) for i in sampled.token_ids]
        sample_repeats.append(repeated_ngram(sampled_tokens[:NEW_TOKENS]))
        samples.append(sampled_tokens)
        texts.append(sampled.text)
        generations += [Generation(prompt, "greedy", greedy.text),
                        Generation(prompt, sampled_label(sampling), sampled.text)]

    model, tok = load(pre.model_dir("encoder-decoder"))
    infills = []
    for prompt in DOMAIN_INFILL_PROMPTS if in_domain else [INFILL_PROMPT]:
        res = infill(model, tok, prompt)
        infills.append(Infill(prompt, res.spans, res.text))
    distinct_2 = distinct_n(samples, 2)
    if in_domain:
        seen = seen_share(texts, _training_words(ctx.need(DataResult).train_files))
        checks = _domain_checks(fill, place_rank, greedy_repeats, sample_repeats, distinct_2, seen, infills)
    else:
        checks = _lecture_checks(fill, greedy_repeats, distinct_2, infills)
    return UseResult(fill_mask=fill, generation=generations, infills=infills, checks=checks)
