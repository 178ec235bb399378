"""A downstream task for the bundled model: match the first paragraph of a help topic to the rest.

Built from CPython's ``pydoc_data.topics`` with the sentence rules of
:mod:`mmquant.models.calibration`, restricted to one half of the sentence pool so that the
evaluation task shares no sentence with the calibration data:

1. topics in sorted key order, split into paragraphs and sentences exactly as for the pool;
2. a sentence is kept if it passes the pool's filter and its position in the pool has the
   parity of the half (``"evaluation"``: odd, ``"calibration"``: even);
3. the *query* of a topic is the kept sentences of its first paragraph that has any, joined
   with spaces; its *document* is the kept sentences of all later paragraphs; topics without
   both are skipped.

Every query is embedded and compared (cosine) with every document; the matching document of
query ``i`` is document ``i``. Scores: recall@1 (fraction of queries whose own document ranks
first) and the mean reciprocal rank (MRR). A document longer than the model's ``max_length``
(128 tokens) is truncated by the tokenizer, as the model would be used.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from mmquant.models.calibration import (
    _HEADING,
    _PARA_SPLIT,
    _SENT_SPLIT,
    sentence_pool,
)
from mmquant.validation import as_matrix, check_choice

__all__ = ["RetrievalScore", "retrieval_pairs", "retrieval_scores", "evaluate_retrieval"]


@lru_cache(maxsize=2)
def retrieval_pairs(split: str = "evaluation") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(queries, documents)`` of the retrieval task on one half of the pool (see module doc)."""
    check_choice(split, "split", ("calibration", "evaluation"))
    from pydoc_data.topics import topics

    parity = 1 if split == "evaluation" else 0
    index = {s: i for i, s in enumerate(sentence_pool())}
    queries: list[str] = []
    docs: list[str] = []
    for key in sorted(topics):
        paras: list[list[str]] = []
        for para in _PARA_SPLIT.split(topics[key]):
            lines = para.strip("\n").split("\n")
            if any(line.startswith((" ", "\t")) for line in lines):
                continue
            if len(lines) >= 2 and _HEADING.fullmatch(lines[-1].strip()):
                continue
            text = " ".join(line.strip() for line in lines)
            kept = [
                s.strip()
                for s in _SENT_SPLIT.split(text)
                if s.strip() in index and index[s.strip()] % 2 == parity
            ]
            if kept:
                paras.append(kept)
        if len(paras) >= 2:
            queries.append(" ".join(paras[0]))
            docs.append(" ".join(s for p in paras[1:] for s in p))
    return tuple(queries), tuple(docs)


@dataclass(frozen=True)
class RetrievalScore:
    """Recall@1 and mean reciprocal rank of a retrieval run.

    Attributes
    ----------
    recall_at_1 : float
        Fraction of queries whose own document is the most similar.
    mrr : float
        Mean of ``1/rank`` of the own document (rank 1 = most similar).
    ranks : numpy.ndarray
        Rank of each query's own document (ties count against it).
    """

    recall_at_1: float
    mrr: float
    ranks: np.ndarray

    @property
    def queries(self) -> int:
        """Number of queries."""
        return int(self.ranks.size)


def retrieval_scores(queries: Any, documents: Any) -> RetrievalScore:
    """Recall@1 and MRR of matching query ``i`` with document ``i`` by cosine similarity.

    Parameters
    ----------
    queries, documents : array_like, shape (N, d)
        Embeddings (need not be normalised); row ``i`` of each is a matching pair.

    Returns
    -------
    RetrievalScore
        The rank of a query's own document is ``1 +`` the number of other documents at least
        as similar (a tie is a miss).
    """
    q = as_matrix(queries, name="queries").astype(np.float64)
    d = as_matrix(documents, name="documents").astype(np.float64)
    if q.shape != d.shape:
        raise ValueError(f"queries {q.shape} and documents {d.shape} must have the same shape")
    nq = np.linalg.norm(q, axis=1, keepdims=True)
    nd = np.linalg.norm(d, axis=1, keepdims=True)
    if np.any(nq == 0) or np.any(nd == 0):
        raise ValueError("an embedding is all zeros: cosine undefined")
    sim = (q / nq) @ (d / nd).T
    own = np.diag(sim)
    others = sim >= own[:, None]
    np.fill_diagonal(others, False)
    ranks = 1 + others.sum(axis=1)
    return RetrievalScore(
        recall_at_1=float(np.mean(ranks == 1)), mrr=float(np.mean(1.0 / ranks)), ranks=ranks
    )


def evaluate_retrieval(model: Any, split: str = "evaluation") -> RetrievalScore:
    """Retrieval scores of ``model`` (a :class:`~mmquant.models.minilm.MiniLM`, maybe quantized)."""
    queries, docs = retrieval_pairs(split)
    return retrieval_scores(model.encode(list(queries)), model.encode(list(docs)))
