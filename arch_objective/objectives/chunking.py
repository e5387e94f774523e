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

from typing import Iterable, Iterator

import numpy as np

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


def concat_and_split(documents: Iterable[np.ndarray], length: int, *, append_eos: bool,
                     seed: int = 0, max_document_length: int = MAX_DOCUMENT_LENGTH,
                     drop_remainder: bool = False) -> Iterator[np.ndarray]:
  """Chunks of `length` tokens from the concatenated documents (see module docstring)."""
  if length < 1:
    raise ValueError(f"chunk length must be >= 1, found {length}.")
  buffer: list[np.ndarray] = []
  buffered = 0
  for index, doc in enumerate(documents):
    doc = np.asarray(doc, np.int32)
    if len(doc) == 0:
      continue
    doc = select_random_chunk(doc, max_document_length, example_rng(seed, 0, index))
    buffer.append(doc)
    buffered += len(doc)
    if append_eos:
      buffer.append(np.array([EOS_ID], np.int32))
      buffered += 1
    if buffered >= length:
      stream = np.concatenate(buffer)
      whole = (len(stream) // length) * length
      for start in range(0, whole, length):
        yield stream[start:start + length]
      rest = stream[whole:]
      buffer, buffered = ([rest] if len(rest) else []), len(rest)
  if buffered and not drop_remainder:
    yield np.concatenate(buffer)
