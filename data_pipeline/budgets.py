"""Exact, nested token budgets for ablations.

One seeded permutation of the documents fixes their order; a budget of N tokens takes
the shortest prefix of that order holding at least N tokens. Every smaller budget is
therefore a subset of every larger one, and the count exceeds N by less than the
length of the last document taken.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from msm_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class BudgetSelection:
    indices: np.ndarray  # selected document indices, in permutation order
    requested_tokens: int
    selected_tokens: int
    seed: int

    def to_dict(self) -> dict:
        return {"requested_tokens": self.requested_tokens, "selected_tokens": self.selected_tokens,
                "selected_documents": int(len(self.indices)), "seed": self.seed}


def document_order(num_documents: int, seed: int) -> np.ndarray:
    """The one permutation every budget of this seed is a prefix of."""
    return np.random.default_rng([seed, 7]).permutation(num_documents)


def select_budget(lengths: list[int] | np.ndarray, budget_tokens: int, seed: int) -> BudgetSelection:
    """The shortest prefix of `document_order` with at least `budget_tokens` tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if budget_tokens <= 0:
        raise UserError(f"--budget-tokens must be positive, got {budget_tokens}")
    total = int(lengths.sum())
    if budget_tokens > total:
        raise UserError(f"budget of {budget_tokens} tokens exceeds the {total} tokens of the inputs")
    order = document_order(len(lengths), seed)
    cumulative = np.cumsum(lengths[order])
    take = int(np.searchsorted(cumulative, budget_tokens, side="left")) + 1
    return BudgetSelection(indices=order[:take], requested_tokens=budget_tokens,
                           selected_tokens=int(cumulative[take - 1]), seed=seed)
