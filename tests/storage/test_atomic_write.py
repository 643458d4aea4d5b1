"""Fault injection for `segment-influence index MODEL TRAIN OUT`: a run killed (SIGKILL) at
any point leaves the previous OUT loading and answering as before, and concurrent writers
to one OUT are refused, not interleaved."""

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin
from typer.testing import CliRunner

from spacy_segment_influence import ConfigError, OutputInUseError
from spacy_segment_influence.cli import app
from spacy_segment_influence.storage import atomic
from spacy_segment_influence.storage.atomic import replaced_dir

from ..conftest import TRAIN_DATA, make_examples, tok2vec_nlp, train

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [text for text, _ in TRAIN_DATA]

# Runs the CLI in a child process that kills itself (SIGKILL: no cleanup handlers run) at
# the point named by argv[1]; `sleep-before-swap` instead waits, so two runs overlap.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import spacy.util
    from spacy_segment_influence.storage import atomic
    from spacy_segment_influence.cli import app

    point, args = sys.argv[1], sys.argv[2:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point.startswith("after-writing:"):
        part, to_disk = point.split(":", 1)[1], spacy.util.to_disk

        def killing_to_disk(path, writers, exclude):
            def wrap(key, write):
                return lambda p: (write(p), key == part and die())
            return to_disk(path, {key: wrap(key, write) for key, write in writers.items()}, exclude)

        spacy.util.to_disk = killing_to_disk
    elif point in ("before-swap", "after-swap", "sleep-before-swap"):
        swap = atomic._swap

        out = os.path.abspath(args[3])  # index MODEL TRAIN OUT: OUT's swap, not its index directory's

        def killing_swap(src, dst):
            if str(dst) != out:
                return swap(src, dst)
            if point == "sleep-before-swap":
                time.sleep(3)
            if point == "before-swap":
                die()
            swap(src, dst)
            if point == "after-swap":
                die()

        atomic._swap = killing_swap
    app(args)
    """
)


def run_child(point: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, point, *map(str, args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def answers(path: Path) -> list:
    nlp = spacy.load(path)
    return [nlp.get_pipe("segment_influence").cfg["k"], *(doc._.influences for doc in nlp.pipe(TEXTS))]


def leftovers(out: Path) -> list:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and "lock" not in p.name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two models with different weights and a training corpus."""
    path = tmp_path_factory.mktemp("atomic")
    for name, steps in (("model_a", 60), ("model_b", 30)):
        nlp = tok2vec_nlp()
        train(nlp, make_examples(nlp), steps=steps).to_disk(path / name)
    DocBin(docs=[eg.reference for eg in make_examples(nlp)]).to_disk(path / "train.spacy")
    return path


def index_args(inputs: Path, out: Path, model: str = "model_a", k: int = 3) -> list:
    return ["index", str(inputs / model), str(inputs / "train.spacy"), str(out), "--k", str(k)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "after-writing:config.cfg",
        "after-writing:tok2vec",
        "after-writing:segment_influence",
        "before-swap",
        "after-swap",
    ],
)
def test_killed_index_run_leaves_a_whole_pipeline(inputs, tmp_path, point):
    out = tmp_path / "out"
    first = CliRunner().invoke(app, index_args(inputs, out, k=3))
    assert first.exception is None, first.output
    before = answers(out)
    child = run_child(point, *index_args(inputs, out, model="model_b", k=2))
    child.communicate(timeout=300)
    assert child.returncode == -9  # killed, as planned
    if point == "after-swap":  # the new pipeline is whole
        assert answers(out)[0] == 2
    else:  # the old one is untouched
        assert answers(out) == before
    # the next run cleans up after the killed one
    again = CliRunner().invoke(app, index_args(inputs, out, model="model_b", k=2))
    assert again.exception is None, again.output
    assert answers(out)[0] == 2 and leftovers(out) == []


def test_second_writer_is_refused_in_one_line(inputs, tmp_path):
    out = tmp_path / "out"
    assert CliRunner().invoke(app, index_args(inputs, out)).exception is None
    before = answers(out)
    with atomic._locked(out.absolute()):  # another writer holds OUT
        result = CliRunner().invoke(app, index_args(inputs, out, model="model_b", k=2))
        with pytest.raises(OutputInUseError, match="being written by another process"):
            with replaced_dir(out, "test"):
                pass
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "being written by another process" in result.output and len(result.output.strip().splitlines()) == 1
    assert answers(out) == before and leftovers(out) == []


@pytest.mark.slow
def test_racing_writers_one_wins_whole(inputs, tmp_path):
    out = tmp_path / "out"
    children = [
        run_child("sleep-before-swap", *index_args(inputs, out, model=m, k=k))
        for m, k in (("model_a", 3), ("model_b", 2))
    ]
    results = [(child.wait(timeout=300), child.communicate()[1]) for child in children]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    refused = next(err for code, err in results if code == 1)
    assert "being written by another process" in refused
    winner_k = 3 if results[0][0] == 0 else 2
    assert answers(out)[0] == winner_k  # loads, its index matches its weights (no IndexOutOfDateError)


def test_refuses_to_replace_a_directory_that_is_not_a_pipeline(inputs, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    result = CliRunner().invoke(app, index_args(inputs, out))
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "was not written by segment-influence index" in result.output
    assert (out / "thesis.tex").read_text() == "precious"


def user_project(inputs: Path, root: Path) -> Path:
    """The issue's project directory: a pipeline's config.cfg beside the user's model,
    training corpus and notes."""
    shutil.copytree(inputs / "model_a", root / "model-best")
    shutil.copy(inputs / "model_a" / "config.cfg", root / "config.cfg")
    shutil.copy(inputs / "train.spacy", root / "train.spacy")
    (root / "notes").mkdir()
    (root / "notes" / "thesis.txt").write_text("x")
    return root


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("cwd", [False, True])
def test_index_never_deletes_a_directory_holding_its_inputs(inputs, tmp_path, monkeypatch, cwd):
    project = user_project(inputs, tmp_path / "P")
    before = tree(project)
    if cwd:  # `cd P && segment-influence index model-best train.spacy .`
        monkeypatch.chdir(project)
        args = ["index", "model-best", "train.spacy", "."]
    else:
        args = ["index", str(project / "model-best"), str(project / "train.spacy"), str(project)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    assert "which replacing it would delete" in result.output and len(result.output.strip().splitlines()) == 1
    assert tree(project) == before


def test_index_refuses_a_pipeline_it_did_not_write_and_unknown_files(inputs, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(inputs / "model_a", out)  # a pipeline, but not one `index` wrote
    result = CliRunner().invoke(app, index_args(inputs, out))
    assert result.exit_code == 1 and "was not written by segment-influence index" in result.output
    shutil.rmtree(out)
    assert CliRunner().invoke(app, index_args(inputs, out)).exception is None
    assert json.loads((out / atomic.MARKER).read_text())["written_by"] == "segment-influence index"
    (out / "notes.txt").write_text("mine")  # the user adds a file to an indexed pipeline
    result = CliRunner().invoke(app, index_args(inputs, out, k=2))
    assert result.exit_code == 1 and "holds notes.txt, which segment-influence index did not write" in result.output
    assert (out / "notes.txt").read_text() == "mine" and answers(out)[0] == 3
    (out / "notes.txt").unlink()
    assert CliRunner().invoke(app, index_args(inputs, out, k=2)).exception is None
    umask = os.umask(0)
    os.umask(umask)
    assert answers(out)[0] == 2 and stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


def test_failed_write_leaves_the_old_directory(tmp_path):
    out = tmp_path / "out"
    with replaced_dir(out, "test") as building:
        (building / "config.cfg").write_text("old")
    with pytest.raises(RuntimeError):
        with replaced_dir(out, "test") as building:
            (building / "config.cfg").write_text("new")
            raise RuntimeError("interrupted")
    assert (out / "config.cfg").read_text() == "old" and leftovers(out) == []
    with replaced_dir(out, "test") as building:
        (building / "config.cfg").write_text("new")
    assert (out / "config.cfg").read_text() == "new" and leftovers(out) == []


def test_dangling_leftover_symlink_and_symlinked_lock(tmp_path):
    """A dangling `.OUT.old-*` symlink is removed, not followed; a symlink at the lock's name
    is refused in one line rather than followed to its target."""
    out = tmp_path / "out"
    (tmp_path / ".out.old-1").symlink_to(tmp_path / "gone")
    with replaced_dir(out, "test") as building:
        (building / "config.cfg").write_text("new")
    assert (out / "config.cfg").read_text() == "new" and leftovers(out) == []
    target = tmp_path / "victim.txt"
    target.write_text("keep")
    (tmp_path / ".out.lock").unlink()
    (tmp_path / ".out.lock").symlink_to(target)
    with pytest.raises(ConfigError, match="writer lock"):
        with replaced_dir(out, "test"):
            pass
    assert target.read_text() == "keep"


def test_fallback_swap_recovers_the_previous_directory(tmp_path, monkeypatch):
    """Without renameat2, a writer killed between its two renames leaves OUT aside; the
    next writer puts it back before doing anything else."""
    out = tmp_path / "out"
    with replaced_dir(tmp_path / "aside", "test") as building:
        (building / "config.cfg").write_text("old")
    (tmp_path / "aside").rename(tmp_path / ".out.old-1234")  # as a kill between the two renames leaves it
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    with pytest.raises(RuntimeError):
        with replaced_dir(out, "test"):
            assert (out / "config.cfg").read_text() == "old"
            raise RuntimeError("stop")
    with replaced_dir(out, "test") as building:
        (building / "config.cfg").write_text("new")
    assert (out / "config.cfg").read_text() == "new" and leftovers(out) == []


def test_fallback_swap_replaces_a_directory_whose_name_looks_temporary(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    out = tmp_path / "run.tmp-1"
    for text in ("old", "new"):
        with replaced_dir(out, "test") as building:
            (building / "config.cfg").write_text(text)
    assert (out / "config.cfg").read_text() == "new" and leftovers(out) == []


def test_full_disk_during_index_is_one_line_and_keeps_the_old_pipeline(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert CliRunner().invoke(app, index_args(inputs, out)).exception is None
    before = answers(out)

    def full(root):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(root / "segment_influence" / "index" / "h.npy"))

    monkeypatch.setattr(atomic, "_fsync_tree", full)
    result = CliRunner().invoke(app, index_args(inputs, out, model="model_b", k=2))
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]  # after the progress bar
    assert "No space left on device" in error and "was left as it was" in error and "Traceback" not in result.output
    assert answers(out) == before and leftovers(out) == []
