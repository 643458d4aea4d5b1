"""The `crf_ner` model: an encoder (tok2vec or transformer listener) feeding a torch CRF
head through thinc's PyTorchWrapper. The head holds the emission layer W h + b and the
CRF's transition, start and end scores; the CRF math lives in `crf.py`."""

import pickle
from io import BytesIO
from typing import Any, List, Optional, Type

import torch
from spacy.tokens import Doc
from spacy.util import registry
from thinc.api import Model, PyTorchWrapper_v3, chain
from thinc.types import ArgsKwargs, Floats2d

from ..exceptions import PipelineError, SegmentInfluenceError


class CRFHead(torch.nn.Module):
    """Emission layer plus transition/start/end scores over C tags.

    Sized lazily: created empty, then `resize()`d once the feature width and tag set are
    known, or resized to the shapes of a stored state dict on load.
    """

    def __init__(self, n_features: int = 0, n_tags: int = 0):
        super().__init__()
        self.resize(n_features, n_tags)

    def resize(self, n_features: int, n_tags: int) -> None:
        weight = torch.empty(n_tags, n_features)
        if n_features and n_tags:
            torch.nn.init.xavier_uniform_(weight)
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(torch.zeros(n_tags))
        self.transitions = torch.nn.Parameter(torch.zeros(n_tags, n_tags))
        self.start = torch.nn.Parameter(torch.zeros(n_tags))
        self.end = torch.nn.Parameter(torch.zeros(n_tags))

    @property
    def n_tags(self) -> int:
        return self.weight.shape[0]

    @property
    def n_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[N, E] token features -> [N, C] emission scores W h + b."""
        return torch.nn.functional.linear(features, self.weight, self.bias)


def load_state(data: bytes, device: Any, what: str, error: Type[SegmentInfluenceError] = PipelineError) -> Any:
    """`torch.load` restricted to tensors and plain containers (`weights_only=True`, not left
    to torch's default, which is False before torch 2.6): a crafted file cannot run code.
    `error` naming `what` for anything else."""
    try:
        return torch.load(BytesIO(data), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise error(f"{what}: not a stored tensor state, refused to load it ({reason})") from None


def _deserialize_head(head: CRFHead, state_bytes: bytes, device: Any) -> CRFHead:
    state = load_state(state_bytes, device, "crf_ner's CRF head")
    n_tags, n_features = state["weight"].shape
    head.resize(n_features, n_tags)
    head.load_state_dict(state)
    return head.to(device)


def _to_torch_features(model: Model, X: Floats2d, is_train: bool):
    from thinc.api import torch2xp, xp2torch

    X_torch = xp2torch(X, requires_grad=is_train)
    return ArgsKwargs(args=(X_torch,), kwargs={}), lambda dX: torch2xp(dX.args[0])


@registry.architectures("spacy-segment-influence.CRFTagger.v1")
def build_crf_tagger(
    tok2vec: Model[List[Doc], List[Floats2d]], nO: Optional[int] = None
) -> Model[List[Doc], List[Floats2d]]:
    """Encoder -> per-token emission scores [n_tokens, n_tags] for each doc. The CRF scores
    that are not per token (transitions, start, end) live in the same torch module."""
    head = _build_crf_head(nO)
    model: Model[List[Doc], List[Floats2d]] = chain(tok2vec, head)
    model.set_ref("tok2vec", tok2vec)
    model.set_ref("head", head)
    return model


def _build_crf_head(nO: Optional[int] = None) -> Model[List[Floats2d], List[Floats2d]]:
    wrapper = PyTorchWrapper_v3(
        CRFHead(),
        convert_inputs=_to_torch_features,
        deserialize_model=_deserialize_head,
    )
    return Model(
        "crf_head",
        _head_forward,
        init=_head_init,
        layers=[wrapper],
        dims={"nI": None, "nO": nO},
    )


def torch_head(model: Model) -> CRFHead:
    """The torch module inside a `crf_tagger` model (or its `crf_head` node)."""
    head = model.get_ref("head") if model.has_ref("head") else model
    return head.layers[0].shims[0]._model


def _head_init(model: Model, X: Optional[List[Floats2d]] = None, Y: Any = None) -> None:
    if X is not None and len(X):
        model.set_dim("nI", X[0].shape[1])
    if not model.has_dim("nI") or not model.has_dim("nO"):
        raise PipelineError("crf_head needs its input width (nI) and number of tags (nO)")
    torch_head(model).resize(model.get_dim("nI"), model.get_dim("nO"))


def _head_forward(model: Model, X: List[Floats2d], is_train: bool):
    if not X:
        return [], lambda dY: []
    lengths = model.ops.asarray1i([len(x) for x in X])
    Y_flat, backprop_flat = model.layers[0](model.ops.flatten(X), is_train)

    def backprop(dY: List[Floats2d]) -> List[Floats2d]:
        return model.ops.unflatten(backprop_flat(model.ops.flatten(dY)), lengths)

    return model.ops.unflatten(Y_flat, lengths), backprop
