"""The `segment_influence` factory (spaCy finds it through the entry point in setup.cfg)."""

from typing import Optional, cast

from spacy.language import Language

from ..influence.curvature import CurvatureName
from ..influence.index import IndexDtype
from .component import SegmentInfluence
from .settings import Granularity, Layers


@Language.factory(
    "segment_influence",
    requires=["doc.ents"],
    assigns=["doc._.influences", "span._.influences"],
    default_config={
        "ner": None,
        "k": 5,
        "curvature": "kfac",
        "damping": 0.001,
        "normalize": True,
        "granularity": "entities",
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 64,
        "refine": False,
        "layers": "head",
        "inits": 4,
    },
)
def make_segment_influence(
    nlp: Language,
    name: str,
    ner: Optional[str],
    k: int,
    curvature: CurvatureName,
    damping: float,
    normalize: bool,
    granularity: Granularity,
    device: str,
    dtype: IndexDtype,
    batch_size: int,
    refine: bool,
    layers: str,
    inits: int,
) -> "SegmentInfluence":
    return SegmentInfluence(
        nlp,
        name,
        ner=ner,
        k=k,
        curvature=curvature,
        damping=damping,
        normalize=normalize,
        granularity=granularity,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        refine=refine,
        layers=cast(Layers, layers),  # a str here, so that check_settings words the error
        inits=inits,
    )
