"""Every output file is replaced at once (issue 24): a writer killed (SIGKILL) mid-write, or
stopped by a full disk, leaves the previous output whole; the next write removes what a
killed one left."""

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import srsly
from typer.testing import CliRunner

from spacy_segment_influence import OutputWriteError
from spacy_segment_influence.cli import app
from spacy_segment_influence.storage import atomic_file
from spacy_segment_influence.storage.atomic_file import write_atomic

from .test_input_checks import SENTENCES, ranked_lines
from .test_review_page import ranking

ROOT = Path(__file__).resolve().parents[1]

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


def inputs(tmp_path: Path) -> dict:
    """One small input per command, and the arguments that write `out` from it."""
    ranking_path = tmp_path / "ranking.jsonl"
    srsly.write_jsonl(ranking_path, ranking())
    corpus = tmp_path / "corpus.jsonl"
    srsly.write_jsonl(corpus, SENTENCES)
    corrected = tmp_path / "corrected.jsonl"
    srsly.write_jsonl(corrected, [{**SENTENCES[0], "ner_tags": ["O"] * 3}, SENTENCES[1]])
    ranked = tmp_path / "ranked.jsonl"
    srsly.write_jsonl(ranked, ranked_lines(("a_0", 0, 0), ("a_1", 2, 2)))
    return {
        "report": lambda out: ["report", str(ranking_path), "--out", str(out)],
        "convert": lambda out: ["convert", str(corpus), str(out)],
        "evaluate-errors": lambda out: ["evaluate-errors", str(ranked), str(corpus), str(corrected), "--out", str(out)],
    }


@pytest.mark.parametrize("command", ["report", "convert", "evaluate-errors"])
def test_killed_writer_leaves_the_old_output_whole(tmp_path, command):
    out = tmp_path / "out" / "output"
    args = inputs(tmp_path)[command](out)
    assert CliRunner().invoke(app, args).exception is None
    before = out.read_bytes()
    out.write_bytes(before + b"<!-- the previous run -->")
    before = out.read_bytes()
    child = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, timeout=300)
    assert child.returncode == -9, child.stderr[-2000:]  # killed, as planned
    assert out.read_bytes() == before and temporaries(out.parent)  # the killed writer left its temporary
    assert CliRunner().invoke(app, args).exception is None
    assert out.read_bytes() != before and temporaries(out.parent) == []  # the next write removed it


@pytest.mark.parametrize("command", ["report", "convert", "evaluate-errors"])
def test_full_disk_is_one_line_and_keeps_the_old_output(tmp_path, monkeypatch, command):
    out = tmp_path / "output"
    args = inputs(tmp_path)[command](out)
    out.write_text("the previous run")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_file.os, "fsync", full)
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
