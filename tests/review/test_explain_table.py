"""The `explain` table: every hit's training span shown whole, centred in its context,
within the width (in terminal columns)."""

import random
import unicodedata

import pytest
import spacy
from spacy.tokens import Doc

import spacy_segment_influence.pipeline.component  # noqa: F401  (registers doc._.influences)
from spacy_segment_influence.review.explain_table import centred_context, format_influences

WORDS = "the bank of england said on monday that rates would stay at six percent for now".split()


def columns(text):
    wide = sum(2 for c in text if unicodedata.east_asian_width(c) in "WF")
    narrow = sum(1 for c in text if unicodedata.east_asian_width(c) not in "WF" and not unicodedata.combining(c))
    return wide + narrow


def context(left, span, right):
    return " ".join(part for part in (left, f"[{span}]", right) if part)


def hit(span, left="", right="", label="ORG", doc_id="train_1_2", score=0.5, **extra):
    return {
        "doc_id": doc_id,
        "doc_index": 7,
        "start": 3,
        "end": 5,
        "label": label,
        "text": span,
        "context": context(left, span, right),
        "score": score,
        **extra,
    }


def table(supporters, opposers=(), width=100, label="LOC", text="Leeds"):
    doc = Doc(spacy.blank("en").vocab, words=["Fans", "of", text, "cheered", "."], spaces=[True] * 4 + [False])
    doc.user_data["id"] = "dev_3_1"
    doc._.influences = [
        {"start": 2, "end": 3, "label": label, "text": text, "supporters": list(supporters), "opposers": list(opposers)}
    ]
    return format_influences(doc, width=width)


def hit_lines(output):
    return [line for line in output.splitlines() if line.startswith(("     + ", "     - ")) and "(no " not in line]


@pytest.mark.parametrize("seed", range(30))
def test_random_contexts_keep_the_span_whole_and_centred(seed):
    rng = random.Random(seed)
    left = " ".join(rng.choices(WORDS, k=rng.randint(0, 12)))
    right = " ".join(rng.choices(WORDS, k=rng.randint(0, 12)))
    span = " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
    width = rng.randint(20, 80)
    shown = centred_context(context(left, span, right), span, width)
    assert f"[{span}]" in shown
    assert columns(shown) <= max(width, len(span) + 2 + 2 * len(" ..."))
    before, after = shown.split(f"[{span}]", 1)
    before, after = before.strip(), after.strip()
    # each side is the whole context or the part nearest the span, behind "..."
    assert before == left or (before.startswith("...") and left.endswith(before[3:]))
    assert after == right or (after.endswith("...") and right.startswith(after[:-3]))
    word = max(len(w) for w in WORDS) + 1
    if before == "..." or after == "...":  # clipped to nothing only when the span leaves no room for a word
        assert width - len(span) - 4 < 2 * (word + 3)
    assert (before == "") == (left == "") and (after == "") == (right == "")
    # sides are cut between words
    assert before in ("", left) or f" {before[3:]}" in f" {left}"
    assert after in ("", right) or f"{after[:-3]} " in f"{right} "
    # clipping uses the width (but for the word cut off), and a side is clipped only when
    # the other side is whole or clipped too at about half the room the span leaves (centred)
    share = (width - len(span) - 4) // 2
    if before != left:
        assert columns(shown) >= width - 2 * word
        assert after == right or columns(after) >= share - word
    if after != right:
        assert columns(shown) >= width - 2 * word
        assert before == left or columns(before) >= share - word


def test_span_late_in_a_long_context_is_shown():
    left = " ".join(WORDS * 3)
    output = table([hit("Bank of England", left=left, right="left rates unchanged .")])
    (line,) = hit_lines(output)
    assert "[Bank of England] left rates unchanged ." in line
    assert line.endswith(" ...at six percent for now [Bank of England] left rates unchanged .")
    assert len(line) <= 100


def test_span_longer_than_the_width_is_whole_and_nothing_else_is_cut_into_it():
    span = " ".join(WORDS)
    (line,) = hit_lines(table([hit(span, left="before it", right="after it")], width=60))
    assert f"[{span}]" in line
    assert line.endswith(f" ... [{span}] ...")


def test_no_context_and_labels_of_both_query_and_hits():
    output = table([hit("Leeds United", label="ORG")], [hit("Leeds", label="LOC", doc_id=None, score=-0.25)])
    lines = output.splitlines()
    assert lines[0] == "== dev_3_1: Fans of Leeds cheered ."
    assert lines[1].split() == ["score", "label", "training", "doc", "context"]
    assert lines[2] == "   LOC 'Leeds' [tokens 2-3]"
    plus, minus = hit_lines(output)
    assert plus.split() == ["+", "+0.500", "ORG", "train_1_2", "[Leeds", "United]"]
    assert minus.split() == ["-", "-0.250", "LOC", "#7", "[Leeds]"]
    # the columns line up
    assert plus.index("ORG") == minus.index("LOC") == lines[1].index("label")
    assert plus.index("train_1_2") == minus.index("#7") == lines[1].index("training doc")


def test_refined_scores_keep_the_columns_and_the_width():
    long = " ".join(WORDS * 2)
    hits = [hit("rates", left=long, right=long, refined=-0.0123), hit("bank", left=long, right=long)]
    output = table(hits)
    first, second = hit_lines(output)
    assert "(-0.012 nats)" in first
    assert first.index("ORG") == second.index("ORG") == output.splitlines()[1].index("label")
    assert first.index("[rates]") > 50 and second.index("[bank]") > 50
    assert max(len(line) for line in output.splitlines()) <= 100


def test_unicode_is_measured_in_terminal_columns():
    left = "東京証券取引所の発表によると、"
    right = "は金利を据え置いた。" * 5
    output = table([hit("日本銀行", left=left, right=right, label="組織")], text="Café́")
    (line,) = hit_lines(output)
    assert "[日本銀行]" in line and line.endswith("...")
    assert all(columns(row) <= 100 for row in output.splitlines())
    assert columns(line) >= 95  # the room is used, not wasted by counting bytes or characters


def test_long_labels_and_doc_ids_are_clipped_not_spilled():
    hits = [hit("x", label="A_VERY_LONG_LABEL_NAME", doc_id="corpus_" + "9" * 40)]
    output = table(hits)
    (line,) = hit_lines(output)
    assert "A_VERY_LO..." in line and "...9999" in line
    assert line.index("[x]") == output.splitlines()[1].index("context")


def test_without_entities_or_hits():
    doc = Doc(spacy.blank("en").vocab, words=["Nothing", "here"])
    assert format_influences(doc) == "== Nothing here\n   (no entities predicted)"
    output = table([], [])
    assert "     + (no supporters)" in output and "     - (no opposers)" in output


def test_newlines_stay_out_of_the_table():
    output = table([hit("Bank of\nEngland", left="said\n\nthe", right="on\nMonday")])
    (line,) = hit_lines(output)
    assert line.endswith(" said the [Bank of England] on Monday")


def test_doc_text_is_clipped_to_the_width():
    doc = Doc(spacy.blank("en").vocab, words=WORDS * 4)
    doc._.influences = []
    first = format_influences(doc, width=50).splitlines()[0]
    assert first == "== the bank of england said on monday that..."
