"""UL2's mixture of denoisers (Tay et al. 2022, arXiv 2205.05131): every example is one
denoiser's, drawn with the mixture's rates, its inputs led by the denoiser's paradigm token.

  R (regular)     span corruption, mean span 3 and 8 at noise density 0.15   [NLU]
  X (extreme)     spans 3 and 8 at density 0.5, span 64 at 0.15 and at 0.5   [NLG]
  S (sequential)  prefix LM: a split uniform in [1, n - 1], the rest to predict  [S2S]

(the UL2 paper's section 3.1.2, table 1; `PAPER_DENOISERS`). A span denoiser is T5's span
corruption (`span_corruption.corrupt`: noise spans replaced by sentinels counting down
from `<extra_id_0>`, targets the spans after their sentinels, both ending in EOS); the S
denoiser keeps a chunk's first `split` tokens as inputs and the rest as targets, both
ending in EOS, as t5's `prefix_lm` preprocessor with `random_prefix_noise_mask` at
density 0.5 does. The paradigm token is prepended to the inputs.

Example (200 ids, the last 100 extra: `<extra_id_0>` = 199 the first sentinel, [NLU] =
`<extra_id_99>` = 100, [S2S] = `<extra_id_97>` = 102):
  R, tokens 10..17, noise [12 13] and [16]:
    inputs  100 10 11 199 14 15 198 17 1      targets 199 12 13 198 16 197 1
  S, tokens 10..15, split 2:
    inputs  102 10 11 1                       targets 12 13 14 15 1

Every example of every denoiser fits the same task feature lengths, `ul2_lengths(L)`:
inputs and targets of L // 2 and L - L // 2 (313 / 313 at the paper's 626), so one
task serves the three architectures as span corruption does (decoders read `inputs ++
targets` in rows of L, the encoder-decoder inputs / targets). Each denoiser reads chunks
of the longest raw length whose inputs (with the paradigm token and EOS) and targets fit
them and whose spans have a sentinel each (`Denoiser.chunk_length`).

Fidelity to t5's `ul2_objective` (google-research/text-to-text-transfer-transformer) and
where this differs, following the paper:
  - the reference gives each denoiser its own shard of the documents and samples the
    shards' examples with the rates; here one stream is cut into chunks and chunk k's
    denoiser is a stateless draw keyed by (seed, k), so the shares are the rates and a
    resume at chunk k continues exactly (`chunking.concat_and_split_positioned`);
  - the reference encodes the paradigm strings with the vocabulary (several pieces) and
    lets seqio trim the inputs; here each paradigm token is one reserved extra id (the
    last ones: [NLU] `<extra_id_{E-1}>`, [NLG] `<extra_id_{E-2}>`, [S2S]
    `<extra_id_{E-3}>` of E extra ids), counted in the inputs' length, and span sentinels
    use the extra ids below them;
  - the reference's rates default to uniform over the denoisers when none are given:
    `PAPER_RATES` is that, 1/7 each (the S denoiser's share 14%); gin sets others.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from arch_objective.errors import UserError
from arch_objective.objectives import chunking, span_corruption

_SALT_DRAW = 4
_SALT_DENOISE = 5
PARADIGMS = ("[NLU]", "[NLG]", "[S2S]")          # R, X, S; the paradigm tokens' names
KINDS = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """One denoiser: `kind` R, X (span corruption at `mean_span` and `density`) or S
  (prefix LM), and its `rate` in the mixture (rates are normalised over the mixture)."""
  kind: str
  mean_span: float = 3.0
  density: float = 0.15
  rate: float = 1.0

  def __post_init__(self):
    if self.kind not in KINDS:
      raise UserError(f"UL2 denoiser kind must be one of {', '.join(KINDS)}, found "
                      f"{self.kind!r}.")
    if self.kind != "S" and not (0 < self.density < 1 and self.mean_span >= 1):
      raise UserError(f"UL2 {self.kind}-denoiser needs 0 < density < 1 and mean_span >= 1, "
                      f"found density {self.density}, mean_span {self.mean_span}.")
    if not self.rate > 0:
      raise UserError(f"UL2 {self.name} denoiser's rate must be > 0, found {self.rate}.")

  @property
  def name(self) -> str:
    return "S" if self.kind == "S" else f"{self.kind}(span {self.mean_span:g}, {self.density:g})"

  @property
  def paradigm(self) -> str:
    return KINDS[self.kind]

  def lengths(self, tokens: int) -> tuple[int, int, int]:
    """(inputs, targets, spans) of a chunk of `tokens` raw tokens, the paradigm token
    and EOS counted; for S the longest split's (n - 1 tokens of inputs, n - 1 of
    targets at split 1)."""
    if self.kind == "S":
      return tokens - 1 + 2, tokens - 1 + 1, 0
    noise, spans = span_corruption._counts(max(tokens, 2), self.density, self.mean_span)
    return 1 + tokens - noise + spans + 1, noise + spans + 1, spans

  def chunk_length(self, inputs_length: int, targets_length: int, sentinels: int) -> int:
    """The longest chunk whose example fits `inputs_length` / `targets_length` with a
    sentinel for each span (raises when not even 2 tokens fit)."""
    best = 0
    for tokens in range(2, inputs_length + targets_length + 2):
      inputs, targets, spans = self.lengths(tokens)
      if inputs <= inputs_length and targets <= targets_length and spans <= sentinels:
        best = tokens
      elif inputs > inputs_length and targets > targets_length:
        break
    if best < 2:
      raise UserError(f"UL2 {self.name}: no chunk of 2 or more tokens fits inputs "
                      f"{inputs_length} / targets {targets_length}; use a longer length.")
    return best


PAPER_DENOISERS = (Denoiser("R", 3, 0.15), Denoiser("R", 8, 0.15),
                   Denoiser("X", 3, 0.5), Denoiser("X", 8, 0.5),
                   Denoiser("X", 64, 0.15), Denoiser("X", 64, 0.5),
                   Denoiser("S"))
PAPER_RATES = tuple(1 / len(PAPER_DENOISERS) for _ in PAPER_DENOISERS)


def ul2_lengths(length: int) -> tuple[int, int]:
  """(inputs, targets) task feature lengths of UL2 at row length `length`:
  `ul2_lengths(626) == (313, 313)`."""
  if length < 8:
    raise UserError(f"UL2 needs a length >= 8, found {length}.")
  return length // 2, length - length // 2


def paradigm_ids(sentinel_start: int, num_extra_ids: int) -> dict[str, int]:
  """The ids of the paradigm tokens: the last extra ids, [NLU] first."""
  return {name: sentinel_start - (num_extra_ids - 1 - i) for i, name in enumerate(PARADIGMS)}


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The denoisers with their rates at task feature lengths (inputs, targets)."""
  denoisers: tuple[Denoiser, ...] = PAPER_DENOISERS
  inputs_length: int = 313
  targets_length: int = 313
  num_extra_ids: int = 100

  def __post_init__(self):
    if not self.denoisers:
      raise UserError("UL2 needs at least one denoiser.")
    if self.num_extra_ids < len(PARADIGMS) + 2:
      raise UserError(f"UL2 needs {len(PARADIGMS)} extra ids for its paradigm tokens and at "
                      f"least 2 sentinels; the vocabulary has {self.num_extra_ids}.")

  @property
  def sentinels(self) -> int:
    return self.num_extra_ids - len(PARADIGMS)

  @functools.cached_property
  def probabilities(self) -> np.ndarray:
    rates = np.array([d.rate for d in self.denoisers], np.float64)
    return rates / rates.sum()

  @functools.cached_property
  def chunk_lengths(self) -> tuple[int, ...]:
    return tuple(d.chunk_length(self.inputs_length, self.targets_length, self.sentinels)
                 for d in self.denoisers)

  def draw(self, seed: int, chunk: int) -> int:
    """The index of chunk `chunk`'s denoiser (stateless in (seed, chunk))."""
    u = chunking.example_rng(seed, _SALT_DRAW, chunk).random()
    return int(min(np.searchsorted(np.cumsum(self.probabilities), u, side="right"),
                   len(self.denoisers) - 1))

  def chunk_length(self, seed: int, chunk: int) -> int:
    return self.chunk_lengths[self.draw(seed, chunk)]


def denoise(tokens: np.ndarray, denoiser: Denoiser, rng: np.random.Generator,
            sentinel_start: int, num_extra_ids: int) -> dict[str, np.ndarray]:
  """One UL2 example `{'inputs', 'targets'}` of a chunk (layouts in the module
  docstring)."""
  tokens = np.asarray(tokens, np.int32)
  token = np.array([paradigm_ids(sentinel_start, num_extra_ids)[denoiser.paradigm]], np.int32)
  eos = np.array([chunking.EOS_ID], np.int32)
  if denoiser.kind == "S":
    split = int(rng.integers(1, len(tokens))) if len(tokens) >= 2 else len(tokens)
    return {"inputs": np.concatenate([token, tokens[:split], eos]),
            "targets": np.concatenate([tokens[split:], eos])}
  example = span_corruption.corrupt(tokens, rng, sentinel_start, denoiser.density,
                                    denoiser.mean_span)
  return {"inputs": np.concatenate([token, example["inputs"]]), "targets": example["targets"]}


def ul2_positioned(documents: Iterable[tuple[np.ndarray, Any]], mixture: Mixture,
                   sentinel_start: int, *, seed: int = 0, start: Optional[dict] = None
                   ) -> Iterator[chunking.Tagged]:
  """UL2 examples from (document, source position) pairs: documents concatenated without
  EOS (as span corruption), chunk k cut to its denoiser's length and denoised, tagged
  with its `where` (`start` resumes there)."""
  chunks = chunking.concat_and_split_positioned(
      documents, functools.partial(mixture.chunk_length, seed), append_eos=False, seed=seed,
      start=start)
  for chunk, where in chunks:
    denoiser = mixture.denoisers[mixture.draw(seed, where["chunk"])]
    example = denoise(chunk, denoiser, chunking.example_rng(seed, _SALT_DENOISE, where["chunk"]),
                      sentinel_start, mixture.num_extra_ids)
    yield chunking.tag(example, where)


def check_paradigm(paradigm: Optional[str], option: str = "paradigm") -> Optional[str]:
  """`paradigm` if it names a paradigm token, None for None or ''; raises otherwise."""
  if paradigm in (None, ""):
    return None
  if paradigm not in PARADIGMS:
    raise UserError(f"{option} must be one of {', '.join(PARADIGMS)} (UL2's paradigm "
                    f"tokens), found {paradigm!r}.")
  return paradigm


def paradigm_prefix(paradigm: Optional[str], vocab_size: int, extra_ids: int,
                    option: str = "paradigm") -> tuple[int, ...]:
  """The token ids a prompt starts with in UL2's mode switching: () for None, else the
  one id of `paradigm` ([NLU], [NLG] or [S2S]) in a vocabulary of `vocab_size` ids whose
  last `extra_ids` are extra ids."""
  if not check_paradigm(paradigm, option):
    return ()
  if extra_ids < len(PARADIGMS):
    raise UserError(f"{option} {paradigm}: the vocabulary has {extra_ids} extra ids; UL2's "
                    f"paradigm tokens are its last {len(PARADIGMS)}.")
  return (paradigm_ids(vocab_size - 1, extra_ids)[paradigm],)


def which_denoiser(example: dict, sentinel_start: int, num_extra_ids: int) -> str:
  """The paradigm ([NLU], [NLG] or [S2S]) of an example, read from its first input token."""
  names = {v: k for k, v in paradigm_ids(sentinel_start, num_extra_ids).items()}
  first = int(example["inputs"][0])
  if first not in names:
    raise UserError(f"not a UL2 example: its first input token {first} is no paradigm token "
                    f"({names}).")
  return names[first]


def decoder_with_paradigms(decode, sentinel_start: int, num_extra_ids: int):
  """`decode` (ids -> text) that writes the paradigm tokens by name."""
  names = {v: k for k, v in paradigm_ids(sentinel_start, num_extra_ids).items()}

  def decode_with_names(ids) -> str:
    parts, run = [], []
    for i in list(ids):
      if int(i) in names:
        parts += ([decode(run)] if run else []) + [names[int(i)]]
        run = []
      else:
        run.append(i)
    return " ".join(parts + ([decode(run)] if run else []))
  return decode_with_names


def denoisers_from(specs: Sequence[Sequence[Any]]) -> tuple[Denoiser, ...]:
  """Denoisers from gin-friendly tuples: ('R', 3, 0.15, rate), ('S', rate)."""
  out = []
  for spec in specs:
    if isinstance(spec, Denoiser):
      out.append(spec)
      continue
    spec = tuple(spec)
    if spec and spec[0] == "S":
      out.append(Denoiser("S", rate=float(spec[1]) if len(spec) > 1 else 1.0))
    elif len(spec) in (3, 4):
      out.append(Denoiser(spec[0], float(spec[1]), float(spec[2]),
                          float(spec[3]) if len(spec) == 4 else 1.0))
    else:
      raise UserError(f"UL2 denoiser {spec!r}: expected ('R'|'X', mean_span, density"
                      f"[, rate]) or ('S'[, rate]).")
  if not out:
    raise UserError("UL2 needs at least one denoiser.")
  return tuple(out)
