"""Task features -> the model features each architecture reads (seqio's converters).

Task features are `{'targets'}` (language modelling) or `{'inputs', 'targets'}`;
each is first trimmed to its length (the first N tokens, as seqio does). With
`pack=True` consecutive examples share a row while they fit (next-fit), each as its
own segment: attention never crosses segments, decoder inputs restart at 0 at each
segment start, positions count from 0 per segment, padding has segment id 0. With
`pack=False` each example has its own row and no segment ids or positions.

`lm_rows` (decoder-only full LM), length 8, examples [5 6 7 1] and [8 9 1]:
  decoder_target_tokens  5 6 7 1 8 9 1 0
  decoder_input_tokens   0 5 6 7 0 8 9 0
  decoder_loss_weights   1 1 1 1 1 1 1 0
  decoder_segment_ids    1 1 1 1 2 2 2 0
  decoder_positions      0 1 2 3 0 1 2 0

`prefix_lm_rows` (decoder-only reading of inputs/targets), length 8, examples
(inputs [5 6], targets [7 1]) and (inputs [8], targets [9 1]):
  decoder_target_tokens    5 6 7 1 8 9 1 0
  decoder_input_tokens     0 5 6 7 0 8 9 0
  decoder_loss_weights     0 0 1 1 0 1 1 0     targets only
  decoder_causal_attention 1 1 1 0 1 1 0 0     inputs plus one position, per segment
  decoder_segment_ids      1 1 1 1 2 2 2 0
  decoder_positions        0 1 2 3 0 1 2 0

`encoder_decoder_rows`, lengths inputs 6 / targets 4, the same two examples:
  encoder_input_tokens 5 6 8 0 0 0   encoder_segment_ids 1 1 2 0 0 0
  decoder_target_tokens 7 1 9 1      decoder_input_tokens 0 7 0 9
  decoder_segment_ids   1 1 2 2      decoder_loss_weights 1 1 1 1
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from arch_objective import architectures
from arch_objective.errors import UserError
from arch_objective.features import (DECODER_CAUSAL_ATTENTION, DECODER_INPUT_TOKENS,
                                     DECODER_LOSS_WEIGHTS, DECODER_TARGET_TOKENS,
                                     ENCODER_INPUT_TOKENS)
from arch_objective.objectives import chunking
from arch_objective.objectives.prefix_lm import segment_positions, shift_right

Example = Mapping[str, np.ndarray]


def _trim(example: Example, lengths: Mapping[str, int], where: str) -> dict[str, np.ndarray]:
  out = {}
  for key, length in lengths.items():
    if key not in example:
      raise UserError(f"{where}: example is missing feature {key!r}; it has "
                      f"{sorted(example)}.")
    out[key] = np.asarray(example[key], np.int32)[:length]
  return out


def _pack(examples: Iterable[Example], lengths: Mapping[str, int], pack: bool, where: str,
          combined: bool = False) -> Iterator[tuple[list[dict[str, np.ndarray]], Any]]:
  """Groups of trimmed examples that fit together in one row (one each if not packing),
  each with the resume position (`chunking.Tagged.where`) of its first example.

  Each feature has its own row length, or with `combined` all features share one row of
  the summed lengths (decoder-only rows hold `inputs ++ targets`). A group starts
  afresh at its first example, so reading again from that example's position gives the
  same rows.
  """
  group: list[dict[str, np.ndarray]] = []
  first = None
  used = {k: 0 for k in lengths}
  total = sum(lengths.values())
  for example in examples:
    position = getattr(example, "where", None)
    example = _trim(example, lengths, where)
    if all(len(v) == 0 for v in example.values()):
      continue
    if combined:
      fits = sum(used.values()) + sum(len(v) for v in example.values()) <= total
    else:
      fits = all(used[k] + len(example[k]) <= lengths[k] for k in lengths)
    if group and (not pack or not fits):
      yield group, first
      group, used = [], {k: 0 for k in lengths}
    if not group:
      first = position
    group.append(example)
    for k in lengths:
      used[k] += len(example[k])
  if group:
    yield group, first


def _tagged(row: dict, position) -> dict:
  return row if position is None else chunking.tag(row, position)


def _concat(parts: Sequence[np.ndarray], length: int) -> np.ndarray:
  row = np.concatenate(parts) if parts else np.zeros((0,), np.int32)
  return np.pad(row.astype(np.int32), (0, length - len(row)))


def _segments(sizes: Sequence[int], length: int) -> np.ndarray:
  return _concat([np.full(n, i + 1, np.int32) for i, n in enumerate(sizes)], length)


def _with_segments(row: dict, prefix: str, segment_ids: np.ndarray, pack: bool) -> dict:
  if pack:
    row[f"{prefix}_segment_ids"] = segment_ids
    row[f"{prefix}_positions"] = segment_positions(segment_ids)
  return row


def lm_rows(examples: Iterable[Example], length: int, pack: bool = True
            ) -> Iterator[dict[str, np.ndarray]]:
  """Decoder-only language-model rows from `{'targets'}` examples."""
  for group, position in _pack(examples, {"targets": length}, pack, "lm_rows"):
    targets = _concat([e["targets"] for e in group], length)
    seg = _segments([len(e["targets"]) for e in group], length)
    row = {DECODER_TARGET_TOKENS: targets,
           DECODER_INPUT_TOKENS: shift_right(targets, seg),
           DECODER_LOSS_WEIGHTS: (seg > 0).astype(np.int32)}
    yield _tagged(_with_segments(row, "decoder", seg, pack), position)


def prefix_lm_rows(examples: Iterable[Example], inputs_length: int, targets_length: int,
                   pack: bool = True, loss_on_targets_only: bool = True
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Decoder-only rows of `{'inputs', 'targets'}` examples: `inputs ++ targets` per
  segment in rows of `inputs_length + targets_length`, with `decoder_causal_attention`
  on the inputs plus one position (read by the non-causal decoder only)."""
  length = inputs_length + targets_length
  lengths = {"inputs": inputs_length, "targets": targets_length}
  for group, position in _pack(examples, lengths, pack, "prefix_lm_rows", combined=True):
    parts, dca, weights, sizes = [], [], [], []
    for e in group:
      n_in, n_tg = len(e["inputs"]), len(e["targets"])
      parts += [e["inputs"], e["targets"]]
      dca.append(np.arange(n_in + n_tg) <= n_in)
      weights.append(np.arange(n_in + n_tg) >= (n_in if loss_on_targets_only else 0))
      sizes.append(n_in + n_tg)
    targets = _concat(parts, length)
    seg = _segments(sizes, length)
    row = {DECODER_TARGET_TOKENS: targets,
           DECODER_INPUT_TOKENS: shift_right(targets, seg),
           DECODER_LOSS_WEIGHTS: _concat(weights, length),
           DECODER_CAUSAL_ATTENTION: _concat(dca, length)}
    yield _tagged(_with_segments(row, "decoder", seg, pack), position)


def encoder_decoder_rows(examples: Iterable[Example], inputs_length: int, targets_length: int,
                         pack: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Encoder-decoder rows of `{'inputs', 'targets'}` examples."""
  lengths = {"inputs": inputs_length, "targets": targets_length}
  for group, position in _pack(examples, lengths, pack, "encoder_decoder_rows"):
    enc = _concat([e["inputs"] for e in group], inputs_length)
    targets = _concat([e["targets"] for e in group], targets_length)
    enc_seg = _segments([len(e["inputs"]) for e in group], inputs_length)
    dec_seg = _segments([len(e["targets"]) for e in group], targets_length)
    row = {ENCODER_INPUT_TOKENS: enc,
           DECODER_TARGET_TOKENS: targets,
           DECODER_INPUT_TOKENS: shift_right(targets, dec_seg),
           DECODER_LOSS_WEIGHTS: (dec_seg > 0).astype(np.int32)}
    _with_segments(row, "encoder", enc_seg, pack)
    yield _tagged(_with_segments(row, "decoder", dec_seg, pack), position)


# How an architecture reads `{'inputs', 'targets'}` examples, by its
# `Architecture.feature_converter` (seqio's converter of each t5x model class).
CONVERTERS = {"prefix_lm_rows": prefix_lm_rows, "encoder_decoder_rows": encoder_decoder_rows}


def inputs_targets_rows(arch: str, examples: Iterable[Example], inputs_length: int,
                        targets_length: int, pack: bool = True
                        ) -> Iterator[dict[str, np.ndarray]]:
  """Rows of `{'inputs', 'targets'}` examples as `arch` reads them: `prefix_lm_rows`
  (rows of `inputs_length + targets_length`) for the decoders, `encoder_decoder_rows`
  (`inputs_length` / `targets_length`) for the encoder-decoder."""
  converter = CONVERTERS[architectures.get(arch).feature_converter]
  return converter(examples, inputs_length, targets_length, pack)


def batch_rows(rows: Iterable[Mapping[str, np.ndarray]], batch_size: int,
               drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Stack rows into batches `{feature: [batch_size, length]}`."""
  if batch_size < 1:
    raise UserError(f"batch_size must be >= 1, found {batch_size}.")
  buffer: list[Mapping[str, np.ndarray]] = []
  for row in rows:
    buffer.append(row)
    if len(buffer) == batch_size:
      yield {k: np.stack([r[k] for r in buffer]) for k in buffer[0]}
      buffer = []
  if buffer and not drop_remainder:
    yield {k: np.stack([r[k] for r in buffer]) for k in buffer[0]}
