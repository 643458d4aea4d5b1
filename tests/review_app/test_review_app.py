"""The review app: its database (idempotent answers, undo, resume, concurrent writers), the
session's re-ranking and groups, the corrected corpus, the JSONL export and the HTTP API."""

import shutil
import threading

import numpy
import pytest
import srsly
from spacy.tokens import Span
from typer.testing import CliRunner

from spacy_segment_influence.annotation_errors import ErrorFinder, ReviewLoop, rank, read_decisions
from spacy_segment_influence.cli import app
from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.exceptions import ConfigError, DataError, SegmentInfluenceError
from spacy_segment_influence.review_app import (
    DecisionConflict,
    FeatureLoop,
    ReviewSession,
    ReviewStore,
    apply_decisions,
    decision_records,
    open_review,
)

from ..conftest import NOISY_DOC, gold_docs, noisy_docs, write_corpus


@pytest.fixture(scope="module")
def prepared(nlp, tmp_path_factory):  # noqa: F811
    """A model, the noisy corpus, and a review database prepared from them (a template)."""
    path = tmp_path_factory.mktemp("review")
    nlp.to_disk(path / "model")
    write_corpus(noisy_docs(nlp), path / "train.spacy")
    write_corpus(gold_docs(nlp), path / "dev.spacy")
    open_review(path / "template.sqlite", path / "model", path / "train.spacy", dev_path=path / "dev.spacy", log=str)
    return path


@pytest.fixture
def db(prepared, tmp_path):
    shutil.copy(prepared / "template.sqlite", tmp_path / "review.sqlite")
    return tmp_path / "review.sqlite"


@pytest.fixture
def session(db):
    return ReviewSession(ReviewStore(db))


def find(session, text, label=None):
    """The candidate whose main span is `text` (with current label `label`)."""
    return next(
        c.id
        for c in session.candidates
        if c.pattern.split("\t")[1] == text and label in (None, c.pattern.split("\t")[0])
    )


def test_the_injected_error_is_the_first_card(session):
    card = session.card()
    assert card["tokens"][3][0] == "Paris" and (card["label"], card["suggested_label"]) == ("PER", "LOC")
    assert card["why"]["supporters"] and 0 < card["why"]["probability"] < 1
    assert card["progress"] == {"total": len(session.candidates), "decided": 0, "accept": 0, "reject": 0, "ignore": 0}


def test_an_answer_repeated_is_stored_once_and_a_contradiction_is_refused(db):
    store = ReviewStore(db)
    first = store.answer({0: ("reject", None)}, 0)
    assert store.answer({0: ("reject", None)}, 0) == first
    with pytest.raises(DecisionConflict):
        store.answer({0: ("accept", [(3, 4, "LOC")])}, 0)
    assert store.decisions() == {0: ("reject", None, first)}
    assert store.last_action() == first


def test_undo_takes_back_the_latest_action_only_and_a_group_at_once(db):
    store = ReviewStore(db)
    one = store.answer({0: ("accept", [(3, 4, "LOC")])}, 0)
    group = store.answer({1: ("reject", None), 2: ("reject", None), 0: ("reject", None)}, 1)
    assert set(store.decisions()) == {0, 1, 2} and store.decisions()[0].answer == "accept"  # 0 kept its answer
    with pytest.raises(DecisionConflict):
        store.undo(one)
    assert store.undo(group) == 1
    assert set(store.decisions()) == {0}
    with pytest.raises(DecisionConflict):
        store.undo(group)  # a second tab's undo of the same action
    assert store.undo(one) == 0 and store.decisions() == {} and store.last_action() is None


def test_a_reopened_database_resumes_with_the_same_queue(db, prepared):
    session = ReviewSession(ReviewStore(db), rerank_every=1)
    session.answer(session.card()["id"], "accept")
    after = session.answer(session.card()["id"], "reject")
    session.store.close()  # as a killed server leaves it: every answer was committed
    resumed = open_review(db, prepared / "model", prepared / "train.spacy", rerank_every=1, log=str)
    assert resumed.card() == after
    numpy.testing.assert_array_equal(resumed.scores, session.scores)


def test_a_database_of_another_corpus_is_refused(db, prepared, nlp, tmp_path):  # noqa: F811
    write_corpus(gold_docs(nlp), tmp_path / "other.spacy")
    with pytest.raises(ConfigError, match="another corpus"):
        open_review(db, prepared / "model", tmp_path / "other.spacy", log=str)


def test_concurrent_answers_count_once(db):
    """Eight writers on their own connections: one answer per candidate wins, the others
    get a conflict; distinct candidates are all stored."""
    outcomes = []

    def writer(n):
        store = ReviewStore(db)
        try:
            store.answer({0: ("accept" if n % 2 else "reject", None)}, 0)
            outcomes.append("stored")
        except DecisionConflict:
            outcomes.append("conflict")
        store.answer({n + 1: ("reject", None)}, n + 1)
        store.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    decisions = ReviewStore(db).decisions()
    assert outcomes.count("conflict") == 3  # the three of the other answer; the same answer is a retry
    assert sorted(decisions) == list(range(7))
    assert len({d.action for d in decisions.values()}) == 7


@pytest.mark.parametrize("every", [1, 2, 3])
def test_the_queue_is_the_review_loops_feature_re_ranking(db, nlp, every):  # noqa: F811
    """Re-ranked by ReviewLoop with features from the decisions so far, after every
    `every`-th decision; static until then."""
    session = ReviewSession(ReviewStore(db), rerank_every=every)
    finder = ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))
    records = rank(finder, "influence")
    position = {(r["meta"]["doc_index"], r["spans"][0]["token_start"]): i for i, r in enumerate(records)}
    order = [position[(c.doc_index, c.start)] for c in finder.candidates]  # finder index -> queue id
    session.answer(find(session, "Paris"), "accept")
    session.answer(find(session, "Rome"), "reject")
    if every > 2:
        numpy.testing.assert_array_equal(session.scores, session.static)
        return
    loop = ReviewLoop(finder, "features")
    static = -numpy.array(order, dtype=float)
    decided = numpy.array([order.index(find(session, "Paris")), order.index(find(session, "Rome"))])
    expected = loop.rerank(static, decided, numpy.array([True, False]))
    numpy.testing.assert_allclose(session.scores[order], expected, atol=1e-6)


def test_without_learning_the_queue_keeps_the_static_order(db):
    session = ReviewSession(ReviewStore(db), learn=False)
    served = []
    while not (card := session.card())["done"]:
        served.append(card["id"])
        session.answer(card["id"], "accept" if card["id"] % 2 else "reject")
    assert served == list(range(len(session.candidates)))


def test_a_group_decision_relabels_every_span_like_it(db, tmp_path, nlp):  # noqa: F811
    # three more "Paris" tagged PER, as a systematic error would
    docs = noisy_docs(nlp) + [nlp.make_doc(f"He flew to Paris {i} .") for i in range(3)]
    for i, doc in enumerate(docs[-3:]):
        doc.ents = [Span(doc, 3, 4, "PER")]
        doc.user_data["id"] = f"extra_{i}"
    nlp.to_disk(tmp_path / "model")
    write_corpus(docs, tmp_path / "train.spacy")
    session = open_review(tmp_path / "g.sqlite", tmp_path / "model", tmp_path / "train.spacy", log=str)
    paris = [c.id for c in session.candidates if c.pattern == "PER\tParis"]
    assert len(paris) == 4 and session.card(paris[0])["group"]["count"] == 3
    session.answer(paris[0], "accept", label="LOC", group=True)
    decisions = session.store.decisions()
    assert all(decisions[c].answer == "accept" for c in paris) and len({decisions[c].action for c in paris}) == 1
    fixed, counts = apply_decisions(docs, session.store)
    assert counts["fixed regions"] == 4
    assert [[(e.text, e.label_) for e in doc.ents if e.text == "Paris"] for doc in fixed if "Paris" in doc.text] == [
        [("Paris", "LOC")]
    ] * 4


def expected_corpus(nlp, changes):  # noqa: F811
    """The gold corpus built by hand: the noisy one with `changes` (doc, ents) applied."""
    docs = noisy_docs(nlp)
    for index, ents in changes.items():
        docs[index].ents = [Span(docs[index], s, e, label) for s, e, label in ents]
    return docs


def ents(docs):
    return [[(e.start, e.end, e.label_) for e in doc.ents] for doc in docs]


def test_apply_decisions_relabels_fixes_and_removes(session, nlp):  # noqa: F811
    docs = noisy_docs(nlp)
    session.answer(find(session, "Paris"), "accept")  # the suggestion: LOC
    session.answer(find(session, "Anna Berg"), "accept", label="PER", span=(0, 1))  # boundaries fixed
    session.answer(find(session, "Rome"), "reject")
    session.answer(find(session, "IBM"), "accept", label="O")  # no entity
    session.answer(find(session, "Apple"), "ignore")
    fixed, counts = apply_decisions(docs, session.store)
    expected = expected_corpus(nlp, {NOISY_DOC: [(0, 1, "PER"), (3, 4, "LOC")], 1: [(0, 1, "ORG")]})
    assert ents(fixed) == ents(expected) and [d.text for d in fixed] == [d.text for d in expected]
    assert counts == {"fixed regions": 3, "changed sentences": 2, "sentences": 5}
    assert ents(docs) == ents(noisy_docs(nlp))  # the input docs are left as they were
    removed, counts = apply_decisions(docs, session.store, remove=True)
    assert [d.user_data["id"] for d in removed] == ["demo_train_0_0", "demo_train_3_0", "demo_train_4_0"]
    with pytest.raises(DataError, match="another corpus"):
        apply_decisions(docs[1:], session.store)


def test_a_fix_wider_than_its_region_replaces_the_entities_it_covers(session, nlp):  # noqa: F811
    # Paris' region is token 3; the fix spans "Berg visited Paris", over Anna Berg's entity outside the region
    session.answer(find(session, "Paris"), "accept", label="LOC", span=(1, 4))
    fixed, _ = apply_decisions(noisy_docs(nlp), session.store)
    expected = ents(gold_docs(nlp))
    expected[NOISY_DOC] = [(1, 4, "LOC")]
    assert ents(fixed) == expected


def test_two_regions_fixed_alike_add_the_entity_once_and_overlapping_fixes_are_refused(session, nlp):  # noqa: F811
    session.answer(find(session, "Anna Berg"), "accept", label="ORG", span=(0, 4))
    session.answer(find(session, "Paris"), "accept", label="ORG", span=(0, 4))
    fixed, counts = apply_decisions(noisy_docs(nlp), session.store)
    assert ents(fixed)[NOISY_DOC] == [(0, 4, "ORG")] and counts["fixed regions"] == 2
    session.undo(session.store.last_action())
    session.answer(find(session, "Paris"), "accept", label="LOC", span=(1, 4))
    with pytest.raises(DataError, match="overlap"):
        apply_decisions(noisy_docs(nlp), session.store)


def test_the_export_is_what_find_errors_reviewed_reads(session, tmp_path):
    session.answer(find(session, "Paris"), "accept")
    session.answer(find(session, "Rome"), "reject")
    session.answer(find(session, "Apple"), "ignore")
    records = decision_records(session.store)
    srsly.write_jsonl(tmp_path / "decisions.jsonl", records)
    texts = {r["meta"]["doc_id"]: r["text"] for r in records}
    assert read_decisions(tmp_path / "decisions.jsonl", texts) == {
        ("demo_train_2_0", 3, 4): True,
        ("demo_train_3_0", 4, 5): False,
    }
    paris = next(r for r in records if r["answer"] == "accept")
    assert paris["meta"]["corrected_spans"] == [
        {"start": 18, "end": 23, "token_start": 3, "token_end": 3, "label": "LOC"}
    ]


def test_the_cli_writes_the_corrected_corpus(session, db, prepared, tmp_path, nlp):  # noqa: F811
    session.answer(find(session, "Paris"), "accept")
    out, jsonl = tmp_path / "fixed.spacy", tmp_path / "decisions.jsonl"
    args = ["apply-decisions", str(prepared / "train.spacy"), str(db), str(out), "--jsonl", str(jsonl)]
    result = CliRunner().invoke(app, args)
    assert result.exception is None, result.output
    assert "1 accepted regions in 1 sentences fixed" in result.output
    assert ents(read_docbin(out, nlp.vocab)) == ents(expected_corpus(nlp, {NOISY_DOC: [(0, 2, "PER"), (3, 4, "LOC")]}))
    assert [r["answer"] for r in srsly.read_jsonl(jsonl)] == ["accept"]
    result = CliRunner().invoke(app, ["apply-decisions", str(prepared / "train.spacy"), str(db), str(db)])
    assert isinstance(result.exception, SystemExit) and "both an input and the output" in result.output


def test_the_http_api(session):
    pytest.importorskip("fastapi", reason="the review extra: pip install spacy-segment-influence[review]")
    from fastapi.testclient import TestClient

    from spacy_segment_influence.review_app.server import create_app

    client = TestClient(create_app(session))
    assert "keydown" in client.get("/").text
    card = client.get("/api/card").json()
    following = client.post("/api/answer", json={"candidate": card["id"], "answer": "accept"}).json()
    assert following["id"] != card["id"] and following["progress"]["accept"] == 1
    # the same answer again (a second tab, a retry) is one decision; another answer is a conflict
    assert client.post("/api/answer", json={"candidate": card["id"], "answer": "accept"}).status_code == 200
    conflict = client.post("/api/answer", json={"candidate": card["id"], "answer": "reject"})
    assert conflict.status_code == 409 and "already answered" in conflict.json()["detail"]
    assert len(session.store.decisions()) == 1
    bad = client.post("/api/answer", json={"candidate": following["id"], "answer": "accept", "label": "NOPE"})
    assert bad.status_code == 400 and "Unknown label" in bad.json()["detail"]
    undone = client.post("/api/undo", json={"action": following["last_action"]}).json()
    assert undone["id"] == card["id"] and session.store.decisions() == {}
    assert client.post("/api/undo", json={"action": following["last_action"]}).status_code == 409
    client.post("/api/answer", json={"candidate": card["id"], "answer": "reject"})
    assert [r["answer"] for r in map(srsly.json_loads, client.get("/api/decisions.jsonl").text.splitlines())] == [
        "reject"
    ]


def test_a_find_errors_ranking_is_reviewed_in_its_order(prepared, nlp, tmp_path):  # noqa: F811
    finder = ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))
    records = rank(finder, "random")
    srsly.write_jsonl(tmp_path / "ranking.jsonl", records)
    session = open_review(
        tmp_path / "r.sqlite", prepared / "model", prepared / "train.spacy", ranking=tmp_path / "ranking.jsonl", log=str
    )
    assert [c.record["spans"] for c in session.candidates] == [r["spans"] for r in records]
    assert session.card()["id"] == 0
    srsly.write_jsonl(tmp_path / "short.jsonl", records[:-1])
    with pytest.raises(SegmentInfluenceError, match="cut short"):
        open_review(
            tmp_path / "s.sqlite", prepared / "model", prepared / "train.spacy", ranking=tmp_path / "short.jsonl"
        )


def test_the_review_command_refuses_a_database_of_another_corpus(db, prepared, nlp, tmp_path):  # noqa: F811
    write_corpus(gold_docs(nlp), tmp_path / "other.spacy")
    result = CliRunner().invoke(
        app, ["review", str(prepared / "model"), str(tmp_path / "other.spacy"), "--db", str(db)]
    )
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "reviews another corpus" in result.output


def test_the_incremental_design_is_the_review_loops(session):
    """FeatureLoop's design, kept up to date decision by decision (and rebuilt after an
    undo or a changed answer), equals ReviewLoop's computed from scratch."""
    rng = numpy.random.default_rng(0)
    unit = rng.normal(size=(30, 5))
    loop = FeatureLoop(unit / numpy.linalg.norm(unit, axis=1, keepdims=True))
    static = rng.normal(size=30)
    steps = [[(3, True)], [(3, True), (7, False)], [(3, True), (7, False), (8, True), (9, True)], [(3, True)]]
    steps += [[(3, False), (4, True)], [(3, False), (4, True), (5, True)]]
    for decided in steps:
        indices, labels = numpy.array([i for i, _ in decided]), numpy.array([label for _, label in decided])
        expected = ReviewLoop.design(loop, static, indices, labels)
        numpy.testing.assert_allclose(loop.design(static, indices, labels), expected, atol=1e-12)


def test_apply_decisions_refuses_a_database_without_a_review(prepared, tmp_path):
    ReviewStore(tmp_path / "empty.sqlite").close()
    args = ["apply-decisions", str(prepared / "train.spacy"), str(tmp_path / "empty.sqlite"), str(tmp_path / "o.spacy")]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SystemExit) and "holds no review" in result.output
    assert not (tmp_path / "o.spacy").exists()
