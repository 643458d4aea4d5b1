"""The review app as a person uses it: `segment-influence review` started as a process,
cards answered with the keyboard in headless Chromium, the server killed (SIGKILL) and
started again, then the database and `apply-decisions`' corrected corpus checked. Skipped
where no Chromium is installed."""

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from typer.testing import CliRunner

from spacy_segment_influence.cli import app
from spacy_segment_influence.corpus import read_docbin
from spacy_segment_influence.review_app import ReviewStore

from ..conftest import NOISY_DOC, chromium, gold_docs, noisy_docs, write_corpus

pytestmark = [
    pytest.mark.skipif(chromium.find_chromium() is None, reason="no Chromium: apt-get install chromium"),
    pytest.mark.skipif(importlib.util.find_spec("uvicorn") is None, reason="the review extra is not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, train, db, port):
    """The review command as a process, once its page answers."""
    command = [sys.executable, "-m", "spacy_segment_influence", "review", str(model), str(train), "--db", str(db)]
    server = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the review server exited: {server.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/card", timeout=2).read()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise AssertionError("the review server did not answer within 120 s")


def wait_for(browser, expression, expected, timeout=20):
    deadline = time.monotonic() + timeout
    while (value := browser.js(expression)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{expression} is {value!r}, expected {expected!r}")
        time.sleep(0.05)


def answer(browser, keys, decided):
    """Press `keys` on the current card; returns its candidate id once `decided` answers show."""
    shown = browser.js("card.id")
    for key in keys:
        browser.press(key)
    wait_for(browser, "card.progress.decided", decided)
    return shown


def test_review_by_keyboard_survives_a_killed_server(nlp, tmp_path):  # noqa: F811
    nlp.to_disk(tmp_path / "model")
    train, db = write_corpus(noisy_docs(nlp), tmp_path / "train.spacy"), tmp_path / "review.sqlite"
    port = free_port()
    server = start_server(tmp_path / "model", train, db, port)
    try:
        with chromium.Chromium(width=1200, height=900) as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            wait_for(browser, "card !== null && !busy", True)
            assert browser.js("card.tokens[3][0] + ' ' + card.label") == "Paris PER"
            paris = answer(browser, "a", 1)
            rejected = answer(browser, "x", 2)
            skipped = answer(browser, " ", 3)
            fixed = answer(browser, ["f", "3", "Enter"], 4)  # labels: 0 O, 1 LOC, 2 MISC, 3 ORG, 4 PER
            assert browser.js("card.last_action") == 4
            browser.press("u")
            wait_for(browser, "card.progress.decided", 3)
            assert browser.js("card.id") == fixed  # the undone card is shown again
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            decisions = ReviewStore(db).decisions()
            assert {c: d.answer for c, d in decisions.items()} == {
                paris: "accept",
                rejected: "reject",
                skipped: "ignore",
            }
            assert decisions[paris].entities == [(3, 4, "LOC")]
            server = start_server(tmp_path / "model", train, db, port)
            browser.reload()
            wait_for(browser, "card !== null && card.progress.decided", 3)
            resumed = answer(browser, "x", 4)
            assert resumed not in (paris, rejected, skipped)
            browser.screenshot(tmp_path / "review.png")
    finally:
        server.terminate()
        server.wait()
    said = server.stdout.read()
    assert "Resuming the review" in said and f"open http://127.0.0.1:{port}/ in your browser" in said
    assert len(ReviewStore(db).decisions()) == 4
    out = tmp_path / "fixed.spacy"
    result = CliRunner().invoke(app, ["apply-decisions", str(train), str(db), str(out)])
    assert result.exception is None, result.output
    fixed_docs = read_docbin(out, nlp.vocab)
    assert [(e.text, e.label_) for e in fixed_docs[NOISY_DOC].ents] == [("Anna Berg", "PER"), ("Paris", "LOC")]
    # only Paris was accepted: the corrected corpus is the gold one
    expected = [[(e.start, e.end, e.label_) for e in doc.ents] for doc in gold_docs(nlp)]
    assert [[(e.start, e.end, e.label_) for e in doc.ents] for doc in fixed_docs] == expected
