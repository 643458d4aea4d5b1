"""The review app (issue 26): from a ranking of suspicious training annotations to a
corrected corpus. A local web app serves one candidate at a time, stores every answer in
SQLite, re-ranks the rest from the decisions so far, and can apply one decision to a
whole pattern; `apply-decisions` writes the corrected corpus.

- `store`: `ReviewStore`, the SQLite database (candidates, actions, decisions).
- `prepare`: the candidates, why each is suspicious, patterns, features; computed once.
- `session`: `ReviewSession`, cards, answers, groups, undo, re-ranking.
- `corrected`: the corrected corpus and the decisions as Prodigy-style JSONL.
- `server`: the FastAPI app; `page`: its one HTML page.
- `launch`: `open_review`, `write_decisions` (what the CLI calls).
"""

from .corrected import apply_decisions, decision_records, decisions_jsonl, write_corpus
from .launch import open_review, write_decisions
from .session import FeatureLoop, ReviewSession
from .store import DecisionConflict, ReviewStore

__all__ = [
    "DecisionConflict",
    "FeatureLoop",
    "ReviewSession",
    "ReviewStore",
    "apply_decisions",
    "decision_records",
    "decisions_jsonl",
    "open_review",
    "write_corpus",
    "write_decisions",
]
