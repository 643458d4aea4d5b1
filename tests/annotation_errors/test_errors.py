import json

import numpy
import pytest
import srsly
import torch
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_segment_influence.annotation_errors import (
    METHODS,
    Candidate,
    CrossFitFinder,
    ErrorFinder,
    disagreement,
    find_candidates,
    held_out_indices,
    rank,
    review_record,
    split_folds,
)
from spacy_segment_influence.annotation_errors.methods import neg_log_tail
from spacy_segment_influence.cli import app
from spacy_segment_influence.ner import crf

from ..conftest import NOISY_DOC, NOISY_SPAN, gold_docs, make_examples, noisy_docs, tok2vec_nlp, train, write_corpus


@pytest.mark.parametrize(
    "gold,predicted,kinds",
    [
        ([(0, 2, "PER")], [(0, 2, "PER")], ["agreed"]),
        ([(0, 2, "PER")], [(0, 2, "ORG")], ["wrong_type"]),
        ([(1, 3, "ORG")], [(0, 3, "ORG")], ["wrong_boundary"]),
        ([(0, 1, "LOC"), (1, 3, "LOC")], [(0, 3, "LOC")], ["wrong_boundary"]),
        ([], [(4, 5, "MISC")], ["missing"]),
        ([(4, 5, "MISC")], [], ["spurious"]),
        ([(0, 2, "PER"), (5, 6, "LOC")], [(0, 2, "PER"), (3, 4, "ORG")], ["agreed", "missing", "spurious"]),
    ],
)
def test_candidate_kinds(gold, predicted, kinds):
    candidates = find_candidates(7, gold, predicted)
    assert [c.kind for c in candidates] == kinds
    assert all(c.doc_index == 7 for c in candidates)


def test_boundary_candidate_covers_both_labellings():
    (candidate,) = find_candidates(0, [(1, 3, "ORG")], [(0, 2, "LOC")])
    assert (candidate.start, candidate.end) == (0, 3)
    assert (candidate.label, candidate.suggested) == ("ORG", "LOC")
    (missing,) = find_candidates(0, [], [(2, 4, "PER")])
    assert (missing.label, missing.suggested) == ("O", "PER")


def test_every_method_ranks_the_injected_error_high(nlp):
    finder = ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))
    target = next(
        i for i, c in enumerate(finder.candidates) if (c.doc_index, c.start, c.end) == (NOISY_DOC, *NOISY_SPAN)
    )
    assert finder.candidates[target].kind == "wrong_type"
    for method in METHODS:
        scores = finder.scores(method)
        assert scores.shape == (len(finder.candidates),) and numpy.isfinite(scores).all()
        # "Paris" occurs once: the corpus has no evidence (consistency), only the model
        if method not in ("random", "consistency"):
            assert numpy.argsort(-scores)[0] == target, method
    assert not finder.scores("consistency").any()


def test_losses_are_segment_nll(nlp):
    finder = ErrorFinder(nlp, noisy_docs(nlp))
    ner = nlp.get_pipe("crf_ner")
    head = ner.head
    weight, bias, *chain = (
        p.detach().double() for p in (head.weight, head.bias, head.transitions, head.start, head.end)
    )
    batch = finder.train.batch
    for candidate, loss in zip(finder.candidates, finder.losses()):
        features = torch.as_tensor(batch.features[candidate.doc_index], dtype=torch.float64)
        scores = crf.ChainScores((features @ weight.T + bias)[None], torch.tensor([len(features)]), *chain)
        expected = crf.segment_nll(
            scores,
            torch.tensor([batch.tags[candidate.doc_index]]),
            torch.tensor([candidate.start]),
            torch.tensor([candidate.end]),
            ner.constraints,
        )
        assert loss == pytest.approx(float(expected), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("curvature", ["kfac", "exact"])
def test_harm_is_the_sum_of_pairwise_influences(nlp, curvature):
    """The one-vector shortcut == summing g_q^T H^-1 g_c over every dev region."""
    component = nlp.add_pipe("segment_influence", config={"curvature": curvature, "damping": 0.01})
    try:
        component.initialize(lambda: make_examples(nlp), nlp=nlp, show_progress=False)
        finder = ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))
        assert finder.curvature is component.index.curvature
        dev = finder.dev_index
        cosine = finder.train_index.scores(finder.dev_grads)  # [Q, N], normalised both sides
        expected = -(cosine * dev.norms[:, None] * finder.train_index.norms[None, :]).sum(axis=0)
        numpy.testing.assert_allclose(finder.harm(), expected, rtol=1e-4, atol=1e-6 * numpy.abs(expected).max())
        assert len(dev) == len(finder.dev.candidates)
    finally:
        nlp.remove_pipe("segment_influence")


def test_influence_needs_dev(nlp):
    finder = ErrorFinder(nlp, noisy_docs(nlp))
    with pytest.raises(ValueError, match="dev"):
        finder.scores("influence")
    with pytest.raises(ValueError, match="Unknown method"):
        finder.scores("vibes")


def test_review_record_is_prodigy_style(nlp):
    doc = gold_docs(nlp)[0]  # Peter Smith lives in New York City .
    candidate = Candidate(0, 4, 7, "wrong_boundary", ((4, 7, "LOC"),), ((4, 6, "LOC"),))
    record = review_record(doc, candidate, {"score": 1.5, "method": "loss", "rank": 1}, [])
    (span,) = record["spans"]
    assert record["text"][span["start"] : span["end"]] == "New York City"
    assert (span["token_start"], span["token_end"], span["label"]) == (4, 6, "LOC")
    assert [t["text"] for t in record["tokens"]] == [t.text for t in doc]
    assert record["meta"]["suggested_spans"][0]["token_end"] == 5
    assert record["meta"]["doc_id"] == "demo_train_0_0"
    json.dumps(record)


def test_rank_orders_by_score_and_names_held_out_predictions(nlp):
    finder = ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))
    records = rank(finder, "loss", k=2)
    scores = [r["meta"]["score"] for r in records]
    assert scores == sorted(scores, reverse=True)
    assert [r["meta"]["rank"] for r in records] == list(range(1, len(records) + 1))
    influenced = records[0]["meta"]["influenced"]
    assert 0 < len(influenced) <= 4
    assert {"doc_id", "text", "label", "predicted", "correct", "score"} <= set(influenced[0])


def test_held_out_predictions_carry_the_sign_of_their_influence(nlp):
    finder = ErrorFinder(nlp, noisy_docs(nlp), gold_docs(nlp))
    cosine = finder.dev_index.scores(finder.grads)  # [candidates, dev regions]
    for row, items in zip(cosine, finder.influenced(k=1)):
        expected = ([row.min()] if row.min() < 0 else []) + ([row.max()] if row.max() > 0 else [])
        assert sorted(item["score"] for item in items) == pytest.approx(expected, rel=1e-4, abs=1e-6)


def write_jsonl(docs, path):
    from spacy_segment_influence.corpus import write_jsonl_docs

    write_jsonl_docs(docs, path)
    return path


def test_cli_round_trip(nlp, tmp_path):
    model = tmp_path / "model"
    nlp.to_disk(model)
    train_path = write_corpus(noisy_docs(nlp), tmp_path / "train.spacy")
    dev_path = write_corpus(gold_docs(nlp), tmp_path / "dev.spacy")
    original = write_jsonl(noisy_docs(nlp), tmp_path / "train.jsonl")
    corrected = write_jsonl(gold_docs(nlp), tmp_path / "train_corrected.jsonl")
    runner = CliRunner()
    ranking = tmp_path / "ranking.jsonl"
    args = [
        "find-errors",
        str(model),
        str(train_path),
        "--dev",
        str(dev_path),
        "--method",
        "influence",
        "--out",
        str(ranking),
        "--folds",
        "0",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = list(srsly.read_jsonl(ranking))
    assert records[0]["meta"]["doc_id"] == f"demo_train_{NOISY_DOC}_0"
    metrics_path = tmp_path / "metrics.json"
    reversed_ranking = tmp_path / "reversed.jsonl"
    srsly.write_jsonl(
        reversed_ranking, [{**r, "meta": {**r["meta"], "rank": i + 1}} for i, r in enumerate(records[::-1])]
    )
    result = runner.invoke(
        app,
        ["evaluate-errors", str(ranking), str(original), str(corrected), "--out", str(metrics_path)]
        + ["--against", str(reversed_ranking), "--n-boot", "20"],
    )
    assert result.exception is None, result.output
    metrics = srsly.read_json(metrics_path)
    assert metrics["span_ap"] == metrics["sentence_ap"] == 1.0 and metrics["n_error_candidates"] == 1
    span_diff, low, high = metrics["against"][str(reversed_ranking)]["span_ap"]
    assert span_diff > 0 and low <= span_diff <= high
    html_path = tmp_path / "report.html"
    result = runner.invoke(app, ["report", str(ranking), "--out", str(html_path), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert html_path.read_text().count('class="candidate"') == 3


def test_cli_user_errors_are_one_red_line(nlp, tmp_path):
    model = tmp_path / "model"
    nlp.to_disk(model)
    train_path = write_corpus(noisy_docs(nlp), tmp_path / "train.spacy")
    result = CliRunner().invoke(app, ["find-errors", str(model), str(train_path), "--out", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception  # a clean exit, not a crash
    assert "Error: --method combined needs held-out data" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    original = write_jsonl(gold_docs(nlp), tmp_path / "o.jsonl")
    result = CliRunner().invoke(app, ["evaluate-errors", str(bad), str(original), str(original)])
    assert result.exit_code == 1 and "no meta.candidates count" in result.output
    assert isinstance(result.exception, SystemExit), result.exception


def test_unannotated_tokens_are_no_candidates(nlp):
    docs = gold_docs(nlp)
    doc = docs[NOISY_DOC]  # "Anna Berg visited Paris ."
    doc.set_ents([], missing=[doc[3:4]], default="unmodified")
    finder = ErrorFinder(nlp, docs)
    assert all(not (c.doc_index == NOISY_DOC and c.start <= 3 < c.end) for c in finder.candidates)
    assert any(c.doc_index == NOISY_DOC for c in finder.candidates)  # Anna Berg still is one
    assert numpy.isfinite(finder.scores("margin")).all()


# -- cross-fitting ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_nlp():
    """A second, differently trained model, so that a fold mix-up changes the scores."""
    nlp = tok2vec_nlp()
    return train(nlp, make_examples(nlp), steps=15, seed=1)


def test_split_folds_keeps_documents_together(nlp):
    docs = [nlp.make_doc("A b .") for _ in range(9)]
    for i, doc in enumerate(docs):
        doc.user_data["id"] = f"conll_train_{i // 3}_{i % 3}"  # 3 documents of 3 sentences
    docs.append(nlp.make_doc("no id"))  # a document of its own
    folds = split_folds(docs, n_folds=2, seed=3)
    assert sorted(i for fold in folds for i in fold) == list(range(len(docs)))
    for fold in folds:
        for i in fold:
            if i < 9:
                assert {3 * (i // 3), 3 * (i // 3) + 1, 3 * (i // 3) + 2} <= set(fold)
    assert split_folds(docs, n_folds=2, seed=3) == folds
    assert sorted(map(len, split_folds(docs, n_folds=4, seed=0))) == [1, 3, 3, 3]
    with pytest.raises(ValueError, match="at least 2"):
        split_folds(docs, n_folds=1)
    with pytest.raises(ValueError, match="can't fill"):
        split_folds(docs, n_folds=5)


def test_held_out_indices_need_exactly_one_unseen_model(nlp):
    docs = gold_docs(nlp)
    assert held_out_indices(docs, [docs[2:], docs[:2]]) == [[0, 1], [2, 3, 4]]
    with pytest.raises(ValueError, match="of 0 fold models, not exactly 1"):
        held_out_indices(docs, [docs, docs[:2]])  # docs 0 and 1 seen by both
    with pytest.raises(ValueError, match="of 2 fold models, not exactly 1"):
        held_out_indices(docs, [docs[3:], docs[3:]])  # docs 0-2 seen by neither


def test_cross_fitted_scores_come_from_the_model_that_did_not_see_the_doc(nlp, other_nlp):
    docs, dev = noisy_docs(nlp), gold_docs(nlp)
    folds = split_folds(docs, n_folds=2, seed=0)
    models = [nlp, other_nlp]

    def per_candidate(models):
        crossfit = CrossFitFinder(list(zip(models, folds)), docs, dev, model=nlp)
        keys = [(c.doc_index, c.start, c.end) for c in crossfit.candidates]
        assert keys == sorted(keys)  # corpus order, doc_index into `docs`
        got = numpy.stack([crossfit.losses(), crossfit.scores("margin"), crossfit.fold_harm()], axis=1)
        return crossfit, dict(zip(keys, got))

    crossfit, got = per_candidate(models)
    expected = {}
    for model, fold in zip(models, folds):
        alone = ErrorFinder(model, [docs[i] for i in fold], dev)
        tail = neg_log_tail(alone.harm())
        for c, *scores in zip(alone.candidates, alone.losses(), alone.scores("margin"), tail):
            expected[(fold[c.doc_index], c.start, c.end)] = scores
    assert sorted(expected) == sorted(got)
    for key, scores in expected.items():
        numpy.testing.assert_allclose(got[key], scores, rtol=1e-6, err_msg=str(key))
    _, swapped = per_candidate(models[::-1])  # each fold scored by the other model
    shared = set(got) & set(swapped)
    assert shared and not all(numpy.allclose(got[key][0], swapped[key][0]) for key in shared)
    # influence: the full model's harm on the same regions, Fisher-combined with the out-of-fold loss
    full = ErrorFinder(nlp, docs, dev, candidates=crossfit.candidates)
    assert [(c.doc_index, c.start, c.end) for c in full.candidates] == list(got)
    numpy.testing.assert_allclose(crossfit.harm(), full.harm(), rtol=1e-6)
    expected_influence = neg_log_tail(full.harm()) + neg_log_tail(crossfit.losses())
    numpy.testing.assert_allclose(crossfit.scores("influence"), expected_influence)
    records = rank(crossfit, "loss", k=1)
    assert [r["meta"]["score"] for r in records] == sorted(crossfit.losses().tolist(), reverse=True)
    assert all(r["text"] == docs[r["meta"]["doc_index"]].text for r in records)
    assert any(r["meta"]["influenced"] for r in records)
    with pytest.raises(ValueError, match="exactly once"):
        CrossFitFinder([(nlp, folds[0])], docs, dev)
    with pytest.raises(ValueError, match="trained on all the data"):
        CrossFitFinder(list(zip(models, folds)), docs, dev).scores("influence")


def test_cross_fitted_consistency_counts_the_whole_corpus(nlp, other_nlp):
    """The noisy "Paris" (PER) in fold 0 and a correct copy of its sentence (LOC) in fold 1:
    the copy is evidence against the noisy label although no fold holds both."""
    docs, dev = noisy_docs(nlp), gold_docs(nlp)
    copy = gold_docs(nlp)[NOISY_DOC]
    copy.user_data["id"] = "demo_train_copy_0"
    docs.append(copy)
    folds = [[0, 1, 2], [3, 4, 5]]
    crossfit = CrossFitFinder(list(zip([nlp, other_nlp], folds)), docs, dev, model=nlp)
    consistency = crossfit.scores("consistency")
    numpy.testing.assert_array_equal(consistency, disagreement(docs, crossfit.candidates))
    noisy = [i for i, c in enumerate(crossfit.candidates) if (c.doc_index, c.start, c.end) == (NOISY_DOC, *NOISY_SPAN)]
    assert consistency[noisy] == pytest.approx(0.5)  # its one other occurrence is labelled otherwise
    numpy.testing.assert_allclose(
        crossfit.scores("combined"),
        neg_log_tail(crossfit.harm()) + neg_log_tail(crossfit.losses()) + neg_log_tail(consistency),
    )


def test_candidates_given_to_the_finder_are_scored_as_given(nlp):
    docs = noisy_docs(nlp)
    own = ErrorFinder(nlp, docs)
    nothing = Candidate(4, 0, 2, "missing", (), ((0, 2, "ORG"),))  # "Nothing to", not an entity anywhere
    regions = [own.candidates[-1], nothing, own.candidates[0]]
    given = ErrorFinder(nlp, docs, candidates=regions)
    assert given.candidates == regions
    losses = given.losses()
    assert losses[[0, 2]] == pytest.approx(own.losses()[[-1, 0]], rel=1e-6)
    assert numpy.isfinite(given.scores("self-influence")).all() and losses[1] >= 0


def test_cli_cross_fitted_round_trip(nlp, other_nlp, tmp_path):
    docs, dev = noisy_docs(nlp), gold_docs(nlp)
    train_path, dev_path = write_corpus(docs, tmp_path / "train.spacy"), write_corpus(dev, tmp_path / "dev.spacy")
    runner = CliRunner()
    result = runner.invoke(app, ["split-folds", str(train_path), str(tmp_path / "folds")])
    assert result.exit_code == 0, result.output
    fold_train = [tmp_path / "folds" / f"train_{k}.spacy" for k in (0, 1)]
    seen = [list(DocBin().from_disk(path).get_docs(nlp.vocab)) for path in fold_train]
    held_out = held_out_indices(docs, seen)
    assert held_out == split_folds(docs, n_folds=2, seed=0)  # train_k holds every fold but k
    for k, model in enumerate([nlp, other_nlp]):
        model.to_disk(tmp_path / f"model_{k}")
    ranking = tmp_path / "ranking.jsonl"
    args = ["find-errors", str(tmp_path / "model_0"), str(train_path), "--dev", str(dev_path), "--out", str(ranking)]
    args += ["--method", "loss", "--k", "0"]
    fold_0 = ["--fold-model", str(tmp_path / "model_0"), "--fold-train", str(fold_train[0])]
    fold_1 = ["--fold-model", str(tmp_path / "model_1"), "--fold-train", str(fold_train[1])]
    result = runner.invoke(app, args + fold_0 + fold_1)
    assert result.exit_code == 0, result.output
    assert "cross-fitted over 2 fold models" in result.output
    scores = [r["meta"]["score"] for r in srsly.read_jsonl(ranking)]
    crossfit = CrossFitFinder(list(zip([nlp, other_nlp], held_out)), docs, dev)
    assert scores == pytest.approx(sorted(crossfit.losses(), reverse=True), rel=1e-6)
    result = runner.invoke(app, args + fold_0 + fold_1[:2])
    assert result.exit_code == 1 and "2 --fold-model but 1 --fold-train" in result.output
    result = runner.invoke(app, args + fold_0)  # fold 1's docs are seen by every model
    assert result.exit_code == 1 and "not exactly 1" in result.output


def test_seed_ensemble_averages_the_fold_models(nlp, other_nlp):
    docs, dev = noisy_docs(nlp), gold_docs(nlp)
    held_out = split_folds(docs, n_folds=2, seed=0)
    ensemble = CrossFitFinder([([nlp, other_nlp], held_out[0]), ([other_nlp, nlp], held_out[1])], docs, dev)
    assert ensemble.n_models == 4
    for k, (first, second) in enumerate([(nlp, other_nlp), (other_nlp, nlp)]):
        fold = [docs[i] for i in held_out[k]]
        own = ErrorFinder(first, fold, dev)
        other = ErrorFinder(second, fold, dev, candidates=own.candidates)
        mine = [i for i, c in enumerate(ensemble.candidates) if c.doc_index in held_out[k]]
        expected = {
            (held_out[k][c.doc_index], c.start, c.end): (a + b) / 2
            for c, a, b in zip(own.candidates, own.losses(), other.losses())
        }
        got = {
            (
                ensemble.candidates[i].doc_index,
                ensemble.candidates[i].start,
                ensemble.candidates[i].end,
            ): ensemble.losses()[i]
            for i in mine
        }
        assert got.keys() == expected.keys()
        assert [got[key] for key in expected] == pytest.approx(list(expected.values()), rel=1e-6)


def test_cli_trains_fold_models_with_the_pipelines_config(nlp, tmp_path):
    """The default recipe: fold models trained by spaCy from MODEL_DIR's config, reused on
    a rerun, and each doc scored by the fold model that did not see it."""
    import spacy

    docs, dev = noisy_docs(nlp), gold_docs(nlp)
    train_path, dev_path = write_corpus(docs, tmp_path / "train.spacy"), write_corpus(dev, tmp_path / "dev.spacy")
    nlp.to_disk(tmp_path / "model")
    ranking = tmp_path / "ranking.jsonl"
    args = ["find-errors", str(tmp_path / "model"), str(train_path), "--dev", str(dev_path), "--out", str(ranking)]
    args += ["--method", "loss", "--k", "0", "--fold-steps", "4"]
    result = CliRunner().invoke(app, args)
    assert result.exception is None, result.output
    assert "[1/2] fold 0 seed 0: training" in result.output and "cross-fitted over 2 fold models" in result.output
    held_out = split_folds(docs, n_folds=2, seed=0)[0]  # the corpus' docs are sentences
    assert f"training on {len(docs) - len(held_out)} sentences (fold 0's {len(held_out)} held out)" in result.output
    fold_dir = tmp_path / "folds"
    models = [spacy.load(fold_dir / f"fold-{k}-seed-0" / "model-best") for k in (0, 1)]
    assert models[0].config["training"]["max_steps"] == 4
    crossfit = CrossFitFinder(list(zip(models, split_folds(docs, n_folds=2, seed=0))), docs, dev)
    scores = [r["meta"]["score"] for r in srsly.read_jsonl(ranking)]
    assert scores == pytest.approx(sorted(crossfit.losses(), reverse=True), rel=1e-5)
    result = CliRunner().invoke(app, args)
    assert result.exception is None, result.output
    assert "[2/2] fold 1 seed 0: reusing" in result.output and "training" not in result.output
    # a training config file (as written by `spacy init config`: `${paths.train}` left to the override)
    nlp.config.to_disk(tmp_path / "fold.cfg", interpolate=False)
    other = ["--fold-config", str(tmp_path / "fold.cfg"), "--fold-dir", str(tmp_path / "other_folds")]
    result = CliRunner().invoke(app, args + other)
    assert result.exception is None, result.output
    assert (tmp_path / "other_folds" / "fold-1-seed-0" / "model-best").is_dir()
    result = CliRunner().invoke(app, args[:-2] + ["--fold-steps", "3", "--folds", "1"])
    assert result.exit_code == 1 and "--folds must be 0 (in-sample) or at least 2" in result.output
    result = CliRunner().invoke(app, [a for a in args if a not in ("--dev", str(dev_path))])
    assert result.exit_code == 1 and "need --dev" in result.output
