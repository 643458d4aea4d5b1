"""Leverage-corrected removal estimates (`removal`) against dense linear algebra, and the
component's `refine` option end to end."""

import numpy
import pytest
import torch

from spacy_segment_influence.influence import removal
from spacy_segment_influence.influence.curvature import ExactCurvature
from spacy_segment_influence.influence.hessian import head_hessian, segment_hessian
from spacy_segment_influence.influence.index import SegmentIndex
from spacy_segment_influence.influence.segments import (
    Segment,
    segment_gradients,
    segment_losses,
    window_labels,
    window_segment_loss,
)
from spacy_segment_influence.ner import bridge
from spacy_segment_influence.ner.bridge import LabelledBatch, labelled_batch

from ..conftest import make_examples


def labelled(nlp, hide_every: int = 0):
    """The training batch and its entity segments; with `hide_every`, every such token
    outside an entity gets an unknown label, so that windows reach past the segments."""
    ner = nlp.get_pipe("crf_ner")
    docs = [eg.reference for eg in make_examples(nlp)]
    batch = labelled_batch(nlp, "crf_ner", docs)
    segments = [Segment(i, e.start, e.end) for i, d in enumerate(docs) for e in d.ents]
    if hide_every:
        inside = {(s.doc_index, t) for s in segments for t in range(s.start, s.end)}
        tags = [
            [-1 if (i, t) not in inside and t % hide_every == 0 else tag for t, tag in enumerate(row)]
            for i, row in enumerate(batch.tags)
        ]
        batch = LabelledBatch(batch.features, tags)
    return ner, batch, segments


@pytest.mark.parametrize("hide_every", [0, 2])
def test_window_loss_equals_sentence_loss(nlp, hide_every):
    ner, batch, segments = labelled(nlp, hide_every)
    grads = segment_gradients(ner, batch, segments)
    labels = window_labels(batch, segments)
    generator = torch.Generator().manual_seed(0)
    theta = bridge.flat_head(ner) + 0.1 * torch.randn(
        len(bridge.flat_head(ner)), generator=generator, dtype=torch.float64
    )
    expected = segment_losses(ner, batch, segments, theta)
    for i in range(len(segments)):
        window = removal.segment_window(grads.h, grads.offsets, labels, i)
        assert float(window_segment_loss(ner, *window, theta)) == pytest.approx(expected[i], rel=1e-10)


@pytest.mark.parametrize("hide_every", [0, 2])
def test_removal_step_equals_dense_leave_segment_out_newton_step(nlp, hide_every):
    """(H - H_S/N)^-1 g_S / N by CG == the dense solve with the closed-form H_S, and it
    differs from the first-order step H^-1 g_S / N (the correction is not a no-op)."""
    ner, batch, segments = labelled(nlp, hide_every)
    grads = segment_gradients(ner, batch, segments)
    labels = window_labels(batch, segments)
    theta = bridge.flat_head(ner)
    n = len(batch.features)
    hessian = head_hessian(ner, batch)
    curvature = ExactCurvature(hessian, 1e-3, ner.head.n_tags, ner.head.n_features + 1, n)
    damped = hessian + 1e-3 * numpy.eye(len(hessian))
    dense = grads.to_dense()
    for i in range(0, len(segments), 3):
        window = removal.segment_window(grads.h, grads.offsets, labels, i)
        step = removal.removal_step(ner, curvature, n, window, theta).numpy()
        expected = numpy.linalg.solve(damped - segment_hessian(ner, batch, segments[i], theta) / n, dense[i] / n)
        numpy.testing.assert_allclose(step, expected, rtol=1e-7, atol=1e-9 * numpy.abs(expected).max())
        first_order = numpy.linalg.solve(damped, dense[i] / n)
        assert numpy.linalg.norm(first_order - expected) > 0.05 * numpy.linalg.norm(expected)


def test_conjugate_gradients_on_a_random_spd_system():
    rng = numpy.random.default_rng(0)
    a = rng.normal(size=(30, 30))
    matrix = torch.as_tensor(a @ a.T + 0.1 * numpy.eye(30))
    rhs = torch.as_tensor(rng.normal(size=30))
    got = removal._conjugate_gradients(lambda v: matrix @ v, rhs, lambda v: v / 2, 1e-12, 200)
    numpy.testing.assert_allclose(got.numpy(), numpy.linalg.solve(matrix.numpy(), rhs.numpy()), rtol=1e-8)


def test_component_refined_scores_are_loss_changes_at_the_dense_step(nlp, tmp_path):
    examples = make_examples(nlp)
    component = nlp.add_pipe("segment_influence", name="si", config={"k": 3, "curvature": "exact", "refine": True})
    try:
        component.initialize(lambda: examples, nlp=nlp, show_progress=False)
        ner, batch, segments = labelled(nlp)
        theta = bridge.flat_head(ner)
        n = len(batch.features)
        damped = head_hessian(ner, batch) + 1e-3 * numpy.eye(len(theta))
        dense = segment_gradients(ner, batch, segments).to_dense()
        doc = nlp(examples[0].reference.text)
        record = doc._.influences[0]
        query_tags = [bridge.tag_ids(ner, doc, list(doc.ents))]
        query_batch = LabelledBatch(bridge.head_features(ner, [doc]), query_tags)
        query = Segment(0, record["start"], record["end"])
        hits = record["supporters"] + record["opposers"]
        assert hits and all("refined" in hit for hit in hits)
        for hit in hits:
            j = next(
                i
                for i, s in enumerate(segments)
                if (s.doc_index, s.start, s.end) == (hit["doc_index"], hit["start"], hit["end"])
            )
            step = numpy.linalg.solve(damped - segment_hessian(ner, batch, segments[j], theta) / n, dense[j] / n)
            expected = removal.loss_changes(ner, query_batch, query, theta, [torch.as_tensor(step)])[0]
            assert hit["refined"] == pytest.approx(expected, rel=1e-4, abs=1e-9)
        # the window labels survive a round trip, so a loaded index refines too
        component.index.to_disk(tmp_path / "index")
        loaded = SegmentIndex.from_disk(tmp_path / "index")
        numpy.testing.assert_array_equal(loaded.windows.tags, component.index.windows.tags)
        numpy.testing.assert_array_equal(loaded.windows.bounds, component.index.windows.bounds)
        assert loaded.curvature.n_sentences == n
        assert SegmentIndex.from_bytes(component.index.to_bytes()).windows.bounds.shape == (len(segments), 4)
    finally:
        nlp.remove_pipe("si")


def test_refine_needs_an_exact_index(nlp):
    with pytest.raises(ValueError, match="refine needs curvature 'exact'"):
        nlp.add_pipe("segment_influence", name="si", config={"curvature": "kfac", "refine": True})
    examples = make_examples(nlp)
    component = nlp.add_pipe("segment_influence", name="si", config={"curvature": "kfac"})
    try:
        component.initialize(lambda: examples, nlp=nlp, show_progress=False)
        component.cfg["refine"] = True  # as `explain --refine` on a K-FAC index does
        with pytest.raises(ValueError, match="rebuild the index with curvature"):
            nlp(examples[0].reference.text)
    finally:
        nlp.remove_pipe("si")


def test_cli_explain_refine(nlp, tmp_path):
    from spacy.tokens import DocBin
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app

    nlp.to_disk(tmp_path / "model")
    train_path = tmp_path / "train.spacy"
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(train_path)
    runner = CliRunner()
    text = make_examples(nlp)[0].reference.text
    for curvature in ("exact", "kfac"):
        out = tmp_path / curvature
        args = ["index", str(tmp_path / "model"), str(train_path), str(out), "--curvature", curvature]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["explain", str(out), text, "--refine"])
        if curvature == "exact":
            assert result.exit_code == 0, result.output
            assert "nats)" in result.output
        else:  # one red line: a clean exit, not a crash
            assert result.exit_code == 1 and "rebuild the index with curvature" in result.output
            assert isinstance(result.exception, SystemExit), result.exception
