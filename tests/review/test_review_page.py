"""The review page's markup (without a browser; tests/review/test_review_page_browser.py clicks
through it in Chromium)."""

import json
import re
from collections import Counter
from html.parser import HTMLParser

import pytest
import srsly
from typer.testing import CliRunner

from spacy_segment_influence import CorpusFormatError
from spacy_segment_influence.cli import app
from spacy_segment_influence.review.review_page import KINDS, read_ranking, render_review_page

from ..conftest import EVIL, ranking


class Cards(HTMLParser):
    """Per candidate section: its id, its heading's text, and per row the entities
    (text, label), the differing tokens and the outlined region's text."""

    def __init__(self, page):
        super().__init__()
        self.cards, self.stack = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        self.stack.append((tag, classes))
        if tag == "section" and "candidate" in classes:
            self.cards.append({"id": attrs["id"], "heading": "", "rows": []})
        elif tag == "div" and "row" in classes:
            self.cards[-1]["rows"].append({"entities": [], "differ": [], "region": ""})
        elif tag == "mark" and self.inside("row"):
            self.cards[-1]["rows"][-1]["entities"].append(["", ""])
        elif tag == "span" and "d" in classes and self.inside("row"):
            self.cards[-1]["rows"][-1]["differ"].append("")

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def inside(self, name):
        return any(name in classes for _, classes in self.stack)

    def handle_data(self, data):
        if self.inside("candidate") and any(tag == "h2" for tag, _ in self.stack):
            self.cards[-1]["heading"] += data
        if not self.inside("row") or self.inside("which"):
            return
        row = self.cards[-1]["rows"][-1]
        if self.inside("lbl"):
            row["entities"][-1][1] += data
        elif self.inside("ent"):
            row["entities"][-1][0] += data
        if self.inside("d"):
            row["differ"][-1] += data
        if self.inside("r") and not self.inside("lbl"):
            row["region"] += data


def card(page, rank):
    return next(c for c in Cards(page).cards if c["id"] == f"rank-{rank}")


def entities(row):
    return [(text.strip(), label) for text, label in row["entities"]]


def test_every_candidate_is_rendered_in_rank_order():
    records = ranking()
    page = render_review_page(records)
    assert [c["id"] for c in Cards(page).cards] == [f"rank-{n}" for n in range(1, 7)]
    assert Counter(r["meta"]["kind"] for r in records) == {
        "missing": 1,
        "wrong_boundary": 1,
        "wrong_type": 2,
        "spurious": 1,
        "agreed": 1,
    }


def test_wrong_boundary_shows_the_annotation_as_it_is():
    records = ranking()
    rank = next(r["meta"]["rank"] for r in records if r["meta"]["kind"] == "wrong_boundary")
    annotation, model = card(render_review_page(records), rank)["rows"]
    assert ("Foods", "ORG") in entities(annotation) and ("Sunvale Foods", "ORG") not in entities(annotation)
    assert ("Sunvale Foods", "ORG") in entities(model)
    assert annotation["region"].strip() == model["region"].strip() == "Sunvale Foods"
    # both tokens differ: "Sunvale" is outside the annotated entity, "Foods" starts it
    assert annotation["differ"] == model["differ"] == ["Shares", "Sunvale", "Foods", "Leeds", "<Monaco>", "&", "Co"]


def test_every_entity_of_the_sentence_is_in_both_rows_with_its_label():
    records = ranking()
    for c in Cards(render_review_page(records)).cards[:]:
        if "demo_train_5_0" not in json.dumps(records[int(c["id"].split("-")[1]) - 1]["meta"]["doc_id"]):
            continue
        annotation, model = c["rows"]
        assert entities(annotation) == [
            ("Foods", "ORG"),
            ("Leeds", "LOC"),
            ("<Monaco> & Co", "ORG"),
            ("Anna Berg", "PER"),
        ]
        assert entities(model) == [("Shares", "MISC"), ("Sunvale Foods", "ORG"), ("Leeds", "ORG"), ("Anna Berg", "PER")]


def test_the_whole_sentence_fields_win_and_the_candidate_alone_is_the_fallback():
    records = ranking()
    first = next(r for r in records if r["meta"]["kind"] == "agreed")
    rank = first["meta"]["rank"]
    alone = card(render_review_page([first]), rank)["rows"]
    assert [entities(row) for row in alone] == [[("Anna Berg", "PER")], [("Anna Berg", "PER")]]
    extra = {"start": 0, "end": 6, "token_start": 0, "token_end": 0, "label": "NORP"}
    first["meta"]["sentence_gold_spans"] = [extra]  # as the lead's writer will add them
    annotation, model = card(render_review_page(records), rank)["rows"]
    assert entities(annotation) == [("Shares", "NORP"), ("Anna Berg", "PER")]
    assert len(entities(model)) == 4


def test_labels_and_text_are_escaped_and_the_data_cannot_end_its_script():
    records = ranking()
    page = render_review_page(records)
    assert "<img" not in page and "<script>alert" not in page
    assert html_escaped(EVIL) in page and "&lt;Monaco&gt;" in page
    rank = next(r["meta"]["rank"] for r in records if r["meta"]["label"] == EVIL)
    annotation, model = card(page, rank)["rows"]
    assert entities(annotation) == [("</script><script>alert(1)</script>", EVIL)]
    assert EVIL in card(page, rank)["heading"]
    data = re.search(r'<script type="application/json" id="records">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data) == records
    assert len(re.findall(r"<script\b", page)) == 2 and not re.search(r"<[^>]*\ssrc=", page)
    assert not re.search(r"\b(https?:|//[a-z])", page.split("<body", 1)[1].split('id="records"')[0])


def html_escaped(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_headlines_say_what_the_model_thinks():
    records = ranking()
    page = render_review_page(records)
    headings = {r["meta"]["kind"]: card(page, r["meta"]["rank"])["heading"] for r in records}
    assert "The model agrees with the annotation (“Anna Berg” PER); ranked for held-out harm" in headings["agreed"]
    assert "Not annotated; the model marks “Shares” MISC" in headings["missing"]
    assert "Annotated “<Monaco> & Co” ORG; the model marks no entity here" in headings["spurious"]
    assert "Annotated “Foods” ORG; the model marks “Sunvale Foods” ORG" in headings["wrong_boundary"]
    assert "PER -> PER" not in page and "&rarr;" not in page
    legend = page.split('id="legend"', 1)[1].split("</details>", 1)[0]
    assert all(kind in legend for kind in KINDS) and "higher = more suspicious" in legend
    assert "held-out (dev) predictions" in legend  # the method of the ranking is explained


def test_summary_counts_candidates_by_kind_and_label():
    records = ranking()
    page = render_review_page(records)
    cells = re.findall(r'<td data-kind="([^"]*)" data-label="([^"]*)">(\d*)</td>', page)
    expected = Counter()
    for record in records:
        meta = record["meta"]
        expected[(meta["kind"], "")] += 1
        for label in {meta["label"], meta["suggested_label"]} - {"O"}:
            expected[(meta["kind"], html_escaped(label))] += 1
    assert {(kind, label): int(n) for kind, label, n in cells if n} == dict(expected)
    options = re.search(r'<select id="f-label">(.*?)</select>', page).group(1)
    assert 'value="LOC">LOC (2)' in options and 'value="ORG">ORG (3)' in options


def test_held_out_evidence_is_listed_strongest_first():
    page = render_review_page(ranking())
    evidence = card_html(page, 1).split("held-out evidence (2)", 1)[1]
    assert evidence.index("dev_4_0") < evidence.index("dev_3_1")  # |-0.9| before |0.42|
    assert "opposes -0.900" in evidence and "supports +0.420" in evidence
    assert "model predicts LOC" in evidence and "model agrees" in evidence
    assert "held-out evidence" not in card_html(page, 2)


def card_html(page, rank):
    return page.split(f'id="rank-{rank}"', 1)[1].split("</section>", 1)[0]


def test_empty_ranking_renders():
    page = render_review_page([])
    assert "0 candidates" in page and 'class="candidate"' not in page


def test_foreign_records_are_refused():
    with pytest.raises(ValueError, match="Record 2: no text, tokens, spans or meta: was it written by find-errors"):
        render_review_page([ranking()[0], {"text": "x"}])


def test_read_ranking_gathers_sentences_beyond_the_limit(tmp_path):
    path = tmp_path / "ranking.jsonl"
    srsly.write_jsonl(path, ranking())
    records, sentences, total = read_ranking(path, limit=2)
    assert [r["meta"]["rank"] for r in records] == [1, 2] and total == 6
    gold, predicted = sentences[("demo_train_5_0", 0)]
    assert sorted(s["token_start"] for s in gold) == [3, 6, 8, 12]
    assert sorted(s["token_start"] for s in predicted) == [0, 2, 6, 12]
    first = card(render_review_page(records, sentences), 1)
    assert len(entities(first["rows"][0])) == 4
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:5]) + '{"text": "no spans", "meta": {"rank": 6, "candidates": 6}}\n')
    with pytest.raises(ValueError, match=r"ranking.jsonl:6: no text, tokens, spans or meta"):
        read_ranking(path)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda lines: lines[:5], "ranking.jsonl: 5 of the 6 candidates it was written with: the file is cut short"),
        (lambda lines: lines[1:], "ranking.jsonl:1: rank 2 where 1 was expected"),
        (lambda lines: lines[:1] + lines, "ranking.jsonl:2: rank 1 where 2 was expected"),
        (lambda lines: [line.replace('"candidates":6', '"candidates":7') for line in lines[:1]] + lines[1:], ":2: no"),
    ],
)
def test_read_ranking_refuses_a_cut_ranking(tmp_path, cut, message):
    """A ranking whose writer was killed is still valid JSONL: its count gives it away."""
    path = tmp_path / "ranking.jsonl"
    path.write_text("".join(cut([srsly.json_dumps(record) + "\n" for record in ranking()])))
    with pytest.raises(CorpusFormatError, match=message):
        read_ranking(path)


def test_cli_report(tmp_path):
    ranking_path, out = tmp_path / "ranking.jsonl", tmp_path / "out" / "report.html"
    srsly.write_jsonl(ranking_path, ranking())
    result = CliRunner().invoke(app, ["report", str(ranking_path), "--out", str(out), "--limit", "4"])
    assert result.exception is None, result.output
    assert "Wrote 4 of the 6 candidates" in result.output
    page = out.read_text(encoding="utf8")
    assert len(Cards(page).cards) == 4 and 'data-export="ranking.reviewed.jsonl"' in page
    ranking_path.write_text('{"text": "x"}\n')
    result = CliRunner().invoke(app, ["report", str(ranking_path), "--out", str(out)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"{ranking_path}:1: no text" in result.output
