"""The review page in headless Chromium: decisions by keyboard and mouse, kept over a
reload, exported as Prodigy-style JSONL; filters; escaping; a page of 2,000 candidates.
Screenshots go to artifacts/ (git-ignored). Skipped where no Chromium is installed
(CI installs it: see the Makefile's test target)."""

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spacy_segment_influence.review.review_page import render_review_page

from ..conftest import EVIL, chromium, ranking

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"

pytestmark = pytest.mark.skipif(chromium.find_chromium() is None, reason="no Chromium: apt-get install chromium")


@pytest.fixture
def browser(tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium.Chromium(downloads=downloads, width=1200, height=1000) as instance:
        instance.downloads = downloads
        yield instance


def open_page(browser, tmp_path, records, name="ranking"):
    path = tmp_path / f"{name}.html"
    path.write_text(render_review_page(records, export_name=f"{name}.reviewed.jsonl"), encoding="utf8")
    browser.open(path.as_uri())


def state(browser):
    """The current card, the decision shown on each card, and the progress counts."""
    return browser.js(
        """({current: document.querySelector('.candidate.current').id,
             answers: Object.fromEntries([...document.querySelectorAll('section.candidate')]
                 .map(c => [c.id, c.dataset.answer])),
             counts: ['done', 'n-accept', 'n-reject', 'n-ignore'].map(id => +document.getElementById(id).textContent),
             visible: [...document.querySelectorAll('section.candidate')].filter(c => !c.hidden).map(c => c.id)})"""
    )


def choose(browser, select, value):
    browser.js(
        f"(() => {{ const s = document.getElementById({json.dumps(select)}); s.value = {json.dumps(value)}; "
        "s.dispatchEvent(new Event('change')); })()"
    )


def export(browser, name):
    browser.js("document.getElementById('export').click()")
    while browser.wait_for_event("Browser.downloadProgress")["params"]["state"] != "completed":
        pass
    return [json.loads(line) for line in (browser.downloads / name).read_text(encoding="utf8").splitlines()]


def key(record):
    return record["meta"]["doc_id"], record["spans"][0]["token_start"], record["spans"][0]["token_end"]


def test_keyboard_decisions_survive_a_reload_and_export_as_prodigy_jsonl(browser, tmp_path):
    records = ranking()
    open_page(browser, tmp_path, records)
    browser.screenshot(ARTIFACTS / "review_page_start.png")
    assert state(browser)["current"] == "rank-1" and state(browser)["counts"] == [0, 0, 0, 0]
    browser.press("a")  # rank 1: the annotation is wrong
    assert state(browser)["current"] == "rank-2"
    browser.press("r")  # rank 2: the annotation is right
    browser.press("j")
    browser.press("ArrowDown")
    browser.press("k")  # back to rank 4
    browser.press(" ")  # skip it
    now = state(browser)
    assert now["current"] == "rank-5" and now["counts"] == [3, 1, 1, 1]
    assert now["answers"] == {
        "rank-1": "accept",
        "rank-2": "reject",
        "rank-3": "",
        "rank-4": "ignore",
        "rank-5": "",
        "rank-6": "",
    }
    browser.screenshot(ARTIFACTS / "review_page_decided.png")
    browser.reload()
    after = state(browser)
    assert after["answers"] == now["answers"] and after["counts"] == [3, 1, 1, 1]
    assert after["current"] == "rank-3"  # the first undecided
    browser.press("k")
    browser.press("k")
    browser.press("u")  # undo rank 1
    assert state(browser)["answers"]["rank-1"] == ""
    browser.press("a")
    exported = export(browser, "ranking.reviewed.jsonl")
    by_rank = {record["meta"]["rank"]: record for record in records}
    assert [(line["meta"]["rank"], line["answer"]) for line in exported] == [
        (1, "accept"),
        (2, "reject"),
        (4, "ignore"),
    ]
    for line in exported:
        assert {k: v for k, v in line.items() if k != "answer"} == by_rank[line["meta"]["rank"]]
    assert {key(line): line["answer"] for line in exported} == {
        key(by_rank[1]): "accept",
        key(by_rank[2]): "reject",
        key(by_rank[4]): "ignore",
    }


def test_buttons_and_filters(browser, tmp_path):
    records = ranking()
    kinds = {f"rank-{r['meta']['rank']}": r["meta"]["kind"] for r in records}
    open_page(browser, tmp_path, records)
    choose(browser, "f-kind", "wrong_type")
    visible = state(browser)["visible"]
    assert visible == [card for card, kind in kinds.items() if kind == "wrong_type"] and len(visible) == 2
    assert state(browser)["current"] == visible[0]
    browser.press("a")  # decides the first visible card, not a hidden one
    assert state(browser)["answers"][visible[0]] == "accept" and state(browser)["current"] == visible[1]
    browser.screenshot(ARTIFACTS / "review_page_filtered.png")
    choose(browser, "f-kind", "")
    choose(browser, "f-label", EVIL)
    (evil,) = state(browser)["visible"]
    assert browser.js(f"document.querySelector('#{evil} .row mark .lbl').textContent") == EVIL
    assert browser.js("document.querySelectorAll('img, main script').length") == 0
    choose(browser, "f-label", "LOC")
    assert len(state(browser)["visible"]) == 2
    choose(browser, "f-label", "")
    choose(browser, "f-answer", "none")
    assert visible[0] not in state(browser)["visible"] and len(state(browser)["visible"]) == 5
    browser.js(f"document.querySelector('#{visible[1]} button[data-answer=reject]').click()")
    assert state(browser)["answers"][visible[1]] == "reject" and len(state(browser)["visible"]) == 4
    choose(browser, "f-answer", "")
    browser.js("document.querySelector('#summary td[data-kind=spurious][data-label=\"\"]').click()")
    assert state(browser)["visible"] == [card for card, kind in kinds.items() if kind == "spurious"]


def test_two_thousand_candidates_stay_usable(browser, tmp_path):
    base = ranking()
    records = []
    for i in range(2000):
        record = copy.deepcopy(base[i % len(base)])
        record["meta"].update(doc_id=f"{record['meta']['doc_id']}_{i // len(base)}", rank=i + 1, score=2000.0 - i)
        records.append(record)
    started = time.monotonic()
    open_page(browser, tmp_path, records, name="large")
    loaded = time.monotonic() - started
    for _ in range(5):
        browser.press("j")
    browser.press("a")
    browser.js("window.scrollTo(0, document.body.scrollHeight / 2)")
    browser.screenshot(ARTIFACTS / "review_page_2000.png")
    now = state(browser)
    assert now["answers"]["rank-6"] == "accept" and now["current"] == "rank-7" and now["counts"][0] == 1
    assert len(now["visible"]) == 2000
    assert loaded < 30, f"2,000 candidates took {loaded:.1f} s to load"


def test_check_script_counts_the_cards_the_browser_built(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_review_page(ranking()), encoding="utf8")
    script = [sys.executable, str(ROOT / "scripts" / "check_report_in_browser.py"), str(page)]
    shot = ARTIFACTS / "review_page_check.png"
    passed = subprocess.run([*script, "--expect", "6", "--screenshot", str(shot)], capture_output=True, text=True)
    assert passed.returncode == 0 and passed.stdout.startswith("OK: 6 candidates"), passed.stderr
    failed = subprocess.run([*script, "--expect", "7", "--screenshot", str(shot)], capture_output=True, text=True)
    assert failed.returncode == 1 and "the browser shows 6 candidates, expected 7" in failed.stderr
