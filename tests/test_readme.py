"""README.md's examples run as written: every ```python block, and the command lines of
its quick start, each on its own (no names carried over from another block), from a
project folder holding the demo's outputs (a short tok2vec training on the shipped demo
corpus stands in for `make demo`'s). No block may write into that folder: examples write
to temporary folders, never over the demo's outputs."""

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICK_START = "## Quick start on the command line"
# what a README block may read: the demo's outputs (`make demo`, or the fixture below)
DEMO_OUTPUTS = ("training/", "corpus/")


def fenced_blocks(text: str, language: str) -> List[Tuple[int, str]]:
    """The ```language blocks of a Markdown text: the line each starts on, and its code
    dedented (blocks inside list items are indented)."""
    pattern = re.compile(rf"^( *)```{language}\n(.*?)^\1```$", re.S | re.M)
    return [(text.count("\n", 0, m.start()) + 1, textwrap.dedent(m.group(2))) for m in pattern.finditer(text)]


def quick_start_lines(text: str) -> List[str]:
    """The commands of the quick start's bash block, continuation lines joined, comments
    dropped."""
    section = text.split(QUICK_START, 1)[1].split("\n## ", 1)[0]
    ((_, block),) = fenced_blocks(section, "bash")
    joined = block.replace("\\\n", " ")
    return [line.split("  #", 1)[0].strip() for line in joined.splitlines() if line.strip()]


PYTHON_BLOCKS = {f"README.md:{line}": code for line, code in fenced_blocks(README.read_text(encoding="utf8"), "python")}


def _needs_demo(block: str) -> bool:
    code = re.sub(r"#.*", "", block)  # a path in a comment is no read
    return any(path in code for path in DEMO_OUTPUTS)


def _snapshot(folder: Path) -> Dict[str, Tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def demo_project(tmp_path_factory) -> Path:
    """A project folder as `make demo` leaves it, smaller: the demo corpus converted, a
    crf_ner trained briefly on tok2vec (training/model-best) and indexed
    (training/model-influence); assets/ and configs/ are the repository's."""
    from spacy.cli.train import train
    from typer.testing import CliRunner

    from spacy_segment_influence.cli import app
    from spacy_segment_influence.corpus import convert_corpus

    project = tmp_path_factory.mktemp("demo_project")
    for name in ("assets", "configs"):
        (project / name).symlink_to(ROOT / name)
    for split in ("train", "dev", "test"):
        convert_corpus(ROOT / "assets" / "demo" / f"{split}.jsonl", project / "corpus" / f"{split}.spacy")
    overrides = {
        "paths.train": str(project / "corpus/train.spacy"),
        "paths.dev": str(project / "corpus/dev.spacy"),
        "training.max_steps": 100,
        "training.eval_frequency": 50,
    }
    train(ROOT / "configs/crf_ner_tok2vec.cfg", project / "training", overrides=overrides)
    result = CliRunner().invoke(
        app, ["index", str(project / "training/model-best"), str(project / "corpus/train.spacy"),
              str(project / "training/model-influence")]
    )  # fmt: skip
    assert result.exception is None, result.output
    return project


def _run_block(block: str, folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    before = _snapshot(folder)
    exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    assert _snapshot(folder) == before, "a README block wrote into the project folder"


def test_readme_has_its_examples():
    """The extraction finds every example (a broken fence would skip one silently)."""
    text = README.read_text(encoding="utf8")
    assert len(PYTHON_BLOCKS) == text.count("```python") >= 7
    assert quick_start_lines(text)


@pytest.mark.slow  # the blocks train toy pipelines (seconds)
@pytest.mark.parametrize("where", [at for at, code in PYTHON_BLOCKS.items() if not _needs_demo(code)])
def test_standalone_python_block_runs(where, tmp_path, monkeypatch):
    _run_block(PYTHON_BLOCKS[where], tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("where", [at for at, code in PYTHON_BLOCKS.items() if _needs_demo(code)])
def test_python_block_runs_on_the_demo_outputs(where, demo_project, monkeypatch):
    _run_block(PYTHON_BLOCKS[where], demo_project, monkeypatch)


@pytest.mark.slow
def test_quick_start_command_lines_run_on_the_demo_outputs(demo_project):
    """Each command line as written (`segment-influence` run as `python -m
    spacy_segment_influence`), in order, from the project folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for line in quick_start_lines(README.read_text(encoding="utf8")):
        if line.startswith("source "):
            continue
        argv = shlex.split(line)
        if argv[0] == "segment-influence":
            argv = [sys.executable, "-m", "spacy_segment_influence", *argv[1:]]
        elif argv[0] == "python":
            argv[0] = sys.executable
        done = subprocess.run(argv, cwd=demo_project, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"


def test_layout_lists_the_real_modules():
    """README's Layout names every wing and module of the package, and none that is gone."""
    layout = README.read_text(encoding="utf8").split("## Layout", 1)[1].split("```", 2)[1]
    package = ROOT / "spacy_segment_influence"
    wings = {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert set(re.findall(r"^  (\w+)/", layout, re.M)) == wings
    top = {p.name for p in package.glob("*.py")} - {"__main__.py"}
    assert set(re.findall(r"^  (\w+\.py)\b", layout, re.M)) == top
    inner = {p.name for wing in wings for p in (package / wing).glob("*.py")} - {"__init__.py"}
    named = set(re.findall(r"\b(\w+\.py)\b", layout))
    assert inner <= named, f"not in the Layout: {sorted(inner - named)}"
    assert named <= inner | top | {"__init__.py", "__main__.py"}, f"gone: {sorted(named - inner - top)}"
