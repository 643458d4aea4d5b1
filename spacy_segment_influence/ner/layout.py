"""The flat order of the CRF head's parameters: one owner for a storage contract.

Every flat head vector (the head's parameters, a segment's gradient, a row or column of
the exact Hessian, which an exact index saves) is laid out as

    [W | b] row-major [C, E + 1], then transitions [C, C] row-major, start [C], end [C].

The emission block [W | b] comes first, so that a factored gradient sum_t r_t [h_t, 1]^T
flattens in numpy.kron order (index c * (E + 1) + e); the rest is the "dense" block.
Code that needs an offset into such a vector asks a `HeadLayout` for it.
"""

from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy
import torch


class HeadParameters(NamedTuple):
    """A flat head vector split into its blocks (views, not copies)."""

    emission: torch.Tensor  # [C, E + 1]: W with b as its last column
    transitions: torch.Tensor  # [C, C]
    start: torch.Tensor  # [C]
    end: torch.Tensor  # [C]


@dataclass(frozen=True)
class HeadLayout:
    """Sizes and offsets of the flat layout for C = `n_tags` tags and an emission row
    of `width` = E + 1 entries. `n_dense` is the size of the block after the emission
    block: C^2 + 2C for a CRF head (`for_head`); factored gradients and curvatures that
    are not tied to a CRF (tests, benchmarks) may carry any dense block."""

    n_tags: int
    width: int
    n_dense: int

    @classmethod
    def for_head(cls, n_tags: int, n_features: int) -> "HeadLayout":
        """The layout of a CRF head over `n_features` token features."""
        return cls(n_tags, n_features + 1, n_tags * n_tags + 2 * n_tags)

    @classmethod
    def spanning(cls, n_tags: int, width: int, n_params: int) -> "HeadLayout":
        """The layout of `n_params` entries whose emission block is [n_tags, width]."""
        n_dense = n_params - n_tags * width
        if n_dense < 0:
            raise ValueError(f"{n_params} parameters cannot hold an emission block of {n_tags} x {width}")
        return cls(n_tags, width, n_dense)

    @classmethod
    def of(cls, head) -> "HeadLayout":
        """The layout of a `CRFHead` (anything with `n_tags` and `n_features`)."""
        return cls.for_head(head.n_tags, head.n_features)

    @property
    def n_features(self) -> int:
        return self.width - 1

    @property
    def n_emission(self) -> int:
        return self.n_tags * self.width

    @property
    def n_params(self) -> int:
        return self.n_emission + self.n_dense

    @property
    def emission(self) -> slice:
        return slice(0, self.n_emission)

    @property
    def dense(self) -> slice:
        return slice(self.n_emission, self.n_params)

    @property
    def transitions(self) -> slice:
        self._check_crf()
        return slice(self.n_emission, self.n_emission + self.n_tags * self.n_tags)

    @property
    def start(self) -> slice:
        first = self.transitions.stop
        return slice(first, first + self.n_tags)

    @property
    def end(self) -> slice:
        first = self.start.stop
        return slice(first, first + self.n_tags)

    def _check_crf(self) -> None:
        if self.n_dense != self.n_tags * self.n_tags + 2 * self.n_tags:
            raise ValueError(f"a dense block of {self.n_dense} is not a CRF head's over {self.n_tags} tags")

    def flatten(self, parameters: HeadParameters) -> torch.Tensor:
        """The blocks as one vector (differentiable)."""
        emission, transitions, start, end = parameters
        return torch.cat([emission.reshape(-1), transitions.reshape(-1), start, end])

    def flatten_module(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        transitions: torch.Tensor,
        start: torch.Tensor,
        end: torch.Tensor,
    ) -> torch.Tensor:
        """A `CRFHead`'s tensors (or their gradients) [W, b, T, start, end] as one vector."""
        emission = torch.cat([weight, bias.unsqueeze(1)], dim=1)
        return self.flatten(HeadParameters(emission, transitions, start, end))

    def unflatten(self, flat: torch.Tensor) -> HeadParameters:
        """A flat vector's blocks, as views of it."""
        if flat.shape[-1] != self.n_params:
            raise ValueError(f"a flat head vector of {flat.shape[-1]} entries, the layout has {self.n_params}")
        return HeadParameters(
            flat[self.emission].reshape(self.n_tags, self.width),
            flat[self.transitions].reshape(self.n_tags, self.n_tags),
            flat[self.start],
            flat[self.end],
        )

    def emission_rows(self, flat: numpy.ndarray) -> numpy.ndarray:
        """The emission block of flat rows [n, P] as [n, C, E + 1]."""
        return flat[..., self.emission].reshape(*flat.shape[:-1], self.n_tags, self.width)

    def hessian_indices(self) -> Tuple[numpy.ndarray, numpy.ndarray]:
        """Positions in the flat layout of the closed-form Hessian's statistics: for the
        extended emission statistics [C, E + 3] (features, bias, first-token and
        last-token indicators, whose weights are the start and end scores), and for the
        transitions [C * C]."""
        c = numpy.arange(self.n_tags)
        extended = numpy.empty((self.n_tags, self.width + 2), dtype=numpy.int64)
        extended[:, : self.width] = numpy.arange(self.n_emission).reshape(self.n_tags, self.width)
        extended[:, self.width] = self.start.start + c
        extended[:, self.width + 1] = self.end.start + c
        return extended.reshape(-1), numpy.arange(self.transitions.start, self.transitions.stop)
