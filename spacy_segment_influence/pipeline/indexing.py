"""The index-a-pipeline recipe, shared by `segment-influence index` and the Python API: a
copy of a trained pipeline with an indexed `segment_influence` component, written all at
once or not at all (`storage.atomic.replaced_dir`)."""

from pathlib import Path
from typing import Any, Optional, Union, cast

import spacy
from spacy.language import Language

from ..storage.atomic import replaced_dir
from .component import SegmentInfluence
from .settings import SETTINGS, check_settings

# Who `index` names as the writer of its output directory in the marker (`atomic.MARKER`)
INDEX_OWNER = "segment-influence index"


def index_pipeline(
    model_dir: Union[str, Path],
    train_path: Union[str, Path],
    output_dir: Union[str, Path],
    *,
    dev_path: Optional[Union[str, Path]] = None,
    ray_address: Optional[str] = None,
    ray_workers: Optional[int] = None,
    **settings: Any,
) -> SegmentInfluence:
    """Write `model_dir` plus a `segment_influence` component indexing `train_path` to
    `output_dir`; `settings` are the component's (curvature, damping, normalize, granularity,
    layers, inits, k, ner, dtype, device). `output_dir` is replaced only when everything succeeded,
    and only when it is new, empty or was written by `index` (never a directory holding the
    inputs). Returns the indexed component."""
    inputs = [model_dir, train_path, *([dev_path] if dev_path is not None else [])]
    with replaced_dir(output_dir, INDEX_OWNER, inputs) as building:
        given = {**(Language.get_factory_meta("segment_influence").default_config or {}), **settings}
        check_settings(**{name: given[name] for name in SETTINGS})
        # an index MODEL_DIR already has is replaced, so it is not read: it may be damaged or outdated
        nlp = spacy.load(model_dir, exclude=["segment_influence"])
        component = cast(SegmentInfluence, nlp.add_pipe("segment_influence", config=settings))
        component.initialize(
            lambda: [],
            nlp=nlp,
            train_path=train_path,
            dev_path=dev_path,
            ray_address=ray_address,
            ray_workers=ray_workers,
        )
        component.check_index()
        nlp.to_disk(building)
    return component
