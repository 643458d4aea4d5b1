"""The spaCy project (project.yml): its structure (fast) and its workflows end to end (slow)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import srsly
from thinc.api import Config
from weasel.schemas import ProjectConfigSchema, validate
from weasel.util import get_checksum, load_project_config

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


conll_to_jsonl = _load_script("conll_to_jsonl")


@pytest.fixture(scope="module")
def project():
    return load_project_config(ROOT)


def test_project_yml_validates():
    raw = srsly.read_yaml(ROOT / "project.yml")
    assert validate(ProjectConfigSchema, raw) == []


def test_workflow_steps_are_commands(project):
    commands = {cmd["name"] for cmd in project["commands"]}
    assert {"all", "train-only", "conll"} <= set(project["workflows"])
    for name, steps in project["workflows"].items():
        missing = [step for step in steps if step not in commands]
        assert not missing, f"workflow {name} names undefined commands {missing}"
    assert project["workflows"]["all"] == [
        "convert",
        "train",
        "evaluate",
        "index",
        "explain",
        "find-errors",
        "evaluate-errors",
        "report",
    ]
    assert project["workflows"]["conll"] == ["conll-" + step for step in project["workflows"]["all"]]


def test_every_command_declares_deps_and_outputs(project):
    """So that a rerun skips the steps whose inputs did not change."""
    for cmd in project["commands"]:
        assert cmd["deps"], cmd["name"]
        assert cmd["outputs"], cmd["name"]
        assert cmd.get("help"), cmd["name"]


def test_no_paths_merged_by_interpolation(project):
    """confection 1.3 turns ["${a}", "${b}"] into ["A, B"]; project.yml is written to avoid it."""
    for cmd in project["commands"]:
        for path in cmd["deps"] + cmd["outputs"]:
            assert ", " not in path, f"{cmd['name']}: {path!r}"


def test_workflow_deps_come_from_repo_or_earlier_steps(project):
    commands = {cmd["name"]: cmd for cmd in project["commands"]}
    for workflow in ("all", "train-only"):
        made = set()
        for step in project["workflows"][workflow]:
            for dep in commands[step]["deps"]:
                dep = str(Path(dep))  # pathlib drops the workaround's trailing "/"
                assert dep in made or (ROOT / dep).exists(), f"{workflow}/{step}: {dep} comes from nowhere"
            made.update(str(Path(out)) for out in commands[step]["outputs"])


def test_conll_workflow_reads_conll_dir(project):
    commands = {cmd["name"]: cmd for cmd in project["commands"]}
    conll_dir = project["vars"]["conll_dir"]
    deps = {str(Path(dep)) for dep in commands["conll-convert"]["deps"]}
    assert deps == {str(Path(conll_dir) / project["vars"][key]) for key in ("conll_train", "conll_dev", "conll_test")}
    # CoNLL outputs never overwrite the demo's.
    for step in project["workflows"]["conll"]:
        for out in commands[step]["outputs"]:
            assert "/conll/" in out, out


def test_vars_override_paths():
    """`spacy project run all . --vars.train_jsonl ...` brings your own corpus."""
    project = load_project_config(ROOT, overrides={"vars.train_jsonl": "/data/mine/train.jsonl", "vars.max_steps": 7})
    commands = {cmd["name"]: cmd for cmd in project["commands"]}
    assert Path(commands["convert"]["deps"][0]) == Path("/data/mine/train.jsonl")
    assert "convert /data/mine/train.jsonl corpus/train.spacy" in commands["convert"]["script"][0]
    assert Path(commands["evaluate-errors"]["deps"][0]) == Path("/data/mine/train.jsonl")
    assert "--training.max_steps 7 " in commands["train"]["script"][0]


def test_demo_assets_are_shipped_with_matching_checksums(project):
    local = [asset for asset in project["assets"] if not asset.get("url")]
    assert {Path(a["dest"]).name for a in local} >= {"train.jsonl", "dev.jsonl", "test.jsonl", "train_corrected.jsonl"}
    for asset in local:
        path = ROOT / asset["dest"]
        assert path.exists(), asset["dest"]
        assert asset.get("checksum") == get_checksum(path), (
            f"{asset['dest']} changed: update its checksum in project.yml"
        )
    remote = [asset for asset in project["assets"] if asset.get("url")]
    assert remote and all(asset.get("extra") for asset in remote)
    assert all(asset["url"].startswith("https://") for asset in remote)


def test_conll_to_jsonl_reads_iob1_and_docstarts(tmp_path):
    text = (
        "-DOCSTART- -X- -X- O\n\n"
        "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\n\n"
        "Peter NNP B-NP I-PER\nBlackburn NNP I-NP I-PER\n\n"
        "-DOCSTART- -X- -X- O\n\n"
        "New NNP B-NP I-LOC\nYork NNP I-NP I-LOC\nLondon NNP I-NP B-LOC\n"
    )
    src = tmp_path / "train.txt"
    src.write_text(text)
    zipped = tmp_path / "conll.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(src, "data/train.txt")
    for args in ([str(src)], [str(zipped), "--member", "train.txt"]):
        out = tmp_path / "out.jsonl"
        assert conll_to_jsonl.main([*args[:1], str(out), "--split", "train", *args[1:]]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [row["id"] for row in rows] == ["conll_train_0_0", "conll_train_0_1", "conll_train_1_0"]
        assert rows[0]["tokens"] == ["EU", "rejects", "German"]
        assert rows[0]["ner_tags"] == ["B-ORG", "O", "B-MISC"]
        assert rows[1]["ner_tags"] == ["B-PER", "I-PER"]
        assert rows[2]["ner_tags"] == ["B-LOC", "I-LOC", "B-LOC"]


def test_save_stdout_writes_only_on_success(tmp_path):
    script = ROOT / "scripts" / "save_stdout.py"
    out = tmp_path / "sub" / "out.txt"
    ok = subprocess.run(
        [sys.executable, str(script), str(out), "python", "-c", "print('hello')"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and ok.stdout == "hello\n"
    assert out.read_text() == "hello\n"
    out.unlink()
    failed = subprocess.run(
        [sys.executable, str(script), str(out), "python", "-c", "import sys; print('x'); sys.exit(3)"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 3 and not out.exists()


# ---------------------------------------------------------------------- end to end


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def _tiny_project(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    """A copy of the project whose config uses the tiny random BERT instead of MiniLM."""
    project_dir = tmp_path / "project"
    project_dir.mkdir()
    # fold models of 5 steps (weasel drops "--" from command-line overrides, so edit the copy)
    project_yml = (ROOT / "project.yml").read_text()
    assert "--fold-steps 600" in project_yml
    (project_dir / "project.yml").write_text(project_yml.replace("--fold-steps 600", "--fold-steps 5"))
    for sub in ("configs", "scripts", "assets/demo"):
        shutil.copytree(ROOT / sub, project_dir / sub)
    config = Config().from_disk(ROOT / "configs" / "crf_ner_trf.cfg", interpolate=False)
    model = config["components"]["transformer"]["model"]
    model["name"] = str(tiny_bert_dir)
    model["get_spans"]["window"] = 16
    model["get_spans"]["stride"] = 12
    config["training"]["batcher"]["size"] = 400
    config.to_disk(project_dir / "configs" / "tiny.cfg")
    return project_dir


def _run(project_dir: Path, workflow: str) -> str:
    cmd = [
        sys.executable,
        "-m",
        "spacy",
        "project",
        "run",
        workflow,
        str(project_dir),
        "--vars.config",
        "configs/tiny.cfg",
        "--vars.max_steps",
        "5",
        "--vars.eval_frequency",
        "5",
        "--vars.explain_limit",
        "2",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=project_dir)
    assert result.returncode == 0, f"{workflow} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow
def test_all_workflow_end_to_end(tmp_path, tiny_bert_dir):
    """`spacy project run all` on the demo corpus, with a tiny encoder and 5 steps."""
    project_dir = _tiny_project(tmp_path, tiny_bert_dir)
    _run(project_dir, "all")
    for name in ("train", "dev", "test"):
        assert (project_dir / "corpus" / f"{name}.spacy").exists()
    assert (project_dir / "training" / "model-best" / "config.cfg").exists()
    assert "ents_f" in srsly.read_json(project_dir / "metrics" / "test_scores.json")
    assert (project_dir / "training" / "model-influence" / "config.cfg").exists()
    assert "== demo_dev_0_0" in (project_dir / "metrics" / "explain.txt").read_text()
    ranking = [json.loads(line) for line in (project_dir / "metrics" / "ranking.jsonl").read_text().splitlines()]
    assert ranking
    errors = srsly.read_json(project_dir / "metrics" / "errors.json")
    assert errors
    assert "<html" in (project_dir / "metrics" / "report.html").read_text().lower()
    # A rerun with nothing changed skips every step.
    rerun = _run(project_dir, "train-only")
    for step in ("convert", "train", "evaluate"):
        assert f"Skipping '{step}': nothing changed" in rerun
