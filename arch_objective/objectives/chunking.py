"""Turning documents into fixed-length chunks, and per-example random generators.

A stream of documents (token id arrays) is concatenated, optionally with EOS after
each document, and split into consecutive chunks of `length` tokens; the last chunk
of a finite stream may be shorter. Example (length 4, append_eos=True, EOS = 1):

  documents  [5 6 7] [8 9] [10 11 12 13 14]
  stream     5 6 7 1 8 9 1 10 11 12 13 14 1
  chunks     [5 6 7 1] [8 9 1 10] [11 12 13 14] [1]

Documents longer than `max_document_length` are first cut to one random window of
that length (t5's `select_random_chunk`, 65,536 tokens for C4).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np

from arch_objective.errors import UserError

EOS_ID = 1
MAX_DOCUMENT_LENGTH = 65536


def example_rng(seed: int, salt: int, index: int) -> np.random.Generator:
  """The generator of example `index` in stream `salt` under `seed` (stateless)."""
  return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(salt), int(index)])


def select_random_chunk(tokens: np.ndarray, max_length: int, rng: np.random.Generator
                        ) -> np.ndarray:
  """A random window of at most `max_length` tokens (the whole document if shorter)."""
  if len(tokens) <= max_length:
    return tokens
  start = int(rng.integers(0, len(tokens) - max_length + 1))
  return tokens[start:start + max_length]


class Tagged(dict):
  """A feature dict that also carries `where`: the resume position of the example (or
  row) it is, as the positioned pipeline tracks it. Anything reading it as a dict sees
  only the features."""
  where: Optional[dict] = None


def tag(features: dict, where: Optional[dict]) -> Tagged:
  out = Tagged(features)
  out.where = where
  return out


def concat_and_split_positioned(documents: Iterable[tuple[np.ndarray, Any]],
                                length: Union[int, Callable[[int], int]], *,
                                append_eos: bool, seed: int = 0,
                                max_document_length: int = MAX_DOCUMENT_LENGTH,
                                drop_remainder: bool = False, start: Optional[dict] = None
                                ) -> Iterator[tuple[np.ndarray, dict]]:
  """Chunks of `length` tokens from the concatenated documents (see module docstring),
  read from (document, source position) pairs and yielded as (chunk, where).

  `where = {"source": ..., "doc": d, "skip": s, "chunk": k}`: chunk k starts `s` tokens
  into document d (counted from the stream's start; its tokens after the random window
  and EOS), which the source reads again from position `source`. Reading the documents
  again from that source position with `start=where` yields chunk k and everything
  after it exactly as the uninterrupted stream did: the only state a resume needs.

  `length` may be a function of the chunk index k (UL2 cuts each chunk to the length of
  the denoiser drawn for it, a stateless draw keyed by k, so a resume at chunk k cuts
  the same lengths).
  """
  length_of = length if callable(length) else (lambda k: length)
  if not callable(length) and length < 1:
    raise UserError(f"chunk length must be >= 1, found {length}.")
  index = int(start["doc"]) if start else 0
  skip = int(start["skip"]) if start else 0
  chunk_index = int(start["chunk"]) if start else 0
  wanted = _chunk_length(length_of, chunk_index)    # the next chunk's length
  pieces: list[np.ndarray] = []
  # (offset in the buffer, source position, doc index, tokens of the doc before it)
  marks: list[tuple[int, Any, int, int]] = []
  buffered = 0
  for doc, source in documents:
    doc = np.asarray(doc, np.int32)
    if len(doc) == 0:
      index += 1
      continue
    doc = select_random_chunk(doc, max_document_length, example_rng(seed, 0, index))
    if append_eos:
      doc = np.concatenate([doc, np.array([EOS_ID], np.int32)])
    base = 0
    if skip:
      doc, base, skip = doc[skip:], skip, 0
    marks.append((buffered, source, index, base))
    pieces.append(doc)
    buffered += len(doc)
    index += 1
    if buffered >= wanted:
      stream = np.concatenate(pieces)
      begin, m = 0, 0
      while len(stream) - begin >= wanted:
        while m + 1 < len(marks) and marks[m + 1][0] <= begin:
          m += 1
        offset, src, doc_index, doc_base = marks[m]
        yield stream[begin:begin + wanted], {"source": src, "doc": doc_index,
                                             "skip": doc_base + begin - offset,
                                             "chunk": chunk_index}
        begin += wanted
        chunk_index += 1
        wanted = _chunk_length(length_of, chunk_index)
      whole = begin
      rest = stream[whole:]
      while m + 1 < len(marks) and marks[m + 1][0] <= whole:
        m += 1
      if len(rest):
        offset, src, doc_index, doc_base = marks[m]
        marks = [(0, src, doc_index, doc_base + whole - offset)] + [
            (o - whole, s, i, b) for o, s, i, b in marks[m + 1:]]
        pieces = [rest]
      else:
        marks, pieces = [], []
      buffered = len(rest)
  if buffered and not drop_remainder:
    offset, src, doc_index, doc_base = marks[0]
    yield np.concatenate(pieces), {"source": src, "doc": doc_index, "skip": doc_base,
                                   "chunk": chunk_index}


def _chunk_length(length_of: Callable[[int], int], index: int) -> int:
  length = int(length_of(index))
  if length < 1:
    raise UserError(f"chunk length must be >= 1, found {length} for chunk {index}.")
  return length
