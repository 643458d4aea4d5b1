"""Registered training callbacks that the shipped configs use."""

from typing import Callable

from spacy.language import Language
from spacy.util import registry


@registry.callbacks("spacy-segment-influence.resolved_optimizer.v1")
def resolved_optimizer() -> Callable[[Language], Language]:
    """A `[training.before_to_disk]` callback: the saved pipeline's config gets the
    optimizer's settings with their variables filled in (`total_steps =
    ${training.max_steps}` becomes the number), since `nlp.resume_training()` resolves
    the optimizer without the rest of the config."""

    def before_to_disk(nlp: Language) -> Language:
        nlp.config["training"]["optimizer"] = nlp.config.interpolate()["training"]["optimizer"]
        return nlp

    return before_to_disk
