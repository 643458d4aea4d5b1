"""How a `segment_influence` component is saved and loaded (spaCy's `to_disk`/`from_disk`/
`to_bytes`/`from_bytes`), as a base class of `SegmentInfluence`."""

from pathlib import Path
from typing import Any, Dict, Iterable, Optional, TypeVar, Union

import srsly

from ..exceptions import IndexCorruptError, IndexFormatError
from ..influence.encoder_influence import EncoderExplainer
from ..influence.index import SegmentIndex
from ..ner.tagger import CRFEntityRecognizer
from ..storage import checksums
from .settings import check_cfg

Self = TypeVar("Self", bound="SerializedComponent")


class SerializedComponent:
    """The state `segment_influence` saves: its cfg with the weights' fingerprint, the index,
    the CRF surrogate (as bytes, rebuilt on first use) and the embeddings explainer."""

    name: str
    cfg: Dict[str, Any]
    fingerprint: Optional[str]
    index: Optional[SegmentIndex]
    _surrogate: Optional[CRFEntityRecognizer]
    _surrogate_bytes: Optional[bytes]
    _encoder: Optional[EncoderExplainer]

    # Two fields, as spaCy pipes name theirs for `exclude`: "cfg" (settings and the weights'
    # fingerprint) and "index" (the stored gradients, the large part).
    # One manifest (`checksums.json`) digests cfg (which holds the fingerprint), surrogate and
    # the index's own manifest (which digests every index file): files from two writes or
    # two runs do not load together.
    def to_disk(self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        written = []
        if self.index is not None and "index" not in exclude:
            self.index.to_disk(path / "index")
            written.append(f"index/{checksums.MANIFEST}")
        if self._surrogate_bytes is not None and "index" not in exclude:
            (path / "surrogate").write_bytes(self._surrogate_bytes)
            written.append("surrogate")
        if self._encoder is not None and "index" not in exclude:
            (path / "embeddings").write_bytes(self._encoder.to_bytes())
            written.append("embeddings")
        if "cfg" not in exclude:
            srsly.write_json(path / "cfg", {**self.cfg, "fingerprint": self.fingerprint})
            written.append("cfg")
        checksums.write_manifest(path, written)

    def from_disk(self: Self, path: Union[str, Path], *, exclude: Iterable[str] = tuple()) -> Self:
        path = Path(path)
        if not (path / checksums.MANIFEST).exists():
            raise IndexFormatError(
                f"{path}: written by an older version, without the checksums that tie its cfg and index "
                "together; re-index (`segment-influence index`)"
            )
        checksums.verify(path)
        if "cfg" not in exclude:
            cfg = checksums.read_json(path / "cfg")
            if not isinstance(cfg, dict) or "fingerprint" not in cfg:
                raise IndexCorruptError(f"{path / 'cfg'}: not a segment_influence cfg; re-index")
            self.fingerprint = cfg.pop("fingerprint")
            check_cfg({**self.cfg, **cfg}, str(path / "cfg"))
            self.cfg.update(cfg)
        if "index" not in exclude:
            self.index = SegmentIndex.from_disk(path / "index") if (path / "index").exists() else None
            self._surrogate = None
            self._surrogate_bytes = (path / "surrogate").read_bytes() if (path / "surrogate").exists() else None
            stored = path / "embeddings"
            self._encoder = EncoderExplainer.from_bytes(stored.read_bytes()) if stored.exists() else None
        return self

    def to_bytes(self, *, exclude: Iterable[str] = tuple()) -> bytes:
        msg: dict = {}
        if "cfg" not in exclude:
            msg.update(cfg=self.cfg, fingerprint=self.fingerprint)
        if "index" not in exclude:
            msg["index"] = self.index.to_bytes() if self.index is not None else None
            msg["surrogate"] = self._surrogate_bytes
            msg["embeddings"] = self._encoder.to_bytes() if self._encoder is not None else None
        return srsly.msgpack_dumps(msg)

    def from_bytes(self: Self, data: bytes, *, exclude: Iterable[str] = tuple()) -> Self:
        msg = srsly.msgpack_loads(data)
        if "cfg" not in exclude and "cfg" in msg:
            check_cfg({**self.cfg, **msg["cfg"]}, f"segment_influence {self.name!r}: the serialized cfg")
            self.cfg.update(msg["cfg"])
            self.fingerprint = msg["fingerprint"]
        if "index" not in exclude and "index" in msg:
            self.index = SegmentIndex.from_bytes(msg["index"]) if msg["index"] is not None else None
            self._surrogate, self._surrogate_bytes = None, msg.get("surrogate")
            stored = msg.get("embeddings")
            self._encoder = EncoderExplainer.from_bytes(stored) if stored is not None else None
        return self
