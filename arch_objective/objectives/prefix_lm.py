"""Prefix LM rows: one chunk per row for the decoder, two per row for the encoder-decoder.

Both read chunks of `length` tokens cut from documents with EOS at each document end
(the full-LM chunks), padded with 0 to `length`. The split point is uniform in
[1, length - 1] and keyed per row.

Decoder (ND:PLM, spec §2.4), length 6, chunk [5 6 7 8 9 1], split 2:
  decoder_target_tokens    5 6 7 8 9 1
  decoder_input_tokens     0 5 6 7 8 9
  decoder_causal_attention 1 1 1 0 0 0     positions <= split: the prefix plus one
  decoder_loss_weights     0 0 1 1 1 1     positions >= split (and not padding)

Encoder-decoder (ED:PLM, spec §2.5), length 4, chunks A = [5 6 7 8], B = [9 10 11 1],
split i = 1:
  encoder_input_tokens  A[:1] ++ B[:3] = 5 9 10 11    encoder_segment_ids 1 2 2 2
  decoder_target_tokens A[1:] ++ B[3:] = 6 7 8 1      decoder_segment_ids 1 1 1 2
  decoder_input_tokens                   0 6 7 0      (shifted, 0 at each segment start)
  encoder_positions 0 0 1 2, decoder_positions 0 1 2 0, decoder_loss_weights 1 1 1 1
so a row holds two examples and as many tokens as two decoder rows.

As task features (t5's `prefix_lm`, what the seqio tasks emit) each chunk is the pair
`{'inputs': chunk[:split], 'targets': chunk[split:]}` (`prefix_lm_example`): the ED row
above is the packing of (A[:1], A[1:]) and (B[:3], B[3:]) into 4 + 4 tokens, which
seqio's `EncDecFeatureConverter` does at `{'inputs': 4, 'targets': 4}` because the two
splits are complementary; the decoder row is seqio's `PrefixLMFeatureConverter` reading
of ([5 6], [7 8 9 1]). `prefix_lm_examples_positioned` yields these pairs,
`rows_from_examples` turns them back into the rows above.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from arch_objective.errors import UserError
from arch_objective.features import (DECODER_CAUSAL_ATTENTION, DECODER_INPUT_TOKENS,
                                     DECODER_LOSS_WEIGHTS, DECODER_POSITIONS,
                                     DECODER_SEGMENT_IDS, DECODER_TARGET_TOKENS,
                                     ENCODER_INPUT_TOKENS, ENCODER_POSITIONS,
                                     ENCODER_SEGMENT_IDS)
from arch_objective.objectives import chunking

_SALT_DECODER = 2
_SALT_ENCODER_DECODER = 3


def pad_to(tokens: np.ndarray, length: int) -> np.ndarray:
  tokens = np.asarray(tokens, np.int32)[:length]
  return np.pad(tokens, (0, length - len(tokens)))


def shift_right(targets: np.ndarray, segment_ids: np.ndarray | None = None) -> np.ndarray:
  """Autoregressive inputs: targets shifted right by one, 0 first and at every segment
  start (seqio's `make_autoregressive_inputs`)."""
  targets = np.asarray(targets)
  inputs = np.concatenate([np.zeros_like(targets[..., :1]), targets[..., :-1]], axis=-1)
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    starts = np.concatenate([np.ones_like(seg[..., :1], bool), seg[..., 1:] != seg[..., :-1]],
                            axis=-1)
    inputs = np.where(starts, 0, inputs)
  return inputs.astype(np.int32)


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
  """Position of each token within its segment: [1 1 2 2 2 0] -> [0 1 0 1 2 0]."""
  seg = np.asarray(segment_ids)
  positions = np.zeros_like(seg, np.int32)
  for i in range(1, len(seg)):
    positions[i] = positions[i - 1] + 1 if seg[i] == seg[i - 1] and seg[i] != 0 else 0
  return positions


def prefix_lm_example(chunk: np.ndarray, split: int) -> dict[str, np.ndarray]:
  """The task features of one chunk `[n]` split at `split`: `{'inputs' [min(split, n)],
  'targets' [max(n - split, 0)]}` (t5's `prefix_lm`: the prefix, and the rest to predict)."""
  chunk = np.asarray(chunk, np.int32)
  return {"inputs": chunk[:split], "targets": chunk[split:]}


def _check_split(split: int, length: int):
  if not 1 <= split <= length - 1:
    raise UserError(f"prefix LM split must be in [1, {length - 1}], found {split}.")


def decoder_row(chunk: np.ndarray, length: int, split: int) -> dict[str, np.ndarray]:
  """The ND:PLM row `{feature: [length]}` of one chunk with the given split (see module
  docstring)."""
  _check_split(split, length)
  example = prefix_lm_example(pad_to(chunk, length), split)
  targets = np.concatenate([example["inputs"], example["targets"]])
  positions = np.arange(length)
  return {DECODER_TARGET_TOKENS: targets,
          DECODER_INPUT_TOKENS: shift_right(targets),
          DECODER_LOSS_WEIGHTS: ((positions >= split) & (targets != 0)).astype(np.int32),
          DECODER_CAUSAL_ATTENTION: (positions <= split).astype(np.int32)}


def encoder_decoder_row(a: np.ndarray, b: np.ndarray, length: int, split: int
                        ) -> dict[str, np.ndarray]:
  """The ED:PLM row `{feature: [length]}` of two chunks with split `i` (see module
  docstring): the examples of A split at i and of B split at length - i, packed."""
  _check_split(split, length)
  i = split
  first = prefix_lm_example(pad_to(a, length), i)
  second = prefix_lm_example(pad_to(b, length), length - i)
  encoder = np.concatenate([first["inputs"], second["inputs"]])
  targets = np.concatenate([first["targets"], second["targets"]])
  positions = np.arange(length)
  enc_seg = np.where(positions < i, 1, 2).astype(np.int32)
  dec_seg = np.where(positions < length - i, 1, 2).astype(np.int32)
  return {ENCODER_INPUT_TOKENS: encoder,
          ENCODER_SEGMENT_IDS: enc_seg,
          ENCODER_POSITIONS: segment_positions(enc_seg),
          DECODER_TARGET_TOKENS: targets,
          DECODER_INPUT_TOKENS: shift_right(targets, dec_seg),
          DECODER_SEGMENT_IDS: dec_seg,
          DECODER_POSITIONS: segment_positions(dec_seg),
          DECODER_LOSS_WEIGHTS: (targets != 0).astype(np.int32)}


def _split(seed: int, salt: int, index: int, length: int) -> int:
  return int(chunking.example_rng(seed, salt, index).integers(1, length))


def _split_chunks(documents: Iterable[tuple[np.ndarray, Any]], length: int, *, seed: int,
                  start: Optional[dict], encoder_decoder: bool
                  ) -> Iterator[tuple[tuple[np.ndarray, ...], int, dict]]:
  """(chunks, split, where) of the prefix LM: one chunk per step for the decoder, two for
  the encoder-decoder (chunks 2i and 2i + 1, split of the first; an unpaired last chunk
  is dropped), tagged with the first chunk's `where`."""
  if length < 2:
    raise UserError(f"prefix LM needs length >= 2, found {length}.")
  chunks = chunking.concat_and_split_positioned(documents, length, append_eos=True, seed=seed,
                                                start=start)
  if not encoder_decoder:
    for chunk, where in chunks:
      yield (chunk,), _split(seed, _SALT_DECODER, where["chunk"], length), where
    return
  for (a, where), (b, _) in zip(chunks, chunks):
    yield (a, b), _split(seed, _SALT_ENCODER_DECODER, where["chunk"] // 2, length), where


def prefix_lm_decoder_positioned(documents: Iterable[tuple[np.ndarray, Any]], length: int, *,
                                 seed: int = 0, start: Optional[dict] = None
                                 ) -> Iterator[chunking.Tagged]:
  """ND:PLM rows (model features, no packing) from (document, source position) pairs;
  rows tagged with their chunk's `where`, `start` resumes
  (`chunking.concat_and_split_positioned`)."""
  for (chunk,), split, where in _split_chunks(documents, length, seed=seed, start=start,
                                              encoder_decoder=False):
    yield chunking.tag(decoder_row(chunk, length, split), where)


def prefix_lm_encoder_decoder_positioned(documents: Iterable[tuple[np.ndarray, Any]],
                                         length: int, *, seed: int = 0,
                                         start: Optional[dict] = None
                                         ) -> Iterator[chunking.Tagged]:
  """ED:PLM rows (model features, two examples per row) from (document, source position)
  pairs: row i holds chunks 2i and 2i + 1 and is tagged with the first one's `where`."""
  for (a, b), split, where in _split_chunks(documents, length, seed=seed, start=start,
                                            encoder_decoder=True):
    yield chunking.tag(encoder_decoder_row(a, b, length, split), where)


def prefix_lm_examples_positioned(documents: Iterable[tuple[np.ndarray, Any]], length: int, *,
                                  seed: int = 0, encoder_decoder: bool = False,
                                  start: Optional[dict] = None) -> Iterator[chunking.Tagged]:
  """The task features `{'inputs', 'targets'}` of the rows of `prefix_lm_decoder_positioned`
  (one example per chunk) or of `prefix_lm_encoder_decoder_positioned` (two per row, split
  at i and length - i, both tagged with the row's `where`): the same chunks and splits
  under the same seed, unpadded (a last chunk shorter than `length` stays short)."""
  for chunks, split, where in _split_chunks(documents, length, seed=seed, start=start,
                                            encoder_decoder=encoder_decoder):
    for chunk, at in zip(chunks, (split, length - split)):
      yield chunking.tag(prefix_lm_example(chunk, at), where)


def rows_from_examples(examples: Iterable[Mapping[str, np.ndarray]], length: int, *,
                       encoder_decoder: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """The rows of `prefix_lm_*_positioned` from their task features (`prefix_lm_examples_
  positioned`): `decoder_row(inputs ++ targets, length, len(inputs))`, or for the
  encoder-decoder `encoder_decoder_row` of each two consecutive examples at the first
  one's split. Rows carry the first example's `where` when it has one.

  The same rows bit for bit, except a decoder row whose chunk (the last of a finite
  stream) is no longer than its split: its example has no targets, so the split reads
  as the chunk's length and `decoder_causal_attention` ends there (the row has no loss).
  """
  examples = iter(examples)
  for first in examples:
    position = getattr(first, "where", None)
    chunk = np.concatenate([first["inputs"], first["targets"]])
    split = max(len(first["inputs"]), 1)
    if not encoder_decoder:
      row = decoder_row(chunk, length, min(split, length - 1))
    else:
      second = next(examples, None)
      if second is None:
        raise UserError(f"encoder-decoder prefix LM examples come in pairs (one row each); "
                        f"the stream ended after an unpaired example of "
                        f"{len(chunk)} tokens.")
      row = encoder_decoder_row(chunk, np.concatenate([second["inputs"], second["targets"]]),
                                length, split)
    yield row if position is None else chunking.tag(row, position)
