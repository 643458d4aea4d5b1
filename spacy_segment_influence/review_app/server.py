"""The review app's HTTP side (FastAPI, served by uvicorn as Prodigy serves its own): the
page, and a small JSON API the page calls. Every answer is committed to the database
before the response carrying the next card is sent."""

import importlib.util
from typing import Optional

from ..exceptions import MissingExtraError, SegmentInfluenceError
from .corrected import decisions_jsonl
from .page import PAGE
from .session import ReviewSession
from .store import DecisionConflict


def require_extra() -> None:
    """MissingExtraError unless FastAPI and uvicorn are installed."""
    if any(importlib.util.find_spec(name) is None for name in ("fastapi", "uvicorn")):
        raise MissingExtraError(
            "The review app needs FastAPI and uvicorn: pip install 'spacy-segment-influence[review]'"
        )


def create_app(session: ReviewSession):  # -> fastapi.FastAPI (an optional extra)
    """The app serving `session`: GET / (the page), GET /api/card, POST /api/answer,
    POST /api/undo, GET /api/decisions.jsonl."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, PlainTextResponse
    from pydantic import BaseModel

    class Answer(BaseModel):
        candidate: int
        answer: str
        label: Optional[str] = None
        start: Optional[int] = None
        end: Optional[int] = None
        group: bool = False

    class Undo(BaseModel):
        action: int

    app = FastAPI(title="segment-influence review", docs_url=None, redoc_url=None)

    def guarded(call):
        try:
            return call()
        except DecisionConflict as err:
            raise HTTPException(status_code=409, detail=str(err)) from None
        except SegmentInfluenceError as err:
            raise HTTPException(status_code=400, detail=str(err)) from None

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE

    @app.get("/api/card")
    def card() -> dict:
        return session.card()

    @app.post("/api/answer")
    def answer(body: Answer) -> dict:
        span = (body.start, body.end) if body.start is not None and body.end is not None else None
        return guarded(lambda: session.answer(body.candidate, body.answer, body.label, span, body.group))

    @app.post("/api/undo")
    def undo(body: Undo) -> dict:
        return guarded(lambda: session.undo(body.action))

    @app.get("/api/decisions.jsonl", response_class=PlainTextResponse)
    def decisions() -> str:
        return decisions_jsonl(session.store)

    return app


def serve(session: ReviewSession, host: str = "127.0.0.1", port: int = 8080, echo=print) -> None:
    """Run the app until Ctrl+C."""
    import uvicorn

    echo(
        f"Review app: open http://{host}:{port}/ in your browser "
        f"(answers are saved to {session.store.path} as you go; Ctrl+C to stop)"
    )
    uvicorn.run(create_app(session), host=host, port=port, log_level="warning")
