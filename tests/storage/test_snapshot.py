"""A segment_influence component loads as one snapshot or not at all: files of two runs or
two writes are refused (the component's checksums tie cfg, surrogate and index
together), a stored cfg is validated, and `load_snapshot` never returns a pipeline mixed
from an old and a new `index` output (issue 24)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import spacy
import srsly

from bench.snapshot_race import answers, build, replace_with
from spacy_segment_influence import IndexCorruptError, IndexOutOfDateError, OutputInUseError
from spacy_segment_influence.pipeline.component import SegmentInfluence
from spacy_segment_influence.storage import checksums
from spacy_segment_influence.storage.snapshot import load_snapshot

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Two pipelines written by `index` whose every file differs (k = 3 and k = 2)."""
    return build(tmp_path_factory.mktemp("snapshot"))


def test_an_index_copied_from_another_run_is_refused(pipelines, tmp_path):
    a, b = pipelines
    mixed = tmp_path / "mixed"
    shutil.copytree(a, mixed)
    shutil.rmtree(mixed / "segment_influence" / "index")
    shutil.copytree(b / "segment_influence" / "index", mixed / "segment_influence" / "index")
    with pytest.raises(IndexCorruptError, match=r"index/checksums.json: its contents changed"):
        spacy.load(mixed)


def rewrite_cfg(pipeline: Path, **changes) -> None:
    """Edit the stored cfg and re-digest it, as a crafted (not damaged) file would be."""
    component = pipeline / "segment_influence"
    cfg = json.loads((component / "cfg").read_text())
    (component / "cfg").write_text(json.dumps({**cfg, **changes}))
    manifest = json.loads((component / checksums.MANIFEST).read_text())
    checksums.write_manifest(component, manifest["files"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dtype": "float33"}, "dtype must be one of"),
        ({"k": 0}, "k must be an integer from 1 to 1000, got 0"),
        ({"k": "5"}, "k = '5' is not a int"),
        ({"k": 100000}, "k must be an integer from 1 to 1000"),
        ({"normalize": "yes"}, "normalize = 'yes' is not a bool"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_a_crafted_cfg_is_refused_by_name(pipelines, tmp_path, changes, message):
    pipeline = tmp_path / "crafted"
    shutil.copytree(pipelines[0], pipeline)
    rewrite_cfg(pipeline, **changes)
    with pytest.raises(IndexCorruptError, match=message):
        spacy.load(pipeline)


def test_an_edited_cfg_is_refused_without_a_new_digest(pipelines, tmp_path):
    pipeline = tmp_path / "edited"
    shutil.copytree(pipelines[0], pipeline)
    cfg = pipeline / "segment_influence" / "cfg"
    cfg.write_text(cfg.read_text().replace('"k":3', '"k":4'))
    with pytest.raises(IndexCorruptError, match="cfg: .*changed since it was written|cfg: .*bytes where"):
        spacy.load(pipeline)


def replacing_during_first_load(monkeypatch, out: Path, new: Path) -> None:
    """Replace `out` by `new` (as a concurrent `index` would) once, after the pipeline's
    other components were read and before segment_influence is."""
    from_disk = SegmentInfluence.from_disk
    pending = [new]

    def racing_from_disk(self, path, **kwargs):
        if pending:
            replace_with(out, pending.pop())
        return from_disk(self, path, **kwargs)

    monkeypatch.setattr(SegmentInfluence, "from_disk", racing_from_disk)


def test_load_snapshot_retries_a_load_that_a_replacement_overlapped(pipelines, tmp_path, monkeypatch):
    a, b = pipelines
    out = tmp_path / "out"
    replace_with(out, a)
    replacing_during_first_load(monkeypatch, out, b)
    with pytest.raises(IndexOutOfDateError):  # plain spacy.load: A's weights with B's index
        answers(spacy.load(out))
    replace_with(out, a)
    replacing_during_first_load(monkeypatch, out, b)
    assert answers(load_snapshot(out)) == answers(spacy.load(b))


def test_load_snapshot_gives_up_in_one_line(pipelines, tmp_path, monkeypatch):
    a, b = pipelines
    out = tmp_path / "out"
    replace_with(out, a)
    from_disk = SegmentInfluence.from_disk

    def always_replaced(self, path, **kwargs):
        replace_with(out, b)
        return from_disk(self, path, **kwargs)

    monkeypatch.setattr(SegmentInfluence, "from_disk", always_replaced)
    with pytest.raises(OutputInUseError, match="replaced by another `segment-influence index` run during each of 5"):
        load_snapshot(out)


def race(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "snapshot_race.py"), *args],
        capture_output=True,
        text=True,
        timeout=3000,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def test_readers_while_replacing_get_no_mixed_answer():
    summary = race("--loads", "8", "--readers", "2", "--interval", "1")
    assert summary.endswith("mixed 0") and "crashed" not in summary, summary


@pytest.mark.slow
def test_many_loads_against_many_replacements():
    # 200 loads keep the suite short; the 1,000-load run is bench/snapshot_race.py's (BENCHMARKS.md)
    summary = race("--loads", "200", "--readers", "2", "--interval", "2")
    replacements = int(summary.split(" replacements")[0].rsplit(" ", 1)[1])
    assert replacements >= 5 and summary.endswith("mixed 0") and "crashed" not in summary, summary


class _RunsCode:
    """Pickled, it calls exec on load: what a crafted weights file can do unless
    torch.load is restricted to tensors."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_crafted_weights_are_refused_not_run(tmp_path, monkeypatch):
    import io

    import torch

    from spacy_segment_influence import PipelineError
    from spacy_segment_influence.influence.surrogate import surrogate_from_bytes
    from spacy_segment_influence.ner.head import CRFHead, _deserialize_head

    real_load = torch.load
    # torch < 2.6 (setup.cfg allows >= 2.0) loaded arbitrary pickles by default
    monkeypatch.setattr(
        torch, "load", lambda *a, weights_only=False, **k: real_load(*a, weights_only=weights_only, **k)
    )
    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"cfg": _RunsCode(marker), "head": {}}, buffer)
    with pytest.raises(IndexCorruptError, match="CRF surrogate of 'ner': not a stored tensor state"):
        surrogate_from_bytes(None, "ner", buffer.getvalue())
    with pytest.raises(PipelineError, match="crf_ner's CRF head: not a stored tensor state"):
        _deserialize_head(CRFHead(), buffer.getvalue(), "cpu")
    assert not marker.exists()


def test_a_crafted_cfg_is_refused_from_bytes_too(pipelines):
    component = spacy.load(pipelines[0]).get_pipe("segment_influence")
    msg = srsly.msgpack_loads(component.to_bytes())
    msg["cfg"]["dtype"] = "float33"
    with pytest.raises(IndexCorruptError, match="the serialized cfg: .*dtype must be one of"):
        component.from_bytes(srsly.msgpack_dumps(msg))
    assert component.from_bytes(component.to_bytes()).cfg["dtype"] == "float32"
