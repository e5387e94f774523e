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
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional

import numpy as np

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


def decoder_row(chunk: np.ndarray, length: int, split: int) -> dict[str, np.ndarray]:
  """The ND:PLM row of one chunk with the given split (see module docstring)."""
  if not 1 <= split <= length - 1:
    raise ValueError(f"prefix LM split must be in [1, {length - 1}], found {split}.")
  targets = pad_to(chunk, length)
  positions = np.arange(length)
  return {"decoder_target_tokens": targets,
          "decoder_input_tokens": shift_right(targets),
          "decoder_loss_weights": ((positions >= split) & (targets != 0)).astype(np.int32),
          "decoder_causal_attention": (positions <= split).astype(np.int32)}


def encoder_decoder_row(a: np.ndarray, b: np.ndarray, length: int, split: int
                        ) -> dict[str, np.ndarray]:
  """The ED:PLM row of two chunks with split `i` (see module docstring)."""
  if not 1 <= split <= length - 1:
    raise ValueError(f"prefix LM split must be in [1, {length - 1}], found {split}.")
  a, b = pad_to(a, length), pad_to(b, length)
  i = split
  encoder = np.concatenate([a[:i], b[:length - i]])
  targets = np.concatenate([a[i:], b[length - i:]])
  positions = np.arange(length)
  enc_seg = np.where(positions < i, 1, 2).astype(np.int32)
  dec_seg = np.where(positions < length - i, 1, 2).astype(np.int32)
  return {"encoder_input_tokens": encoder,
          "encoder_segment_ids": enc_seg,
          "encoder_positions": segment_positions(enc_seg),
          "decoder_target_tokens": targets,
          "decoder_input_tokens": shift_right(targets, dec_seg),
          "decoder_segment_ids": dec_seg,
          "decoder_positions": segment_positions(dec_seg),
          "decoder_loss_weights": (targets != 0).astype(np.int32)}


def _split(seed: int, salt: int, index: int, length: int) -> int:
  return int(chunking.example_rng(seed, salt, index).integers(1, length))


def prefix_lm_decoder(documents: Iterable[np.ndarray], length: int, *, seed: int = 0
                      ) -> Iterator[dict[str, np.ndarray]]:
  """ND:PLM rows (model features, no packing) from documents."""
  for row in prefix_lm_decoder_positioned(((d, None) for d in documents), length, seed=seed):
    yield dict(row)


def prefix_lm_encoder_decoder(documents: Iterable[np.ndarray], length: int, *, seed: int = 0
                              ) -> Iterator[dict[str, np.ndarray]]:
  """ED:PLM rows (model features, two examples per row) from documents."""
  for row in prefix_lm_encoder_decoder_positioned(((d, None) for d in documents), length,
                                                  seed=seed):
    yield dict(row)


def prefix_lm_decoder_positioned(documents: Iterable[tuple[np.ndarray, Any]], length: int, *,
                                 seed: int = 0, start: Optional[dict] = None
                                 ) -> Iterator[chunking.Tagged]:
  """`prefix_lm_decoder` over (document, source position) pairs; rows tagged with their
  chunk's `where`, `start` resumes (`chunking.concat_and_split_positioned`)."""
  if length < 2:
    raise ValueError(f"prefix LM needs length >= 2, found {length}.")
  chunks = chunking.concat_and_split_positioned(documents, length, append_eos=True, seed=seed,
                                                start=start)
  for chunk, where in chunks:
    yield chunking.tag(decoder_row(chunk, length,
                                   _split(seed, _SALT_DECODER, where["chunk"], length)), where)


def prefix_lm_encoder_decoder_positioned(documents: Iterable[tuple[np.ndarray, Any]],
                                         length: int, *, seed: int = 0,
                                         start: Optional[dict] = None
                                         ) -> Iterator[chunking.Tagged]:
  """`prefix_lm_encoder_decoder` over (document, source position) pairs: row i holds
  chunks 2i and 2i + 1 and is tagged with the first one's `where`."""
  if length < 2:
    raise ValueError(f"prefix LM needs length >= 2, found {length}.")
  chunks = chunking.concat_and_split_positioned(documents, length, append_eos=True, seed=seed,
                                                start=start)
  for (a, where), (b, _) in zip(chunks, chunks):
    index = where["chunk"] // 2
    yield chunking.tag(encoder_decoder_row(
        a, b, length, _split(seed, _SALT_ENCODER_DECODER, index, length)), where)
