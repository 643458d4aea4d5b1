"""Every output file is replaced at once (issues 24, 25): a writer killed (SIGKILL) mid-write or
at a random moment, or stopped by a full disk, leaves the previous output whole; the next write
removes what a killed one left."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import srsly
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_segment_influence import OutputWriteError
from spacy_segment_influence.annotation_errors.records import read_ranking_records
from spacy_segment_influence.cli import app
from spacy_segment_influence.storage import atomic
from spacy_segment_influence.storage.atomic import write_atomic

from ..conftest import JSONL_SENTENCES, make_examples, ranked_lines, ranking, tok2vec_nlp, train

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ["report", "convert", "evaluate-errors", "find-errors", "validate"]

# Runs the CLI in a child process that SIGKILLs itself (no cleanup runs) when its output is
# written in full but not yet in place: the first os.fsync of a file.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from spacy_segment_influence.cli import app

    os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
    app(sys.argv[1:])
    """
)


def temporaries(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny trained pipeline and its training corpus, for find-errors and validate."""
    path = tmp_path_factory.mktemp("killed")
    nlp = tok2vec_nlp()
    train(nlp, make_examples(nlp), steps=30).to_disk(path / "model")
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(path / "train.spacy")
    return path


@pytest.fixture
def inputs(tmp_path, model_dir) -> dict:
    """One small input per command, and the arguments that write `out` from it."""
    ranking_path = tmp_path / "ranking.jsonl"
    srsly.write_jsonl(ranking_path, ranking())
    corpus = tmp_path / "corpus.jsonl"
    srsly.write_jsonl(corpus, JSONL_SENTENCES)
    corrected = tmp_path / "corrected.jsonl"
    srsly.write_jsonl(corrected, [{**JSONL_SENTENCES[0], "ner_tags": ["O"] * 3}, JSONL_SENTENCES[1]])
    ranked = tmp_path / "ranked.jsonl"
    srsly.write_jsonl(ranked, ranked_lines(("a_0", 0, 0), ("a_1", 2, 2)))
    model, docs = str(model_dir / "model"), str(model_dir / "train.spacy")
    small = ["--n-train", "5", "--n-dev", "5", "--pairs", "10", "--n-segments", "1"]
    return {
        "report": lambda out: ["report", str(ranking_path), "--out", str(out)],
        "convert": lambda out: ["convert", str(corpus), str(out)],
        "evaluate-errors": lambda out: ["evaluate-errors", str(ranked), str(corpus), str(corrected), "--out", str(out)],
        "find-errors": lambda out: ["find-errors", model, docs, "--method", "loss", "--folds", "0", "--out", str(out)],
        "validate": lambda out: ["validate", model, docs, docs, *small, "--out", str(out)],
    }


def whole(command: str, out: Path) -> bool:
    """Whether `out` is a complete output of `command` (parses in full; a ranking is refused
    by its reader when cut)."""
    try:
        if command == "find-errors":
            return len(list(read_ranking_records(out))) > 0
        if command in ("validate", "evaluate-errors"):
            return isinstance(json.loads(out.read_text()), dict)
        if command == "report":
            return out.read_text().endswith("</html>\n")
        return len(list(DocBin().from_disk(out).get_docs(tok2vec_nlp().vocab))) == len(JSONL_SENTENCES)
    except Exception:
        return False


def previous_output(args, out: Path) -> bytes:
    """Write `out` with the command, then mark it as the previous run's."""
    first = CliRunner().invoke(app, args)
    assert first.exception is None, first.output
    out.write_bytes(out.read_bytes() + b"\n")
    return out.read_bytes()


@pytest.mark.parametrize("command", COMMANDS)
def test_killed_writer_leaves_the_old_output_whole(inputs, tmp_path, command):
    out = tmp_path / "out" / "output"
    args = inputs[command](out)
    before = previous_output(args, out)
    child = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]  # killed, as planned
    assert out.read_bytes() == before and temporaries(out.parent)  # the killed writer left its temporary
    assert CliRunner().invoke(app, args).exception is None
    assert out.read_bytes() != before and temporaries(out.parent) == []  # the next write removed it


@pytest.mark.slow
@pytest.mark.parametrize("command", ["report", "evaluate-errors", "find-errors", "validate"])
def test_writer_killed_at_random_moments_leaves_a_whole_output(inputs, tmp_path, command):
    """SIGKILL from outside after a random share of a whole run's time: the output is the
    previous one or a complete new one, never a cut file."""
    out = tmp_path / "output.json"
    args = inputs[command](out)
    before = previous_output(args, out)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spacy_segment_influence", *args], cwd=ROOT, check=True, timeout=300)
    duration = time.perf_counter() - started
    out.write_bytes(before)
    rng = random.Random(f"{command}-25")
    for delay in sorted(rng.uniform(0.2, 1.1) * duration for _ in range(4)):
        child = subprocess.Popen([sys.executable, "-m", "spacy_segment_influence", *args], cwd=ROOT)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        assert out.read_bytes() == before or whole(command, out), f"killed after {delay:.2f} s: a cut {out.name}"
        before = out.read_bytes()
    assert CliRunner().invoke(app, args).exception is None
    assert whole(command, out) and temporaries(tmp_path) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk_is_one_line_and_keeps_the_old_output(inputs, tmp_path, monkeypatch, command):
    out = tmp_path / "output"
    args = inputs[command](out)
    out.write_text("the previous run")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.exception
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]  # after any figures
    assert f"{out}: could not write it (No space left on device)" in error
    assert out.read_text() == "the previous run" and temporaries(tmp_path) == []


def test_write_atomic_keeps_a_normal_mode_and_refuses_a_missing_directory(tmp_path):
    write_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputWriteError, match="could not write it"):
        write_atomic(tmp_path / "file" / "b.txt", "x")
