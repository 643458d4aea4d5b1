"""Open a `segment-influence report` page in headless Chromium, save a screenshot, and
check that the page the browser built shows the expected number of candidates, each with
entity markup in its two rows, and that its script ran (the progress bar is live):

    apt-get install -y chromium          # Debian
    python -m spacy_segment_influence report metrics/ranking.jsonl --out metrics/report.html --limit 50
    python scripts/check_report_in_browser.py metrics/report.html --expect 50 --screenshot metrics/report.png

Exits 1 with a message when the check fails. `Chromium` is the small driver the browser
test (tests/review/test_review_page_browser.py) uses too: Chrome's DevTools protocol over a pipe
(--remote-debugging-pipe: JSON messages, each ended by a NUL byte, on the browser's file
descriptors 3 and 4; https://chromedevtools.github.io/devtools-protocol/), so it needs no
driver binary and no Python package beyond the standard library.
"""

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)
# Input.dispatchKeyEvent needs the DOM key, its code and, for keys without text, the key code
_KEYS = {" ": ("Space", 32), "ArrowDown": ("ArrowDown", 40), "ArrowUp": ("ArrowUp", 38), "Enter": ("Enter", 13)}
_TEXT = {"Enter": "\r"}  # what a key types, where it is not the key's own one character


def find_chromium() -> Optional[str]:
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for path in map(shutil.which, names) if path), None)


class Chromium:
    """One headless browser with one page, driven over the DevTools protocol."""

    def __init__(self, downloads: Optional[Path] = None, width: int = 1280, height: int = 900, timeout: float = 60):
        binary = find_chromium()
        if binary is None:
            raise RuntimeError("No Chromium found: apt-get install -y chromium")
        self.timeout = timeout
        self._profile = tempfile.TemporaryDirectory()
        self._log = tempfile.TemporaryFile()  # the browser's stderr, quoted when it fails
        commands_in, self._commands = os.pipe()  # the browser reads commands on its fd 3
        self._replies, replies_out = os.pipe()  # and writes replies and events on its fd 4

        def wire() -> None:  # in the child, before exec: move the pipe ends to fds 3 and 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (commands_in, replies_out)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self._process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}", "about:blank"],
            preexec_fn=wire,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        os.close(commands_in)
        os.close(replies_out)
        self._buffer = b""
        self._next_id = 0
        self.events: List[Dict[str, Any]] = []
        try:
            target = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            self._session = self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
            self.send("Page.enable", session=True)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                session=True,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            if downloads is not None:
                self.send(
                    "Browser.setDownloadBehavior", behavior="allow", downloadPath=str(downloads), eventsEnabled=True
                )
        except BaseException:
            self.close()
            raise

    def send(self, method: str, session: bool = False, **params: Any) -> Dict[str, Any]:
        """Run one protocol command (on the page when `session`) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        try:
            os.write(self._commands, json.dumps(message).encode("utf8") + b"\0")
        except BrokenPipeError:
            raise RuntimeError(f"Chromium is gone: it did not take {method}{self._stderr()}") from None
        reply = self._receive(lambda m: m.get("id") == self._next_id, f"the reply to {method}")
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    def wait_for_event(self, method: str) -> Dict[str, Any]:
        """The first event called `method` not yet waited for (events arrive in order)."""
        for i, event in enumerate(self.events):
            if event["method"] == method:
                return self.events.pop(i)
        event = self._receive(lambda m: m.get("method") == method, f"the event {method}")
        self.events.remove(event)
        return event

    def _receive(self, wanted, what: str) -> Dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError(f"Chromium sent no {what} within {self.timeout} s{self._stderr()}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe before {what}{self._stderr()}")
            self._buffer += chunk

    def _stderr(self) -> str:
        self._log.seek(0)
        lines = self._log.read().decode("utf8", "replace").strip().splitlines()[-5:]
        return "; it said: " + " | ".join(lines) if lines else ""

    def open(self, url: str) -> None:
        """Load `url` and wait until its load event (scripts have run)."""
        self.events.clear()
        self.send("Page.navigate", session=True, url=url)
        self.wait_for_event("Page.loadEventFired")

    def reload(self) -> None:
        self.events.clear()
        self.send("Page.reload", session=True)
        self.wait_for_event("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def press(self, key: str) -> None:
        """One key press, as the keyboard sends it (keydown with its text, then keyup)."""
        code, number = _KEYS[key] if key in _KEYS else (f"Key{key.upper()}", ord(key.upper()))
        text = _TEXT.get(key, key if len(key) == 1 else "")
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent",
                session=True,
                type=kind,
                key=key,
                code=code,
                text=text if kind == "keyDown" else "",
                windowsVirtualKeyCode=number,
                nativeVirtualKeyCode=number,
            )

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        """A PNG of the viewport (or of the whole page, up to 8000 pixels high)."""
        options: Dict[str, Any] = {"format": "png"}
        if full_page:
            height = min(8000, self.js("document.documentElement.scrollHeight"))
            options.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": self.js("innerWidth"), "height": height, "scale": 1},
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", session=True, **options)["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._commands)
        os.close(self._replies)
        self._log.close()
        self._profile.cleanup()

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--expect", type=int, required=True, help="Number of candidates the page must show")
    parser.add_argument("--screenshot", type=Path, default=Path("report.png"))
    args = parser.parse_args()
    if not args.report.is_file():
        sys.exit(f"No such page: {args.report}")
    try:
        with Chromium() as browser:
            started = time.monotonic()
            browser.open(args.report.resolve().as_uri())
            seconds = time.monotonic() - started
            cards = browser.js("document.querySelectorAll('section.candidate').length")
            unmarked = browser.js(
                "[...document.querySelectorAll('section.candidate')].filter(c => !c.querySelector('mark.ent')).length"
            )
            live = browser.js("document.getElementById('shown')?.textContent")
            browser.screenshot(args.screenshot)
    except (RuntimeError, TimeoutError) as err:
        sys.exit(f"Report check failed: {err}")
    problems = []
    if cards != args.expect:
        problems.append(f"the browser shows {cards} candidates, expected {args.expect}")
    if unmarked:
        problems.append(f"{unmarked} candidates have no entity markup")
    if live != str(cards):
        problems.append(f"the page's script did not run (it shows {live!r} of {cards} candidates)")
    if not args.screenshot.exists() or args.screenshot.stat().st_size < 5000:
        problems.append(f"no usable screenshot at {args.screenshot}")
    if problems:
        sys.exit("Report check failed: " + "; ".join(problems))
    print(f"OK: {cards} candidates rendered in {seconds:.1f} s; screenshot {args.screenshot}")


if __name__ == "__main__":
    main()
