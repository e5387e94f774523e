"""T5 span corruption (the paper's MLM), noise density 0.15 and mean span length 3.

A chunk of raw tokens is split into alternating non-noise and noise spans (always
starting with non-noise). The inputs keep the non-noise tokens and replace each noise
span by one sentinel; the targets hold each noise span after the sentinel that
replaced it. Sentinels count down from the top of the vocabulary: `<extra_id_0>` is
`vocab_size - 1` (32099 for T5's 32100 ids), `<extra_id_1>` the next one down.
Both sides end with EOS (1). No EOS separates the concatenated documents.

Worked example (sentinel_start 99, noise spans [2, 3] and [6]):
  tokens       10 11 12 13 14 15 16 17
  noise mask    0  0  1  1  0  0  1  0
  inputs       10 11 99 14 15 98 17  1
  targets      99 12 13 98 16 97  1

Lengths (`random_spans_helper`): 568 raw tokens give 85 noise tokens in 28 spans, so
inputs 483 + 28 + EOS = 512 and targets 85 + 28 + EOS = 114.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import numpy as np

from arch_objective.errors import UserError
from arch_objective.objectives import chunking

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0
_SALT = 1


def _counts(length: int, noise_density: float, mean_noise_span_length: float
            ) -> tuple[int, int]:
  """(noise tokens, noise spans) of a chunk, as `random_spans_noise_mask` uses them."""
  num_noise = int(np.clip(round(length * noise_density), 1, max(length - 1, 1)))
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, num_spans


def random_spans_helper(inputs_length: int = 512, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                        ) -> tuple[int, int]:
  """(raw tokens per chunk, targets length) so the inputs fill `inputs_length` with EOS.

  `random_spans_helper(512) == (568, 114)`.
  """
  def lengths(tokens_length):
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  if inputs_length < 2:
    raise UserError(f"span corruption needs inputs_length >= 2, found {inputs_length}.")
  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  inputs, targets = lengths(tokens_length)
  if noise_density == 0.5 and targets > inputs:
    tokens_length, targets = tokens_length - 1, targets - 1
  return tokens_length, targets


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator
                         ) -> np.ndarray:
  """Split `num_items` into `num_segments` non-empty parts uniformly at random."""
  first_in_segment = np.zeros(num_items, np.int32)
  boundaries = np.arange(num_items - 1) < (num_segments - 1)
  first_in_segment[1:] = rng.permutation(boundaries)
  segment_id = np.cumsum(first_in_segment)
  return np.bincount(segment_id, minlength=num_segments).astype(np.int32)


def random_spans_noise_mask(length: int, rng: np.random.Generator,
                            noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> np.ndarray:
  """Boolean noise mask `[length]`: round(length * density) noise tokens in
  round(noise / mean_span) spans, interleaved with as many non-noise spans, starting
  with non-noise."""
  orig_length = length
  length = max(length, 2)
  num_noise, num_spans = _counts(length, noise_density, mean_noise_span_length)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  nonnoise_lengths = _random_segmentation(length - num_noise, num_spans, rng)
  interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
  span_id = np.repeat(np.arange(2 * num_spans), interleaved)
  return (span_id % 2 == 1)[:orig_length]


def noise_span_to_unique_sentinel(tokens: np.ndarray, noise_mask: np.ndarray,
                                  sentinel_start: int) -> np.ndarray:
  """Replace each run of masked tokens by one sentinel, counting down from
  `sentinel_start`."""
  prev_is_noise = np.concatenate([[False], noise_mask[:-1]])
  first = noise_mask & ~prev_is_noise
  subsequent = noise_mask & prev_is_noise
  sentinels = sentinel_start + 1 - np.cumsum(first)
  out = np.where(first, sentinels, tokens)
  return out[~subsequent].astype(np.int32)


def corrupt(tokens: np.ndarray, rng: np.random.Generator, sentinel_start: int,
            noise_density: float = NOISE_DENSITY,
            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
            eos_id: int = chunking.EOS_ID) -> dict[str, np.ndarray]:
  """One span-corruption example: `{'inputs', 'targets'}`, both ending in EOS."""
  tokens = np.asarray(tokens, np.int32)
  mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
  inputs = noise_span_to_unique_sentinel(tokens, mask, sentinel_start)
  targets = noise_span_to_unique_sentinel(tokens, ~mask, sentinel_start)
  eos = np.array([eos_id], np.int32)
  return {"inputs": np.concatenate([inputs, eos]), "targets": np.concatenate([targets, eos])}


def check_sentinels(chunk_length: int, num_extra_ids: int, noise_density: float = NOISE_DENSITY,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH):
  """Raise if the vocabulary's extra ids cannot name every span of a chunk."""
  _, spans = _counts(max(chunk_length, 2), noise_density, mean_noise_span_length)
  if num_extra_ids < spans + 1:
    raise UserError(
        f"span corruption of {chunk_length}-token chunks needs {spans + 1} sentinel ids "
        f"(extra ids) but the vocabulary has {num_extra_ids}; use a vocabulary with "
        f"extra_ids >= {spans + 1} (the T5 vocabulary has 100).")


def span_corruption_positioned(documents: Iterable[tuple[np.ndarray, Any]], inputs_length: int,
                               sentinel_start: int, *, seed: int = 0, num_extra_ids: int = 100,
                               noise_density: float = NOISE_DENSITY,
                               mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                               start: Optional[dict] = None) -> Iterator[chunking.Tagged]:
  """Examples `{'inputs' [<= inputs_length], 'targets' [<= targets_length]}` from
  (document, source position) pairs.

  Documents are concatenated without EOS and cut into `random_spans_helper` chunks;
  each example is tagged with its chunk's `where` (`chunking.concat_and_split_positioned`)
  and `start` resumes there.
  """
  chunk_length, _ = random_spans_helper(inputs_length, noise_density, mean_noise_span_length)
  check_sentinels(chunk_length, num_extra_ids, noise_density, mean_noise_span_length)
  chunks = chunking.concat_and_split_positioned(documents, chunk_length, append_eos=False,
                                                seed=seed, start=start)
  for chunk, where in chunks:
    example = corrupt(chunk, chunking.example_rng(seed, _SALT, where["chunk"]), sentinel_start,
                      noise_density, mean_noise_span_length)
    yield chunking.tag(example, where)
