"""Prototype estimators that `bench/fidelity.py` compares with the product's (exact, kfac,
identity, token, refined) in `validate`: curvatures between K-FAC and exact, and a
one-step Newton estimate of the removal. None of them is used by the package; they are
kept to reproduce BENCHMARKS.md's fidelity rows (and docs/design.md, "Fidelity").

- `block`: the exact Hessian without its emission x dense cross terms (what any
  per-block approximation can reach at best).
- `kfac_exact_damping`: K-FAC's Kronecker factors (`kfac.a` = mean x x^T, `kfac.b` =
  mean(diag q - q q^T)) on the emission block with eigenvalues lambda_A lambda_B + l2 (the
  objective's own damping instead of sqrt(d) added to each factor) and the exact dense block.
- `ekfac`: eigenvalue-corrected K-FAC (George et al. 2018, "Fast Approximate Natural
  Gradient Descent in a Kronecker-factored Eigenbasis"): K-FAC's eigenbasis Q_B (x) Q_A,
  eigenvalues replaced by the exact Hessian's diagonal in that basis (+ l2), exact dense
  block. Still factored at search time.
- `newton`: for the retrained segments only, g_test^T (H - H_S/N)^-1 g_S / N, the one-step
  Newton estimate of theta_-S - theta* with the segment's leverage, linear in the test loss.
"""

import math
from typing import Dict, Mapping

import numpy
import torch

from spacy_segment_influence.fidelity.retrain import FidelitySetup, Retrained
from spacy_segment_influence.ner.crf import one_thread
from spacy_segment_influence.ner.layout import HeadLayout


def prototype_estimates(setup: FidelitySetup, retrained: Mapping[int, Retrained]) -> Dict[str, numpy.ndarray]:
    """Predicted changes of the test losses [T, S] per prototype (`validate`'s
    `extra_estimates`); `newton` is nan outside the retrained segments."""
    layout = HeadLayout.of(setup.ner.head)
    kfac, l2, hessian = setup.kfac, setup.l2, setup.hessian
    n_emission = layout.n_emission
    with one_thread():
        values_a, basis_a = (t.numpy() for t in torch.linalg.eigh(torch.as_tensor(kfac.a)))
        values_b, basis_b = (t.numpy() for t in torch.linalg.eigh(torch.as_tensor(kfac.b)))
    emission = hessian[layout.emission, layout.emission] - l2 * numpy.eye(n_emission)
    block = emission.reshape(layout.n_tags, layout.width, layout.n_tags, layout.width)
    corrected = kronecker_diagonal(block, basis_b, basis_a)
    dense_inverse = numpy.linalg.inv(hessian[layout.dense, layout.dense])
    test, train_dense = setup.g_test.to_dense(), setup.g_train.to_dense()

    def kronecker_solve(vectors: numpy.ndarray, eigenvalues: numpy.ndarray) -> numpy.ndarray:
        out = numpy.empty_like(vectors)
        out[:, layout.emission] = kronecker_eigen_solve(vectors[:, layout.emission], basis_b, basis_a, eigenvalues)
        out[:, layout.dense] = vectors[:, layout.dense] @ dense_inverse
        return out

    cut = hessian.copy()
    cut[layout.emission, layout.dense] = 0
    cut[layout.dense, layout.emission] = 0
    block_solved = numpy.linalg.solve(cut, train_dense.T).T
    kfac_values = numpy.outer(numpy.clip(values_b, 0, None), numpy.clip(values_a, 0, None)) + l2
    unscaled = {
        "block": test @ block_solved.T,
        "kfac_exact_damping": test @ kronecker_solve(train_dense, kfac_values).T,
        "ekfac": test @ kronecker_solve(train_dense, numpy.clip(corrected, 0, None) + l2).T,
    }
    out = {name: values / setup.n_sentences for name, values in unscaled.items()}
    out["newton"] = numpy.full_like(out["block"], math.nan)
    for column, result in retrained.items():
        out["newton"][:, column] = test @ result.leverage_step.numpy()
    return out


def kronecker_diagonal(block: numpy.ndarray, basis_b: numpy.ndarray, basis_a: numpy.ndarray) -> numpy.ndarray:
    """diag of (Q_B (x) Q_A)^T H (Q_B (x) Q_A) as [i, j], for H given as [c, w, d, v]
    (row-major [C, W] parameter layout, so vec = numpy.kron order)."""
    n_tags, width = basis_b.shape[0], basis_a.shape[0]
    rotated = (block.reshape(-1, width) @ basis_a).reshape(n_tags, width, n_tags, width)  # [c, w, d, j]
    rotated = numpy.tensordot(rotated, basis_b, axes=([2], [0]))  # [c, w, j, i]
    return numpy.einsum("cwji,ci,wj->ij", rotated, basis_b, basis_a, optimize=True)


def kronecker_eigen_solve(
    vectors: numpy.ndarray, basis_b: numpy.ndarray, basis_a: numpy.ndarray, eigenvalues: numpy.ndarray
) -> numpy.ndarray:
    """Rows [n, C * W] times ((Q_B (x) Q_A) diag(eigenvalues) (Q_B (x) Q_A)^T)^-1."""
    n_tags, width = basis_b.shape[0], basis_a.shape[0]
    matrices = vectors.reshape(-1, n_tags, width)
    in_basis = numpy.einsum("ncw,ci->niw", matrices, basis_b) @ basis_a / eigenvalues  # [n, i, j]
    back = numpy.einsum("nij,ci->ncj", in_basis, basis_b) @ basis_a.T
    return back.reshape(len(vectors), -1)
