"""Say so when a corpus' entity labels are not the model's: those entities cannot be
indexed or scored, and their tokens count as outside any entity ("O")."""

import warnings
from collections import Counter
from typing import Iterable, List, Sequence

from spacy.tokens import Doc

from ..exceptions import DataError, UnknownLabelWarning

_EXAMPLES = 3


def check_known_labels(docs: Sequence[Doc], labels: Iterable[str], source: str) -> None:
    """UnknownLabelWarning with counts and examples when some gold entities of `docs` have a
    label outside `labels`; DataError when all of them do (a corpus of another label set)."""
    known = set(labels)
    unknown: Counter = Counter()
    examples: List[str] = []
    n_entities = 0
    for i, doc in enumerate(docs):
        for ent in doc.ents:
            n_entities += 1
            if ent.label_ not in known:
                unknown[ent.label_] += 1
                if len(examples) < _EXAMPLES:
                    examples.append(f"{ent.text!r} {ent.label_} in {doc.user_data.get('id', f'doc {i}')}")
    if not unknown:
        return
    counts = ", ".join(f"{label} ({n})" for label, n in unknown.most_common())
    model_labels = ", ".join(sorted(known)) or "none"
    n_unknown = sum(unknown.values())
    if n_unknown == n_entities:
        raise DataError(
            f"{source}: none of its {n_entities} entities has a label the model knows "
            f"(corpus labels: {counts}; model labels: {model_labels})"
        )
    warnings.warn(
        f"{source}: {n_unknown} of {n_entities} entities have labels the model does not know: {counts} "
        f"(model labels: {model_labels}). They are left out and their tokens read as O; "
        f"e.g. {'; '.join(examples)}",
        UnknownLabelWarning,
        stacklevel=3,
    )
