"""Calibration text: English sentences from CPython's own documentation (``pydoc_data.topics``).

Every CPython ships ``pydoc_data.topics.topics``, a dict from help-topic name to its text, so the
calibration set needs no download. The rule that turns it into sentences (deterministic for a
given CPython version; the text differs slightly between versions):

1. topics in sorted key order;
2. each topic split into paragraphs at blank lines; a paragraph is dropped if any of its lines
   starts with a space (code samples, grammar rules, tables) or if its last line is only
   ``* = - ~ ^`` characters (a heading);
3. the lines of a paragraph joined with single spaces and split into sentences after ``.``, ``!``
   or ``?`` followed by white space and an upper-case letter or a quote;
4. a sentence is kept if it ends with ``.``, has 8 to 40 words and contains no ``::=``;
5. duplicates removed (first occurrence kept): the *pool*;
6. the pool is split in two disjoint halves, ``"calibration"`` = even positions and
   ``"evaluation"`` = odd positions; ``n`` sentences are taken evenly spaced from the half:
   indices ``floor(j·M/n)`` for ``j = 0..n-1`` (``M`` sentences in the half).
"""

from __future__ import annotations

import re
from functools import lru_cache

from mmquant.validation import check_choice, check_int

__all__ = ["sentence_pool", "calibration_sentences"]

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"“])")
_HEADING = re.compile(r"[*=\-~^]+")
_PARA_SPLIT = re.compile(r"\n\s*\n")
MIN_WORDS = 8
MAX_WORDS = 40


@lru_cache(maxsize=1)
def sentence_pool() -> tuple[str, ...]:
    """Every usable sentence of ``pydoc_data.topics``, in the documented order (no duplicates)."""
    from pydoc_data.topics import topics

    seen: dict[str, None] = {}
    for key in sorted(topics):
        for para in _PARA_SPLIT.split(topics[key]):
            lines = para.strip("\n").split("\n")
            if any(line.startswith((" ", "\t")) for line in lines):
                continue
            if len(lines) >= 2 and _HEADING.fullmatch(lines[-1].strip()):
                continue
            text = " ".join(line.strip() for line in lines)
            for s in _SENT_SPLIT.split(text):
                s = s.strip()
                if s.endswith(".") and MIN_WORDS <= len(s.split()) <= MAX_WORDS and "::=" not in s:
                    seen.setdefault(s, None)
    return tuple(seen)


def calibration_sentences(n: int = 64, split: str = "calibration") -> list[str]:
    """``n`` deterministic sentences from CPython's documentation (see the module docstring).

    Parameters
    ----------
    n : int
        Number of sentences (at most the size of the half, about 540 on CPython 3.11).
    split : {"calibration", "evaluation"}
        Which disjoint half of the pool to draw from (even or odd positions).

    Returns
    -------
    list of str
    """
    n = check_int(n, "n", 1)
    check_choice(split, "split", ("calibration", "evaluation"))
    pool = sentence_pool()
    half = pool[0::2] if split == "calibration" else pool[1::2]
    if n > len(half):
        raise ValueError(f"n must be at most {len(half)} (sentences in the {split} half), got {n}")
    m = len(half)
    return [half[(j * m) // n] for j in range(n)]
