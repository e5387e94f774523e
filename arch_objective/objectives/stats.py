"""What an objective's rows contain: lengths, loss fraction, packing, noise statistics,
and a readable rendering of rows with the attention and loss roles of every token."""
from __future__ import annotations

import itertools
from typing import Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

from arch_objective.errors import UserError
from arch_objective.features import (DECODER_CAUSAL_ATTENTION, DECODER_LOSS_WEIGHTS,
                                     DECODER_SEGMENT_IDS, DECODER_TARGET_TOKENS,
                                     ENCODER_INPUT_TOKENS, ENCODER_SEGMENT_IDS)
from arch_objective.objectives import pipeline, ul2

EOS_ID = 1


class _Tap:
  """Pass task examples through while counting span-corruption statistics; with
  `paradigms` (UL2: {token id: name}) each example's paradigm is counted too, and only
  the span denoisers' examples (not [S2S]) count towards the noise."""

  def __init__(self, examples: Iterable[Mapping[str, np.ndarray]], sentinel_floor: int,
               paradigms: Optional[dict[int, str]] = None):
    self._examples, self._floor, self._paradigms = examples, sentinel_floor, paradigms
    self.noise = self.nonnoise = self.spans = 0
    self.by_paradigm: dict[str, int] = {}

  def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
    for ex in self._examples:
      if "inputs" in ex and "targets" in ex:
        lead = 0
        if self._paradigms is not None:
          name = self._paradigms.get(int(ex["inputs"][0]), "none")
          self.by_paradigm[name] = self.by_paradigm.get(name, 0) + 1
          lead = 1
          if name == "[S2S]":
            yield ex
            continue
        spans = int(np.sum(ex["targets"] >= self._floor))
        self.spans += spans
        self.noise += len(ex["targets"]) - spans - 1
        self.nonnoise += len(ex["inputs"]) - lead - spans - 1
      yield ex


def row_statistics(objective: pipeline.Objective, task_examples: Iterable[Mapping],
                   num_rows: int, sentinel_floor: Optional[int] = None) -> dict:
  """Statistics over the first `num_rows` model rows of `task_examples`.

  examples              examples in those rows (packed segments; 2 per ED prefix-LM row)
  mean_input_length     prefix / encoder tokens per example (0 for full LM)
  mean_target_length    loss-weighted tokens per example
  loss_token_fraction   loss-weighted tokens / non-padding tokens
  packing_efficiency    non-padding tokens / row slots
  noise_density, mean_noise_span_length   span corruption and UL2's span denoisers (else
                        None)
  paradigm_share        UL2 only: the share of each paradigm token ([NLU] R, [NLG] X,
                        [S2S] S) among the examples read
  """
  is_ul2 = objective.objective == pipeline.UL2 and sentinel_floor is not None
  counts_spans = (objective.objective == pipeline.SPAN_CORRUPTION
                  and sentinel_floor is not None) or is_ul2
  paradigms = None
  if is_ul2:   # the paradigm tokens are the lowest extra ids, the sentinels above them
    paradigms = {sentinel_floor + i: name for i, name in enumerate(ul2.PARADIGMS)}
    sentinel_floor += len(ul2.PARADIGMS)
  tap = _Tap(task_examples, sentinel_floor if counts_spans else 1 << 62, paradigms)
  rows = list(itertools.islice(objective.model_rows(tap), num_rows))
  if not rows:
    raise UserError(f"{objective.name}: the corpus produced no rows; is it empty?")
  examples = inputs = weighted = nonpad = slots = 0
  for row in rows:
    targets = row[DECODER_TARGET_TOKENS]
    seg = row.get(DECODER_SEGMENT_IDS, (targets > 0).astype(np.int32))
    n = len(set(seg[seg > 0].tolist())) or 1
    examples += n
    weighted += int(np.sum(row[DECODER_LOSS_WEIGHTS]))
    nonpad += int(np.sum(targets > 0))
    slots += len(targets)
    if ENCODER_INPUT_TOKENS in row:
      enc = row[ENCODER_INPUT_TOKENS]
      inputs += int(np.sum(enc > 0))
      nonpad += int(np.sum(enc > 0))
      slots += len(enc)
    elif objective.objective != pipeline.FULL_LM:
      inputs += int(np.sum(row[DECODER_CAUSAL_ATTENTION])) - n  # inputs plus one, per example
  spans = tap.spans
  return {
      "task": objective.name,
      "rows": len(rows),
      "examples": examples,
      "feature_lengths": objective.feature_lengths,
      "mean_input_length": inputs / examples,
      "mean_target_length": weighted / examples,
      "loss_token_fraction": weighted / max(nonpad, 1),
      "packing_efficiency": nonpad / max(slots, 1),
      "noise_density": (tap.noise / (tap.noise + tap.nonnoise)) if spans else None,
      "mean_noise_span_length": (tap.noise / spans) if spans else None,
      **({"paradigm_share": {k: v / sum(tap.by_paradigm.values())
                             for k, v in sorted(tap.by_paradigm.items())}} if is_ul2 else {}),
  }


def render_row(row: Mapping[str, np.ndarray], decode: Callable[[list[int]], str]) -> str:
  """A row as text: each run of tokens with its segment and role.

  Decoder roles: `prefix` (bidirectional for the ND, no loss), `loss` (predicted,
  causal) and `context` (no loss, causal). The encoder's tokens are `encoder`.
  """
  lines = []

  def runs(tokens, labels):
    start = 0
    for i in range(1, len(tokens) + 1):
      if i == len(tokens) or labels[i] != labels[start]:
        if labels[start] is not None:
          lines.append(f"  {labels[start]:<18} {_text(tokens[start:i], decode)}")
        start = i

  if ENCODER_INPUT_TOKENS in row:
    enc = row[ENCODER_INPUT_TOKENS]
    seg = row.get(ENCODER_SEGMENT_IDS, (enc > 0).astype(np.int32))
    runs(enc, [f"encoder seg {s}" if t > 0 else None for t, s in zip(enc, seg)])
  targets = row[DECODER_TARGET_TOKENS]
  seg = row.get(DECODER_SEGMENT_IDS, (targets > 0).astype(np.int32))
  dca = row.get(DECODER_CAUSAL_ATTENTION, np.zeros_like(targets))
  weights = row[DECODER_LOSS_WEIGHTS]
  labels = []
  for t, s, d, w in zip(targets, seg, dca, weights):
    role = "loss" if w else ("prefix" if d else "context")
    labels.append(f"{role} seg {s}" if t > 0 else None)
  runs(targets, labels)
  return "\n".join(lines)


def _text(tokens: np.ndarray, decode: Callable[[list[int]], str]) -> str:
  parts, buffer = [], []
  for t in tokens.tolist():
    if t == EOS_ID:
      if buffer:
        parts.append(decode(buffer))
      parts.append("</s>")
      buffer = []
    else:
      buffer.append(t)
  if buffer:
    parts.append(decode(buffer))
  return " ".join(p for p in parts if p)
