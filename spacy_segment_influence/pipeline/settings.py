"""The settings of `segment_influence`: their types (spaCy validates a config's `Literal`s)
and the checks that word a mistake before any work is done, or a damaged stored cfg."""

from typing import Any, Dict, Literal, Tuple, get_args

from ..exceptions import ConfigError, IndexCorruptError
from ..influence.curvature import CURVATURES, curvature_class
from ..influence.encoder_influence import check_inits
from ..influence.index import DTYPES

Granularity = Literal["entities", "tokens"]
GRANULARITIES = get_args(Granularity)
# which parameters the gradients are taken over: the CRF head at the trained weights, or the
# encoder's hash-embedding rows at the initial weights (`encoder_influence`; BENCHMARKS.md "LDS")
Layers = Literal["head", "embeddings"]
LAYERS = get_args(Layers)


# More supporters and opposers per entity than a reader can use; a larger k is a typo
K_MAX = 1000


def check_k(k: Any, where: str) -> None:
    """ConfigError unless k is an integer in 1..K_MAX (1.5, "5", True and 100000 are not)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= K_MAX:
        raise ConfigError(f"{where}: k must be an integer from 1 to {K_MAX}, got {k!r}")


# the settings `check_settings` judges
SETTINGS = ("curvature", "granularity", "k", "dtype", "refine", "layers", "inits")


def check_settings(
    *, curvature: str, granularity: str, k: int, dtype: str, refine: bool, layers: str = "head", inits: int = 4
) -> None:
    """ConfigError for settings `segment_influence` does not accept, before any work is done
    (spaCy's own validation of a config's Literal values gives a less readable message)."""
    if curvature not in CURVATURES:
        raise ConfigError(f"segment_influence: curvature must be one of {tuple(CURVATURES)}, got {curvature!r}")
    if granularity not in GRANULARITIES:
        raise ConfigError(f"segment_influence: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    check_k(k, "segment_influence")
    if dtype not in DTYPES:
        raise ConfigError(f"segment_influence: dtype must be one of {DTYPES}, got {dtype!r}")
    if refine and not curvature_class(curvature).refinable:
        raise ConfigError(f"segment_influence: refine needs curvature 'exact', got {curvature!r}")
    if layers not in LAYERS:
        raise ConfigError(f"segment_influence: layers must be one of {LAYERS}, got {layers!r}")
    if layers == "embeddings" and (refine or granularity != "entities"):
        raise ConfigError("segment_influence: layers 'embeddings' indexes gold entities and has no refine")
    check_inits(inits, "segment_influence")


# The types of the component's settings, as its factory declares them; checked when a
# stored cfg is loaded (it is data, not code spaCy validated).
_CFG_TYPES: Dict[str, Tuple[type, ...]] = {
    "ner": (str,),
    "k": (int,),
    "curvature": (str,),
    "damping": (int, float),
    "normalize": (bool,),
    "granularity": (str,),
    "dtype": (str,),
    "batch_size": (int,),
    "refine": (bool,),
    "layers": (str,),
    "inits": (int,),
}


def check_cfg(cfg: Dict[str, Any], where: str) -> None:
    """IndexCorruptError naming `where` when a stored cfg has a setting of the wrong type or
    value (`k = "5"`, `dtype = "float33"`, `k = 0`)."""
    for key, types in _CFG_TYPES.items():
        value = cfg.get(key)
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            raise IndexCorruptError(f"{where}: {key} = {value!r} is not a {types[0].__name__}; re-index")
    if cfg["batch_size"] < 1 or cfg["damping"] < 0:
        raise IndexCorruptError(f"{where}: batch_size must be >= 1 and damping >= 0; re-index")
    try:
        check_settings(**{key: cfg[key] for key in SETTINGS})
    except ConfigError as err:
        raise IndexCorruptError(f"{where}: {err}; re-index") from None
