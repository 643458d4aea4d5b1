"""Open a `segment-influence report` page in headless Chromium, save a screenshot, and
check that the page the browser built shows the expected number of candidates, each with
displaCy entity markup. Not run in CI (it needs a browser):

    apt-get install -y chromium          # Debian
    python -m spacy_segment_influence report metrics/ranking.jsonl --out metrics/report.html --limit 50
    python scripts/check_report_in_browser.py metrics/report.html --expect 50 --screenshot metrics/report.png

Exits 1 with a message when the check fails.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import List


class _Counter(HTMLParser):
    """Counts candidate sections and the displaCy entities inside them."""

    def __init__(self) -> None:
        super().__init__()
        self.candidates = 0
        self.entities_per_candidate: List[int] = []

    def handle_starttag(self, tag, attrs) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag == "section" and "candidate" in classes:
            self.candidates += 1
            self.entities_per_candidate.append(0)
        elif tag == "mark" and "entity" in classes and self.entities_per_candidate:
            self.entities_per_candidate[-1] += 1


def chromium(*args: str) -> str:
    """Run headless Chromium with a throwaway profile and return its stdout."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if binary is None:
        sys.exit("No Chromium found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--expect", type=int, required=True, help="Number of candidates the page must show")
    parser.add_argument("--screenshot", type=Path, default=Path("report.png"))
    args = parser.parse_args()
    url = args.report.resolve().as_uri()
    counter = _Counter()
    counter.feed(chromium("--dump-dom", url))
    chromium(f"--screenshot={args.screenshot.resolve()}", "--window-size=1280,2400", "--hide-scrollbars", url)
    problems = []
    if counter.candidates != args.expect:
        problems.append(f"the browser shows {counter.candidates} candidates, expected {args.expect}")
    if any(n == 0 for n in counter.entities_per_candidate):
        problems.append("some candidates have no displaCy entity markup")
    if not args.screenshot.exists() or args.screenshot.stat().st_size < 5000:
        problems.append(f"no usable screenshot at {args.screenshot}")
    if problems:
        sys.exit("Report check failed: " + "; ".join(problems))
    print(f"OK: {counter.candidates} candidates rendered; screenshot {args.screenshot}")


if __name__ == "__main__":
    main()
