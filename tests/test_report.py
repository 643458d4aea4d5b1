import re

import pytest
import spacy
from spacy.tokens import Doc

from spacy_segment_influence.annotation_errors import Candidate, review_record
from spacy_segment_influence.report import render_report

HELD_OUT = [
    {"doc_id": "dev_3_1", "text": "Leeds", "left": "Fans of", "right": "cheered .", "label": "ORG",
     "predicted": "LOC", "correct": False, "score": 0.42},
    {"doc_id": "dev_4_0", "text": "Paris", "left": "", "right": "is big .", "label": "LOC",
     "predicted": "LOC", "correct": True, "score": -0.9},
]


def records():
    vocab = spacy.blank("en").vocab
    doc = Doc(vocab, words=["Leeds", "beat", "<Monaco>", "&", "Co", "."])
    doc.user_data["id"] = "demo_train_5_2"
    candidates = [
        Candidate(0, 0, 1, "wrong_type", ((0, 1, "LOC"),), ((0, 1, "ORG"),)),
        Candidate(0, 2, 3, "missing", (), ((2, 3, "ORG"),)),
        Candidate(0, 3, 5, "spurious", ((3, 5, "ORG"),), ()),
    ]
    return [
        review_record(doc, c, {"score": 3.0 - i, "method": "influence", "rank": i + 1}, HELD_OUT if i == 0 else [])
        for i, c in enumerate(candidates)
    ]


def test_every_candidate_is_rendered_in_order():
    page = render_report(records())
    assert page.count('class="candidate"') == 3
    assert [int(n) for n in re.findall(r'id="rank-(\d+)"', page)] == [1, 2, 3]
    assert "wrong_type" in page and "LOC &rarr; ORG" in page
    assert "missing" in page and "O &rarr; ORG" in page


def test_text_is_escaped_and_page_is_self_contained():
    page = render_report(records())
    assert "<Monaco>" not in page and "&lt;Monaco&gt;" in page
    assert not re.search(r"<(script|link|img|iframe)\b", page)
    assert "http" not in page.split("<body>", 1)[1]


def test_held_out_predictions_are_shown_strongest_first():
    page = render_report(records())
    first = page.index("dev_4_0")
    assert first < page.index("dev_3_1")  # |-0.9| before |0.42|
    assert "opposes -0.900" in page and "supports +0.420" in page
    assert "model predicts LOC" in page and "model agrees" in page


def test_empty_ranking_renders():
    page = render_report([])
    assert "0 candidates" in page and 'class="candidate"' not in page


def test_foreign_records_are_refused():
    with pytest.raises(ValueError, match="Record 2 .* find-errors"):
        render_report([records()[0], {"text": "x"}])
