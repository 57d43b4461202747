"""How degenerate a CP model is, and how well it fits (Phan et al., ECCV 2020)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._cp import factors_from_cp
from ._kernels import Matricization, gramians, hadamard_except
from ._validate import as_tensor
from .stabilize import term_norms_sq


@dataclass(frozen=True)
class Degeneracy:
    """Degeneracy of a CP model.

    Attributes
    ----------
    measure : float
        ``sum_r ||term_r||^2 / ||[[U]]||^2``: 1 for mutually orthogonal terms, large when
        big terms cancel each other. 1.0 for an all-zero model.
    max_term_norm : float
        Largest Frobenius norm of a rank-one term divided by the norm of the reconstructed
        tensor ``[[U]]`` (not of the data tensor); 0.0 for an all-zero model.
    """

    measure: float
    max_term_norm: float


def _factors(cp) -> list[np.ndarray]:
    """Float64 factors of ``cp`` with its weights folded in (shape taken from the factors)."""
    try:
        shape = tuple(np.shape(f)[0] for f in cp[1])
    except (TypeError, IndexError):
        raise ValueError(
            f"expected a CPTensor or a (weights, factors) pair, got {type(cp).__name__}"
        ) from None
    return factors_from_cp(cp, shape)


def degeneracy(cp) -> Degeneracy:
    """Degeneracy measure of a CPTensor or ``(weights, factors)`` pair, from Gramians only.

    Parameters
    ----------
    cp : CPTensor or (weights, factors)

    Returns
    -------
    Degeneracy
    """
    factors = _factors(cp)
    terms_sq = term_norms_sq(factors)
    model_sq = float(np.sum(hadamard_except(gramians(factors), set())))
    if model_sq <= 0.0 or not np.any(terms_sq):
        return Degeneracy(1.0, 0.0)
    return Degeneracy(
        float(np.sum(terms_sq) / model_sq), float(np.sqrt(np.max(terms_sq) / model_sq))
    )


def relative_error(tensor, cp) -> float:
    """``||tensor - [[cp]]|| / ||tensor||``, computed in float64.

    A zero tensor gives 0.0 when the model is zero too and ``inf`` otherwise.

    Raises
    ------
    ValueError
        When the tensor has NaN or Inf entries or the model does not fit its shape.
    """
    t, _ = as_tensor(tensor)
    factors = factors_from_cp(cp, t.shape)
    mat = Matricization(t.shape)
    resid = mat.matrix(t) - mat.reconstruct(factors)
    num = float(np.linalg.norm(resid))
    den = float(np.linalg.norm(t))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den
