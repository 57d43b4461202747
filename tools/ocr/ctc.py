"""Greedy CTC decoding and the two OCR scores (exact match, character accuracy).

    texts = greedy_decode(log_probs.argmax(-1), CHARSET)   # indices (T, N) or (N, T) with time_axis
    exact, chars = scores(texts, labels)

Class 0 is the blank and class k >= 1 is ``charset[k - 1]`` (the layout of tools/ocr/model.py
and of PP-OCR's recognizer, whose charset is its dictionary plus a space).
Character accuracy of one line is ``max(0, 1 - edit_distance(prediction, label) / len(label))``,
averaged over lines.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def greedy_decode(indices: np.ndarray, charset: Sequence[str], *, time_axis: int = 0) -> list[str]:
    """Best-path decoding: per line, merge repeated indices, drop blanks (0), map k to charset[k-1]."""
    seqs = np.moveaxis(np.asarray(indices), time_axis, 1)  # N x T
    keep = np.ones_like(seqs, dtype=bool)
    keep[:, 1:] = seqs[:, 1:] != seqs[:, :-1]
    keep &= seqs != 0
    return ["".join(charset[k - 1] for k in row[mask]) for row, mask in zip(seqs, keep)]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def scores(predictions: Sequence[str], labels: Sequence[str]) -> tuple[float, float]:
    """(exact-match rate, mean character accuracy) of predictions against labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    exact = np.mean([p == t for p, t in zip(predictions, labels)])
    chars = np.mean([max(0.0, 1.0 - edit_distance(p, t) / max(len(t), 1)) for p, t in zip(predictions, labels)])
    return float(exact), float(chars)
