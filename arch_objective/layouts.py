"""How each architecture lays out what it reads: the one place that knows where a prompt
and a continuation go for a decoder-only model and for an encoder-decoder.

Evaluation, `plan`, `testing` and `tasks/` ask a model's layout (`model.layout`, or
`architectures.get(arch).layout` in code without JAX) instead of asking which model they
hold, as t5x's model classes carry their own feature converter. No JAX here (numpy only),
so data code and benchmarks import it freely.

  DecoderLayout          CD and ND: one row `prompt ++ continuation`; the decoder input
                         is the row shifted right (0 first); `decoder_causal_attention`
                         marks the prompt plus one position (bidirectional for the ND)
  EncoderDecoderLayout   ED: the prompt goes to the encoder, the continuation to the
                         decoder (from start token 0)

`family` names the layout where a table is keyed by it: the prefix-LM tasks
(`c4_prefix_lm_decoder`, `c4_prefix_lm_encoder_decoder`), seqio's feature converters and
the scorer's packed layouts.

  >>> DECODER.reference_batch(np.array([5, 6]), np.array([7]))["decoder_causal_attention"]
  array([[1, 1, 1]], dtype=int32)
  >>> ENCODER_DECODER.reference_batch(np.array([5, 6]), np.array([7]))["encoder_input_tokens"]
  array([[5, 6]], dtype=int32)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from arch_objective.features import (DECODER_CAUSAL_ATTENTION, DECODER_INPUT_TOKENS,
                                     DECODER_LOSS_WEIGHTS, DECODER_TARGET_TOKENS,
                                     ENCODER_INPUT_TOKENS)

# Random prompt splits of `synthetic_batch` for a bidirectional prefix.
PREFIXES = ("half", "random")

Pair = tuple[np.ndarray, np.ndarray]


def shifted(targets: np.ndarray) -> np.ndarray:
  """Decoder inputs of `targets [b, l]`: shifted right by one, 0 first."""
  return np.pad(targets[:, :-1], ((0, 0), (1, 0)))


def decoder_batch(pairs: Sequence[Pair], length: int, rows: int) -> dict[str, np.ndarray]:
  """A decoder-only batch `[rows, length]` (int32) of (prompt, choice) pairs, one row each
  (`len(prompt) + len(choice) <= length`, `len(pairs) <= rows`; the rest is padding).

  `decoder_target_tokens` is `prompt ++ choice`, `decoder_input_tokens` the targets shifted
  right by one (0 first), `decoder_loss_weights` 1 on the choice, `decoder_causal_attention`
  1 on the prompt and the position after it.
  """
  targets = np.zeros((rows, length), np.int32)
  weights = np.zeros((rows, length), np.int32)
  dca = np.zeros((rows, length), np.int32)
  for r, (prompt, choice) in enumerate(pairs):
    n = len(prompt)
    targets[r, :n] = prompt
    targets[r, n:n + len(choice)] = choice
    weights[r, n:n + len(choice)] = 1
    dca[r, :n + 1] = 1
  return {DECODER_INPUT_TOKENS: shifted(targets), DECODER_TARGET_TOKENS: targets,
          DECODER_LOSS_WEIGHTS: weights, DECODER_CAUSAL_ATTENTION: dca}


@dataclasses.dataclass(frozen=True)
class DecoderLayout:
  """A decoder-only model's reading: one row per (prompt, continuation).

  marks_prefix: the model reads `decoder_causal_attention`, attending bidirectionally
    over the prompt it marks (the ND).
  """
  marks_prefix: bool = False

  family = "decoder"

  # -- scoring -------------------------------------------------------------------------
  def share_prompts(self, pairs: Sequence[Pair], todo: Sequence[int]) -> list[list[int]]:
    """Which of the pairs `todo` (indices into `pairs`) score as one request: here each
    alone (a row holds its own prompt)."""
    return [[i] for i in todo]

  def reference_batch(self, prompt: np.ndarray, choice: np.ndarray) -> dict[str, np.ndarray]:
    """The one-row batch of a full forward pass scoring `choice` after `prompt` (the
    reference the packed scorer must equal)."""
    prompt, choice = np.asarray(prompt, np.int32), np.asarray(choice, np.int32)
    return decoder_batch([(prompt, choice)], len(prompt) + len(choice), 1)

  # -- truncation and windows (lm-eval) --------------------------------------------------
  def row_budget(self, row_length: int) -> Optional[int]:
    """The tokens one row holds (prompt and continuation together): `row_length`."""
    return row_length

  def prompt_budget(self, *, inputs_length: int, row_length: int, steps: int) -> int:
    """The prompt tokens kept (the last ones) before generating `steps` tokens: what
    the row leaves after them and the shifted-in 0 (at least 1)."""
    return max(row_length - steps - 1, 1)

  def rolling_windows(self, tokens: np.ndarray, *, row_length: int, targets_length: int,
                      windows: Callable[[np.ndarray, int], list[Pair]]) -> list[Pair]:
    """(context, continuation) pairs predicting every token once: `windows(tokens,
    row_length)`, lm-eval's windows, each seeing the tokens before it."""
    return windows(tokens, row_length)

  # -- generation ----------------------------------------------------------------------
  def prompt_positions(self, prompt_length: int) -> int:
    """Positions a prompt of `prompt_length` tokens takes in a generation batch: its
    tokens shifted right behind the 0."""
    return prompt_length + 1

  def generation_batch(self, prompts: Sequence[np.ndarray], rows: int, length: int
                       ) -> dict[str, np.ndarray]:
    """`predict_batch`'s batch `[rows, length]` (`len(prompt) + 1 <= length`): the
    prompts in shifted form `[0, p_0 .. p_n-1]`, `decoder_causal_attention` over them
    and the 0; padding rows hold the empty prompt."""
    tokens = np.zeros((rows, length), np.int32)
    dca = np.zeros_like(tokens)
    dca[:, 0] = 1
    for r, prompt in enumerate(prompts):
      n = len(prompt)
      tokens[r, 1:n + 1] = prompt
      dca[r, :n + 1] = 1
    return {DECODER_INPUT_TOKENS: tokens, DECODER_CAUSAL_ATTENTION: dca}

  # -- data ----------------------------------------------------------------------------
  def complete_row(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A model row from another converter made readable: the ND's rows get
    `decoder_causal_attention` (all 0, a causal row) when the converter wrote none."""
    if self.marks_prefix and DECODER_CAUSAL_ATTENTION not in row:
      row[DECODER_CAUSAL_ATTENTION] = np.zeros_like(row[DECODER_TARGET_TOKENS])
    return row

  def synthetic_batch(self, rng: np.random.Generator, ids: Callable[[int], np.ndarray],
                      weights: Callable[[np.ndarray], np.ndarray], *, rows: int, length: int,
                      inputs_length: Optional[int], targets_length: Optional[int],
                      prefix: str) -> dict[str, np.ndarray]:
    """`testing.synthetic_batch`'s rows: `length` positions; with a bidirectional prefix
    also `decoder_causal_attention`, over the first `length // 2 + 1` positions
    (`prefix="half"`) or a random split per row (`"random"`)."""
    targets = ids(length)
    batch = {DECODER_TARGET_TOKENS: targets, DECODER_INPUT_TOKENS: shifted(targets),
             DECODER_LOSS_WEIGHTS: weights(targets)}
    if self.marks_prefix:
      split = (np.full((rows, 1), length // 2) if prefix == "half" else
               rng.integers(1, max(length - 1, 2), (rows, 1)))
      batch[DECODER_CAUSAL_ATTENTION] = (np.arange(length)[None] <= split).astype(np.int32)
    return batch

  # -- cost ----------------------------------------------------------------------------
  def activation_stacks(self, config: Any, row_length: int) -> tuple[int, float]:
    """`(layers, tokens each layer sees per row)` for the activation memory estimate:
    every decoder layer reads the whole row."""
    return config.num_decoder_layers, row_length


@dataclasses.dataclass(frozen=True)
class EncoderDecoderLayout:
  """The encoder-decoder's reading: the prompt in the encoder, the continuation in the
  decoder."""

  family = "encoder_decoder"

  def share_prompts(self, pairs: Sequence[Pair], todo: Sequence[int]) -> list[list[int]]:
    """Pairs `todo` grouped by their prompt (in order of first appearance): one request
    per distinct prompt, which is encoded once for all its continuations."""
    by_prompt: dict[bytes, list[int]] = {}
    for i in todo:
      by_prompt.setdefault(np.asarray(pairs[i][0], np.int32).tobytes(), []).append(i)
    return list(by_prompt.values())

  def reference_batch(self, prompt: np.ndarray, choice: np.ndarray) -> dict[str, np.ndarray]:
    """One row: `prompt` in the encoder, `choice` decoded from start token 0."""
    targets = np.asarray(choice, np.int32)[None]
    return {ENCODER_INPUT_TOKENS: np.asarray(prompt, np.int32)[None],
            DECODER_TARGET_TOKENS: targets, DECODER_INPUT_TOKENS: shifted(targets),
            DECODER_LOSS_WEIGHTS: np.ones_like(targets)}

  def row_budget(self, row_length: int) -> Optional[int]:
    """None: the prompt and the continuation have budgets of their own (the encoder's and
    the decoder's lengths), no shared row."""
    return None

  def prompt_budget(self, *, inputs_length: int, row_length: int, steps: int) -> int:
    """The prompt tokens kept (the last ones): the encoder's length."""
    return inputs_length

  def rolling_windows(self, tokens: np.ndarray, *, row_length: int, targets_length: int,
                      windows: Callable[[np.ndarray, int], list[Pair]]) -> list[Pair]:
    """Disjoint windows of `targets_length` tokens, each decoded with an empty prompt."""
    return [(np.zeros((0,), np.int32), tokens[s:s + targets_length])
            for s in range(0, len(tokens), targets_length)]

  def prompt_positions(self, prompt_length: int) -> int:
    """Positions a prompt takes in a generation batch: its tokens (the encoder row)."""
    return prompt_length

  def generation_batch(self, prompts: Sequence[np.ndarray], rows: int, length: int
                       ) -> dict[str, np.ndarray]:
    """`predict_batch`'s batch: `encoder_input_tokens [rows, length]`, 0-padded."""
    tokens = np.zeros((rows, length), np.int32)
    for r, prompt in enumerate(prompts):
      tokens[r, :len(prompt)] = prompt
    return {ENCODER_INPUT_TOKENS: tokens}

  def complete_row(self, row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The row unchanged: seqio's encoder-decoder converter writes every feature."""
    return row

  def synthetic_batch(self, rng: np.random.Generator, ids: Callable[[int], np.ndarray],
                      weights: Callable[[np.ndarray], np.ndarray], *, rows: int, length: int,
                      inputs_length: Optional[int], targets_length: Optional[int],
                      prefix: str) -> dict[str, np.ndarray]:
    """`inputs_length` encoder and `targets_length` decoder positions (default:
    `length - length // 2` and `length // 2`)."""
    targets = ids(length // 2 if targets_length is None else targets_length)
    encoder = ids(length - length // 2 if inputs_length is None else inputs_length)
    return {ENCODER_INPUT_TOKENS: encoder, DECODER_TARGET_TOKENS: targets,
            DECODER_INPUT_TOKENS: shifted(targets), DECODER_LOSS_WEIGHTS: weights(targets)}

  def activation_stacks(self, config: Any, row_length: int) -> tuple[int, float]:
    """Both stacks' layers, each seeing about half of the row's tokens."""
    return config.num_decoder_layers + config.num_encoder_layers, row_length / 2


Layout = DecoderLayout | EncoderDecoderLayout

DECODER = DecoderLayout(marks_prefix=False)
PREFIX_DECODER = DecoderLayout(marks_prefix=True)
ENCODER_DECODER = EncoderDecoderLayout()


def by_family(table: Mapping[str, Any], layout: Layout, what: str) -> Any:
  """`table[layout.family]`, or a ValueError naming `what` and the families it has."""
  if layout.family not in table:
    raise ValueError(f"{what} has no entry for the {layout.family} layout; it has "
                     f"{sorted(table)}.")
  return table[layout.family]
