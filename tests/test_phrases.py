"""Noun phrases of captions: what spaCy keeps, what the exclusion list drops, <PERSON>, head-noun dedup, the command."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from synseg.cli import main
from synseg.data.phrases import (
    Exclusions,
    Phrase,
    PhraseConfig,
    PhraseExtractor,
    load_spacy,
    merge_phrases,
    prepare_caption,
)
from synseg.errors import UserError


@pytest.fixture(scope="module")
def nlp():
    pytest.importorskip("spacy", reason="phrases need spaCy: pip install 'synseg[train]'")
    try:
        return load_spacy()
    except UserError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def extract(nlp):
    extractor = PhraseExtractor(nlp=nlp)
    return lambda captions: [phrase.text for phrase in extractor(captions)]


@pytest.mark.parametrize(
    "caption, phrases",
    [
        ("A woman stands in the dining area at the table.", ["woman", "dining area", "table"]),
        ("A man's hand holding a cell phone.", ["man", "hand", "cell phone"]),
        ("Two dogs playing with a frisbee on top of the grass.", ["dogs", "frisbee", "grass"]),
        ("A bathroom with a toilet, sink and a mirror.", ["bathroom", "toilet", "sink", "mirror"]),
        # captions in capitals parse as proper nouns unless lower-cased first
        ("SEVERAL PEOPLE STANDING NEAR A PARKING METER ON THE SIDEWALK", ["people", "parking meter", "sidewalk"]),
        ("Cute Puppy Sitting On The Grass", ["cute puppy", "grass"]),
        # a hyphenated word is one word: "close-up" (generic, excluded), never its last part "up"
        ("close-up of a bee", ["bee"]),
        ("a well-dressed man in a t-shirt", ["well-dressed man", "t-shirt"]),
        # coordinated nouns in one chunk are several things; coordinated adjectives describe one
        ("traffic light and traffic signs on a street", ["traffic light", "traffic signs", "street"]),
        ("red and white flowers", ["red and white flowers"]),
    ],
)
def test_phrases_a_person_would_agree_with(extract, caption, phrases):
    assert extract(caption) == phrases


def test_generic_phrases_are_dropped_but_words_containing_them_are_not(extract):
    assert extract("A stock photo of a brown dog in front of a white background.") == ["brown dog"]
    assert extract("A dog on the sidewalk by the seaside at the side of the road") == [
        "dog",
        "sidewalk",
        "seaside",
        "road",
    ]
    assert extract("A man in a top hat at the top of the stairs") == ["man", "top hat", "stairs"]
    assert extract("Vector Illustration Of A Set Of Icons") == []


def test_person_placeholder(extract):
    assert extract("<PERSON>'s dog runs on the beach.") == ["person", "dog", "beach"]
    assert extract("actor <PERSON> attends the premiere of the film.") == ["actor", "film"]
    assert extract("<PERSON> and <PERSON> pose with their trophies") == ["person", "trophies"]
    text, marks = prepare_caption("actor <PERSON> smiles")
    assert text == "actor person smiles" and marks == {6}


def test_one_phrase_per_head_noun_within_and_across_captions(extract, nlp):
    assert extract("A dog and a brown dog play with another dog.") == ["dog"]
    phrases = PhraseExtractor(nlp=nlp)(
        ["A young boy rides a skateboard.", "A young boy on a skate board.", "A boy and his skateboard."]
    )
    assert [(p.text, p.head) for p in phrases] == [
        ("young boy", "boy"),
        ("skateboard", "skateboard"),
        ("skate board", "board"),
    ]


def test_merge_prefers_the_most_used_then_shortest_wording_and_orders_by_mentions():
    groups = [
        [Phrase("dining table", "table"), Phrase("cake", "cake")],
        [Phrase("table", "table")],
        [Phrase("wooden table", "table"), Phrase("birthday cake", "cake"), Phrase("people", "people")],
        [Phrase("table", "table"), Phrase("birthday cake", "cake")],
    ]
    assert merge_phrases(groups) == [
        Phrase("table", "table"),
        Phrase("birthday cake", "cake"),
        Phrase("people", "people"),
    ]
    assert merge_phrases([[Phrase("brown dog", "dog"), Phrase("dog", "dog")]]) == [Phrase("dog", "dog")]


def test_exclusion_entry_kinds():
    exclusions = Exclusions(["side", "=top", "*photo*", "icon", "close-up", "copy space"])

    def match(text, lemmas=None, head=None):
        head = head or text.split()[-1]
        return exclusions.match(text, lemmas or text, head, head)

    assert match("sidewalk") is None and match("seaside") is None
    assert match("side table") == "side"  # whole words anywhere
    assert match("top hat") is None and match("top") == "=top" and match("very top", head="top") == "=top"
    assert match("photographer") == "*photo*"  # the paper's plain substring
    assert match("icons", lemmas="icon") == "icon"  # lemmas too
    assert match("close-up shot") == "close-up" and Exclusions(["up"]).match("close-up", "close-up", "up", "up") is None
    assert match("copy  space") == "copy space"
    with pytest.raises(UserError):
        Exclusions(["=two words"])


def test_shipped_list_is_extended_or_replaced_by_user_files(nlp, tmp_path):
    extra = tmp_path / "more.txt"
    extra.write_text("# pets are not wanted here\ndog\n")
    caption = "A dog at the top of the stairs"
    assert [p.text for p in PhraseExtractor(PhraseConfig(exclude_files=(str(extra),)), nlp=nlp)(caption)] == ["stairs"]
    only_user = PhraseConfig(exclude_files=(str(extra),), default_exclusions=False)
    assert [p.text for p in PhraseExtractor(only_user, nlp=nlp)(caption)] == ["top", "stairs"]
    with pytest.raises(UserError, match="exclusion list not found"):
        Exclusions.load([tmp_path / "absent.txt"])


def test_missing_spacy_model_is_one_line():
    pytest.importorskip("spacy", reason="phrases need spaCy: pip install 'synseg[train]'")
    with pytest.raises(UserError, match=r"pip install no_such_model \(or python -m spacy download no_such_model\)"):
        load_spacy("no_such_model")


def _jpeg(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_command_on_tar_shards_reports_what_it_dropped(nlp, tmp_path, capsys):
    wds = pytest.importorskip("webdataset", reason="tar shards need webdataset: pip install 'synseg[train]'")
    shard = tmp_path / "00000.tar"
    with wds.TarWriter(str(shard)) as sink:
        sink.write({"__key__": "000", "jpg": _jpeg(), "txt": "A woman stands in the dining area at the table."})
        sink.write({"__key__": "001", "jpg": b"not a jpeg", "txt": "<PERSON> walks her dog"})  # kept: text only
        sink.write({"__key__": "002", "jpg": _jpeg(), "json": json.dumps({"caption": "a cat on a sofa"})})
        sink.write({"__key__": "003", "jpg": _jpeg(), "json": json.dumps({"status": "success"})})
        sink.write({"__key__": "004", "txt": "a red car"})
        sink.write({"__key__": "005", "jpg": _jpeg(), "txt": "stock photo, vector illustration"})
        sink.write({"__key__": "006", "jpg": _jpeg(), "txt": "very happy"})
    out = tmp_path / "phrases.jsonl"
    assert main(["phrases", str(shard), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["key"], line["shard"], line["phrases"]) for line in lines] == [
        ("000", "00000.tar", ["woman", "dining area", "table"]),
        ("001", "00000.tar", ["person", "dog"]),
        ("002", "00000.tar", ["cat", "sofa"]),
    ]
    assert lines[0]["heads"] == ["woman", "area", "table"]
    parallel = tmp_path / "parallel.jsonl"
    assert main(["phrases", str(shard), "--out", str(parallel), "--workers", "2", "--batch-size", "2"]) == 0
    assert parallel.read_text() == out.read_text()
    report = capsys.readouterr().err.split("wrote")[0]
    assert "read 7 samples (5 captions)" in report and "captions/s" in report and "kept 3 samples" in report
    for reason in ("no caption: 1", "no image: 1", "only generic phrases: 1", "no noun phrase: 1"):
        assert reason in report


def test_command_on_the_coco_captions_folder(nlp, coco_captions, tmp_path, capsys):
    out = tmp_path / "phrases.jsonl"
    assert main(["phrases", str(coco_captions), "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 80
    first = lines[0]
    assert first["image"] == "images/000000000790.jpg" and len(first["captions"]) == 5
    assert first["phrases"][:2] == ["table", "cake"]  # mentioned by all five captions
    for line in lines:
        assert len(line["heads"]) == len(set(line["heads"])) == len(line["phrases"])
        assert not {"group", "top", "background"} & set(line["heads"])
    assert "read 80 samples (400 captions)" in capsys.readouterr().err


def test_command_errors_are_one_line(tmp_path, capsys):
    assert main(["phrases", str(tmp_path / "absent"), "--out", str(tmp_path / "p.jsonl")]) == 2
    assert main(["phrases", str(tmp_path), "--out", str(tmp_path / "p.jsonl")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert errors[0].startswith("synseg phrases: error: input not found")
    assert errors[1].startswith("synseg phrases: error:") and "neither .tar shards nor a .jsonl" in errors[1]
    assert not (tmp_path / "p.jsonl").exists()
