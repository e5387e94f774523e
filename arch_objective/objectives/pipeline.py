"""One table from (objective, architecture) to the rows a model trains on: `TABLE`,
whose cells (`Reading`) `Objective` reads.

Every objective sees the same number of tokens per row (spec §8.1): with the paper's
decoder length 626,
  full LM (CD)          626-token chunks, EOS after each document, loss on every token
  prefix LM (CD, ND)    626-token chunks, random split, loss after the split
  prefix LM (ED)        two 626-token chunks per row: encoder 626 / decoder 626
  span corruption       568 raw tokens -> inputs 512 + targets 114; decoder-only rows
                        are `inputs ++ targets` (626, packed), ED rows 512 / 114 (packed)
`mlm_lengths(length)` derives 512/114 from 626 (and the same split for any length).

Task features (what `Objective.task_examples` yields and the seqio tasks emit) are t5's:
`{'targets'}` for full LM, `{'inputs', 'targets'}` for span corruption and prefix LM (a
chunk's prefix and the rest). `task_feature_lengths` gives t5x's TASK_FEATURE_LENGTHS of
an objective at a decoder length, `objective_length` the decoder length back:
  full LM          {'targets': 626}
  prefix LM        {'inputs': 626, 'targets': 626}   the chunk is `inputs` long (t5's
                   `prefix_lm`); any split's rest fits `targets` >= 625
  span corruption  {'inputs': 512, 'targets': 114}   chunks of `random_spans_helper(512)`
                   = 568 raw tokens (t5's span corruption)

Chunks are cut from the continuous concatenation of the document stream, so all but
the last chunk of a finite corpus are full (t5 concatenates groups of 128 documents,
which leaves one short chunk per group).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional

import numpy as np

from arch_objective import architectures
from arch_objective.errors import UserError
from arch_objective.features import DECODER_CAUSAL_ATTENTION, DECODER_TARGET_TOKENS
from arch_objective.objectives import chunking, feature_converters, prefix_lm, span_corruption, ul2

FULL_LM = "full_lm"
PREFIX_LM = "prefix_lm"
SPAN_CORRUPTION = "span_corruption"
UL2 = "ul2"
OBJECTIVES = (FULL_LM, PREFIX_LM, SPAN_CORRUPTION, UL2)
SHORT_NAMES = {FULL_LM: "FLM", PREFIX_LM: "PLM", SPAN_CORRUPTION: "MLM", UL2: "UL2"}
PAPER_LENGTH = 626

# The six (architecture, objective) pretraining runs of the paper (spec §2.7).
PAPER_RUNS = ((architectures.CAUSAL_DECODER, FULL_LM),
              (architectures.CAUSAL_DECODER, SPAN_CORRUPTION),
              (architectures.NON_CAUSAL_DECODER, PREFIX_LM),
              (architectures.NON_CAUSAL_DECODER, SPAN_CORRUPTION),
              (architectures.ENCODER_DECODER, PREFIX_LM),
              (architectures.ENCODER_DECODER, SPAN_CORRUPTION))


def mlm_lengths(length: int = PAPER_LENGTH,
                noise_density: float = span_corruption.NOISE_DENSITY,
                mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH
                ) -> tuple[int, int]:
  """(inputs, targets) lengths of span corruption whose sum fills `length` best.

  `mlm_lengths(626) == (512, 114)`.
  """
  for inputs_length in range(length - 1, 1, -1):
    _, targets_length = span_corruption.random_spans_helper(
        inputs_length, noise_density, mean_noise_span_length)
    if inputs_length + targets_length <= length:
      return inputs_length, targets_length
  raise UserError(f"length {length} is too short for span corruption; use >= 8.")


def task_feature_lengths(objective: str, length: int = PAPER_LENGTH) -> dict[str, int]:
  """t5x's TASK_FEATURE_LENGTHS whose task examples are those of `objective` at decoder
  length `length` (see the module docstring)."""
  if objective == FULL_LM:
    return {"targets": length}
  if objective == PREFIX_LM:
    return {"inputs": length, "targets": length}
  if objective == SPAN_CORRUPTION:
    inputs, targets = mlm_lengths(length)
    return {"inputs": inputs, "targets": targets}
  if objective == UL2:
    inputs, targets = ul2.ul2_lengths(length)
    return {"inputs": inputs, "targets": targets}
  raise UserError(f"unknown objective {objective!r}; valid objectives: {', '.join(OBJECTIVES)}.")


def objective_length(objective: str, feature_lengths: Mapping[str, int], task: str = "") -> int:
  """The decoder length whose task examples `feature_lengths` (t5x's TASK_FEATURE_LENGTHS)
  asks for. `Objective(o, arch, objective_length(o, task_feature_lengths(o, L)))` makes the
  examples of length L (for span corruption the shortest such length, `inputs + targets`:
  `mlm_lengths` may leave a few of L's positions unused).

  Raises ValueError naming `task`, the feature and the lengths expected and found when a
  feature is missing or too short for the examples its other lengths imply (seqio would
  cut them).
  """
  where = f"task {task!r} ({objective})" if task else objective
  needed = {FULL_LM: ("targets",)}.get(objective, ("inputs", "targets"))
  missing = [k for k in needed if k not in feature_lengths or feature_lengths[k] is None]
  if missing:
    raise UserError(f"{where} needs sequence lengths for {list(needed)}, found "
                    f"{dict(feature_lengths)} (missing {missing}); e.g. "
                    f"{task_feature_lengths(objective)} for the paper's length "
                    f"{PAPER_LENGTH}.")
  if objective == FULL_LM:
    return int(feature_lengths["targets"])
  inputs, targets = int(feature_lengths["inputs"]), int(feature_lengths["targets"])
  if objective == PREFIX_LM:
    if targets < inputs - 1:
      raise UserError(f"{where}: a {inputs}-token chunk (the 'inputs' length) split at 1 "
                      f"leaves {inputs - 1} target tokens; 'targets' must be >= "
                      f"{inputs - 1}, found {targets}.")
    return inputs
  if objective == UL2:
    return inputs + targets
  if objective != SPAN_CORRUPTION:
    raise UserError(f"unknown objective {objective!r}; valid objectives: "
                    f"{', '.join(OBJECTIVES)}.")
  _, needed_targets = span_corruption.random_spans_helper(inputs)
  if targets < needed_targets:
    raise UserError(f"{where}: span corruption with 'inputs' {inputs} makes targets of "
                    f"{needed_targets} tokens; 'targets' must be >= {needed_targets}, "
                    f"found {targets}.")
  return inputs + needed_targets


@dataclasses.dataclass(frozen=True)
class Objective:
  """An objective read by one architecture, at a decoder length: the methods read the
  (objective, architecture) cell of `TABLE`."""
  objective: str
  arch: str
  length: int = PAPER_LENGTH
  noise_density: float = span_corruption.NOISE_DENSITY
  mean_noise_span_length: float = span_corruption.MEAN_NOISE_SPAN_LENGTH
  pack: bool = True
  denoisers: tuple = ul2.PAPER_DENOISERS      # UL2's mixture (`objectives/ul2.py`)

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise UserError(f"unknown objective {self.objective!r}; valid objectives: "
                      f"{', '.join(OBJECTIVES)}.")
    architectures.get(self.arch)
    if (self.objective, self.arch) in NO_READING:
      raise UserError(NO_READING[self.objective, self.arch])
    if self.length < 8:
      raise UserError(f"sequence length {self.length} is too short for the objectives; "
                      f"use >= 8 (the paper uses {PAPER_LENGTH}).")

  @property
  def reading(self) -> Reading:
    """This (objective, architecture) cell of `TABLE`."""
    return TABLE[self.objective, self.arch]

  @property
  def name(self) -> str:
    return f"{architectures.get(self.arch).short}:{SHORT_NAMES[self.objective]}"

  @property
  def feature_lengths(self) -> dict[str, int]:
    """Lengths of the model features (what `TASK_FEATURE_LENGTHS` would say)."""
    return self.reading.lengths(self)

  @property
  def examples_per_row(self) -> float:
    """Examples per row before packing: 2 for ED prefix LM (so halve its batch size)."""
    return self.reading.examples_per_row

  def task_examples(self, documents: Iterable[np.ndarray], *, seed: int = 0,
                    sentinel_start: Optional[int] = None, num_extra_ids: int = 100
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Task features from tokenised documents (no EOS on them): `{'targets'}` (full LM),
    `{'inputs', 'targets'}` (span corruption, and prefix LM: each chunk's prefix and the
    rest, `prefix_lm.prefix_lm_example`). `model_rows` turns them into model features."""
    for example in self.positioned_examples(((d, None) for d in documents), seed=seed,
                                            sentinel_start=sentinel_start,
                                            num_extra_ids=num_extra_ids):
      yield dict(example)

  def positioned_examples(self, documents: Iterable[tuple[np.ndarray, Any]], *, seed: int = 0,
                          sentinel_start: Optional[int] = None, num_extra_ids: int = 100,
                          start: Optional[dict] = None) -> Iterator[chunking.Tagged]:
    """`task_examples` over (document, source position) pairs, each example tagged with
    where a resume restarts it (`chunking.concat_and_split_positioned`); `start` (a
    tag's `where`) continues the stream there."""
    return self.reading.examples(self, documents, seed=seed, sentinel_start=sentinel_start,
                                 num_extra_ids=num_extra_ids, start=start)

  def model_rows(self, task_examples: Iterable[Mapping[str, np.ndarray]]
                 ) -> Iterator[dict[str, np.ndarray]]:
    """Model features (one dict per row) from this objective's task examples. Prefix LM
    rows do not depend on `pack`: one chunk per decoder row, two per encoder-decoder row
    (`prefix_lm.rows_from_examples`)."""
    return self.reading.rows(self, task_examples)

  def positioned_rows(self, documents: Iterable[tuple[np.ndarray, Any]], *, seed: int = 0,
                      sentinel_start: Optional[int] = None, num_extra_ids: int = 100,
                      start: Optional[dict] = None) -> Iterator[chunking.Tagged]:
    """Model rows over (document, source position) pairs, each tagged with the position a
    read restarts it at (`start=row.where` continues there, bit for bit)."""
    reading = self.reading
    if reading.direct_rows is not None:
      return reading.direct_rows(documents, self.length, seed=seed, start=start)
    return self.model_rows(self.positioned_examples(
        documents, seed=seed, sentinel_start=sentinel_start, num_extra_ids=num_extra_ids,
        start=start))

  def rows(self, documents: Iterable[np.ndarray], **kwargs) -> Iterator[dict[str, np.ndarray]]:
    """Model rows of tokenised documents (`positioned_rows` without positions)."""
    for row in self.positioned_rows(((d, None) for d in documents), **kwargs):
      yield dict(row)


# ----------------------------------------------------------------------------------------
# The table: how each architecture reads each objective
# ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Reading:
  """How one architecture reads one objective (a cell of `TABLE`); each callable takes
  the `Objective` first.

  lengths: the model feature lengths (`Objective.feature_lengths`).
  examples: (objective, documents, *, seed, sentinel_start, num_extra_ids, start) ->
    tagged task examples (`Objective.positioned_examples`).
  rows: (objective, task examples) -> model rows (`Objective.model_rows`).
  direct_rows: (documents, length, *, seed, start) -> tagged model rows made straight
    from the chunks (prefix LM), or None: `rows` of `examples`.
  examples_per_row: examples a row holds before packing.
  """
  lengths: Callable[["Objective"], dict[str, int]]
  examples: Callable[..., Iterator[chunking.Tagged]]
  rows: Callable[["Objective", Iterable[Mapping[str, np.ndarray]]],
                 Iterator[dict[str, np.ndarray]]]
  direct_rows: Optional[Callable[..., Iterator[chunking.Tagged]]] = None
  examples_per_row: float = 1.0


def _decoder_lengths(o: Objective) -> dict[str, int]:
  return {"decoder": o.length}


def _chunk_pair_lengths(o: Objective) -> dict[str, int]:
  return {"inputs": o.length, "targets": o.length}


def _mlm_decoder_lengths(o: Objective) -> dict[str, int]:
  inputs, targets = mlm_lengths(o.length, o.noise_density, o.mean_noise_span_length)
  return {"inputs": inputs, "targets": targets, "decoder": inputs + targets}


def _ul2_decoder_lengths(o: Objective) -> dict[str, int]:
  inputs, targets = ul2.ul2_lengths(o.length)
  return {"inputs": inputs, "targets": targets, "decoder": inputs + targets}


def _ul2_encoder_decoder_lengths(o: Objective) -> dict[str, int]:
  inputs, targets = ul2.ul2_lengths(o.length)
  return {"inputs": inputs, "targets": targets}


def _mlm_encoder_decoder_lengths(o: Objective) -> dict[str, int]:
  inputs, targets = mlm_lengths(o.length, o.noise_density, o.mean_noise_span_length)
  return {"inputs": inputs, "targets": targets}


def _full_lm_examples(o: Objective, documents, *, seed, start, **_):
  chunks = chunking.concat_and_split_positioned(documents, o.length, append_eos=True,
                                                seed=seed, start=start)
  return (chunking.tag({"targets": c}, where) for c, where in chunks)


def _prefix_lm_decoder_examples(o: Objective, documents, *, seed, start, **_):
  return prefix_lm.prefix_lm_examples_positioned(documents, o.length, seed=seed, start=start,
                                                 encoder_decoder=False)


def _prefix_lm_encoder_decoder_examples(o: Objective, documents, *, seed, start, **_):
  return prefix_lm.prefix_lm_examples_positioned(documents, o.length, seed=seed, start=start,
                                                 encoder_decoder=True)


def _span_corruption_examples(o: Objective, documents, *, seed, sentinel_start, num_extra_ids,
                              start):
  if sentinel_start is None:
    raise UserError("span corruption needs sentinel_start (the vocabulary size - 1, "
                    "32099 for the T5 vocabulary).")
  inputs_length = o.feature_lengths["inputs"]
  return span_corruption.span_corruption_positioned(
      documents, inputs_length, sentinel_start, seed=seed, num_extra_ids=num_extra_ids,
      noise_density=o.noise_density, mean_noise_span_length=o.mean_noise_span_length,
      start=start)


def _ul2_examples(o: Objective, documents, *, seed, sentinel_start, num_extra_ids, start):
  if sentinel_start is None:
    raise UserError("UL2 needs sentinel_start (the vocabulary size - 1, 32099 for the T5 "
                    "vocabulary).")
  lengths = o.feature_lengths
  mixture = ul2.Mixture(o.denoisers, lengths["inputs"], lengths["targets"], num_extra_ids)
  return ul2.ul2_positioned(documents, mixture, sentinel_start, seed=seed, start=start)


def _lm_rows(o: Objective, examples):
  return feature_converters.lm_rows(examples, o.length, o.pack)


def _lm_rows_causal_attention_off(o: Objective, examples):
  return _with_causal_attention_off(feature_converters.lm_rows(examples, o.length, o.pack))


def _prefix_lm_decoder_rows(o: Objective, examples):
  return prefix_lm.rows_from_examples(examples, o.length, encoder_decoder=False)


def _prefix_lm_encoder_decoder_rows(o: Objective, examples):
  return prefix_lm.rows_from_examples(examples, o.length, encoder_decoder=True)


def _inputs_targets_decoder_rows(o: Objective, examples):
  lengths = o.feature_lengths
  return feature_converters.prefix_lm_rows(examples, lengths["inputs"], lengths["targets"],
                                           o.pack)


def _inputs_targets_encoder_decoder_rows(o: Objective, examples):
  lengths = o.feature_lengths
  return feature_converters.encoder_decoder_rows(examples, lengths["inputs"],
                                                 lengths["targets"], o.pack)


_CD, _ND, _ED = (architectures.CAUSAL_DECODER, architectures.NON_CAUSAL_DECODER,
                 architectures.ENCODER_DECODER)

# (objective, architecture) -> how the architecture reads the objective (module docstring).
TABLE: dict[tuple[str, str], Reading] = {
    # full LM: 626-token chunks, loss on every token; the ND reads them causally
    (FULL_LM, _CD): Reading(_decoder_lengths, _full_lm_examples, _lm_rows),
    (FULL_LM, _ND): Reading(_decoder_lengths, _full_lm_examples,
                            _lm_rows_causal_attention_off),
    # prefix LM: a chunk per decoder row, two chunks per encoder-decoder row
    (PREFIX_LM, _CD): Reading(_decoder_lengths, _prefix_lm_decoder_examples,
                              _prefix_lm_decoder_rows,
                              direct_rows=prefix_lm.prefix_lm_decoder_positioned),
    (PREFIX_LM, _ND): Reading(_decoder_lengths, _prefix_lm_decoder_examples,
                              _prefix_lm_decoder_rows,
                              direct_rows=prefix_lm.prefix_lm_decoder_positioned),
    (PREFIX_LM, _ED): Reading(_chunk_pair_lengths, _prefix_lm_encoder_decoder_examples,
                              _prefix_lm_encoder_decoder_rows,
                              direct_rows=prefix_lm.prefix_lm_encoder_decoder_positioned,
                              examples_per_row=2.0),
    # span corruption: inputs ++ targets in a decoder row, or encoder inputs / decoder targets
    (SPAN_CORRUPTION, _CD): Reading(_mlm_decoder_lengths, _span_corruption_examples,
                                    _inputs_targets_decoder_rows),
    (SPAN_CORRUPTION, _ND): Reading(_mlm_decoder_lengths, _span_corruption_examples,
                                    _inputs_targets_decoder_rows),
    (SPAN_CORRUPTION, _ED): Reading(_mlm_encoder_decoder_lengths, _span_corruption_examples,
                                    _inputs_targets_encoder_decoder_rows),
    # UL2: one denoiser's inputs / targets per example, read as span corruption's are
    (UL2, _CD): Reading(_ul2_decoder_lengths, _ul2_examples, _inputs_targets_decoder_rows),
    (UL2, _ND): Reading(_ul2_decoder_lengths, _ul2_examples, _inputs_targets_decoder_rows),
    (UL2, _ED): Reading(_ul2_encoder_decoder_lengths, _ul2_examples,
                        _inputs_targets_encoder_decoder_rows),
}
# The pairs with no reading, and why.
NO_READING: dict[tuple[str, str], str] = {
    (FULL_LM, _ED): "objective 'full_lm' has no encoder-decoder form (there is nothing to "
                    "encode); the encoder-decoder's language-model objective is 'prefix_lm'.",
}


def _with_causal_attention_off(rows):
  """The ND reading full-LM rows: no position is a prefix, so it is causal everywhere."""
  for row in rows:
    row[DECODER_CAUSAL_ATTENTION] = np.zeros_like(row[DECODER_TARGET_TOKENS])
    yield row


def tokenize(texts: Iterable[str], encode: Callable[[str], list[int]]) -> Iterator[np.ndarray]:
  """Token id arrays of documents (no EOS added; the objectives place it)."""
  for text in texts:
    yield np.asarray(encode(text), np.int32)
