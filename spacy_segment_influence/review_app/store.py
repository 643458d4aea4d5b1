"""The review database (SQLite): the candidates to review, in their static order, with
everything a card shows, and every answer, each committed before the next card is served.

Answers are keyed by candidate: answering a decided candidate again with the same answer
is a no-op (a retried request, a second tab showing the same card), with another answer a
`DecisionConflict`. Each answer belongs to one action (one key press: a single candidate,
or a pattern's group); undo takes back the latest action only, named by its id, so two
tabs cannot undo twice. Writes take SQLite's write lock first (BEGIN IMMEDIATE), so
answers from several threads or processes are serialised.
"""

import io
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy

from ..exceptions import ConfigError, DataError

ANSWERS = ("accept", "reject", "ignore")
Entity = Tuple[int, int, str]  # token start, token end (exclusive), label

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arrays (name TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY, doc_index INTEGER NOT NULL, pattern TEXT NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, candidate INTEGER NOT NULL, answer TEXT NOT NULL,
    size INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    candidate INTEGER PRIMARY KEY REFERENCES candidates(id),
    action INTEGER NOT NULL REFERENCES actions(id), answer TEXT NOT NULL, entities TEXT);
"""


class DecisionConflict(DataError):
    """An answer contradicting the one already stored (another tab answered first), or
    an undo of an action that is not the latest."""


class Decision(NamedTuple):
    answer: str
    entities: Optional[List[Entity]]  # the region's corrected entities (accept only)
    action: int


class Candidate(NamedTuple):
    id: int  # the position in the static ranking, 0 = most suspicious
    doc_index: int
    pattern: str
    record: dict


class ReviewStore:
    """One review database; safe to share between the threads of one server."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise ConfigError(f"{self.path}: not a review database ({err})") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    # -- the candidates, written once ------------------------------------------------------
    @property
    def prepared(self) -> bool:
        return bool(self._read("SELECT 1 FROM candidates LIMIT 1"))

    def fill(self, records: Sequence[dict], patterns: Sequence[str], arrays: Dict[str, numpy.ndarray], **info) -> None:
        """Store the ranked candidates (most suspicious first), their arrays and settings,
        all in one transaction."""
        with self._write() as db:
            db.executemany(
                "INSERT INTO candidates VALUES (?, ?, ?, ?)",
                ((i, r["meta"]["doc_index"], p, json.dumps(r)) for i, (r, p) in enumerate(zip(records, patterns))),
            )
            for name, array in arrays.items():
                buffer = io.BytesIO()
                numpy.save(buffer, array, allow_pickle=False)
                db.execute("INSERT OR REPLACE INTO arrays VALUES (?, ?)", (name, buffer.getvalue()))
            db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", ((k, json.dumps(v)) for k, v in info.items()))

    def candidates(self) -> List[Candidate]:
        rows = self._read("SELECT id, doc_index, pattern, record FROM candidates ORDER BY id")
        return [Candidate(i, d, p, json.loads(r)) for i, d, p, r in rows]

    def array(self, name: str) -> numpy.ndarray:
        row = next(iter(self._read("SELECT data FROM arrays WHERE name = ?", (name,))), None)
        if row is None:
            raise DataError(f"{self.path}: no {name!r} array; prepare the review again with a new --db")
        return numpy.load(io.BytesIO(row[0]), allow_pickle=False)

    def info(self, key: str) -> Any:
        row = next(iter(self._read("SELECT value FROM info WHERE key = ?", (key,))), None)
        return None if row is None else json.loads(row[0])

    # -- answers ---------------------------------------------------------------------------
    def decisions(self) -> Dict[int, Decision]:
        rows = self._read("SELECT candidate, answer, entities, action FROM decisions")
        return {c: Decision(a, _entities(e), action) for c, a, e, action in rows}

    def last_action(self) -> Optional[int]:
        return self._read("SELECT MAX(id) FROM actions")[0][0]

    def answer(self, answers: Dict[int, Tuple[str, Optional[List[Entity]]]], primary: int) -> int:
        """Store one action: `answers` (candidate -> answer, corrected entities), the
        first the card's (`primary`), the others its group's. Returns the action's id.
        Already decided group members keep their decision; the card's candidate decided
        the same way before returns that action (a retry), decided otherwise raises
        DecisionConflict."""
        for answer, _ in answers.values():
            if answer not in ANSWERS:
                raise ConfigError(f"Unknown answer {answer!r}: use one of {', '.join(ANSWERS)}")
        with self._write() as db:
            previous = db.execute(
                "SELECT answer, entities, action FROM decisions WHERE candidate = ?", (primary,)
            ).fetchone()
            if previous is not None:
                answer, entities = answers[primary]
                if (previous[0], _entities(previous[1])) == (answer, _listed(entities)):
                    return previous[2]
                raise DecisionConflict(f"Candidate {primary} was already answered {previous[0]} (in another tab?)")
            decided = {row[0] for row in db.execute("SELECT candidate FROM decisions")}
            fresh = {c: a for c, a in answers.items() if c not in decided}
            cursor = db.execute(
                "INSERT INTO actions (candidate, answer, size, created) VALUES (?, ?, ?, ?)",
                (primary, answers[primary][0], len(fresh), time.time()),
            )
            action = int(cursor.lastrowid or 0)
            db.executemany(
                "INSERT INTO decisions VALUES (?, ?, ?, ?)",
                ((c, action, a, None if e is None else json.dumps(e)) for c, (a, e) in fresh.items()),
            )
        return action

    def undo(self, action: int) -> int:
        """Take back action `action`, which must be the latest; returns its card's candidate."""
        with self._write() as db:
            latest = db.execute("SELECT MAX(id) FROM actions").fetchone()[0]
            if latest is None or action != latest:
                raise DecisionConflict(
                    f"Action {action} is not the latest ({latest}): undone already, or in another tab"
                )
            candidate = db.execute("SELECT candidate FROM actions WHERE id = ?", (action,)).fetchone()[0]
            db.execute("DELETE FROM decisions WHERE action = ?", (action,))
            db.execute("DELETE FROM actions WHERE id = ?", (action,))
        return int(candidate)

    def _read(self, query: str, parameters: Tuple = ()) -> List[tuple]:
        """All rows of a query, never in the middle of another thread's transaction."""
        with self._lock:
            return self._db.execute(query, parameters).fetchall()

    def _write(self) -> "_Transaction":
        return _Transaction(self._db, self._lock)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception), one thread at a time."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self.db, self.lock = db, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.db

    def __exit__(self, kind, value, traceback) -> None:
        try:
            self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        finally:
            self.lock.release()


def _entities(raw: Optional[str]) -> Optional[List[Entity]]:
    return None if raw is None else [(int(s), int(e), str(label)) for s, e, label in json.loads(raw)]


def _listed(entities: Optional[Sequence[Entity]]) -> Optional[List[Entity]]:
    return None if entities is None else [(int(s), int(e), str(label)) for s, e, label in entities]


def iter_decided(store: ReviewStore) -> Iterator[Tuple[Candidate, Decision]]:
    """The decided candidates with their decisions, in ranking order."""
    decisions = store.decisions()
    for candidate in store.candidates():
        if candidate.id in decisions:
            yield candidate, decisions[candidate.id]
