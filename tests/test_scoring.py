"""`evaluation.scoring`: batched, bucketed scores against one unpadded forward pass per
(context, continuation) for the CD, ND and ED, greedy flags, batch builders, shapes."""
import functools

import jax
import numpy as np
import pytest

from arch_objective import build_model, models
from arch_objective.evaluation import scoring
from arch_objective.evaluation.scoring import Request

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
ARCHS = (CD, ND, ED)
VOCAB = 256


@functools.lru_cache(maxsize=None)
def tiny(arch):
  """One layer per stack, an untied output layer, a 256-id vocabulary: fast to compile."""
  return build_model(arch, "tiny", dtype="float32", num_encoder_layers=1,
                     num_decoder_layers=1, logits_via_embedding=False, vocab_size=VOCAB)


@functools.lru_cache(maxsize=None)
def random_params(family):
  """Random N(0, 1/fan_in) weights (norm scales 1), drawn with numpy; the CD and ND share
  the decoder's."""
  model = tiny(ED if family == "ed" else CD)
  rng = np.random.default_rng(0 if family == "decoder" else 1)
  shapes = model.abstract_variables(models.default_input_shapes(model.name, 1, 8, 8, 8))

  def draw(path, leaf):
    if path[-1].key == "scale":
      return np.ones(leaf.shape, np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return rng.normal(0.0, fan_in ** -0.5, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def model_and_params(arch):
  return tiny(arch), random_params("ed" if arch == ED else "decoder")


@functools.lru_cache(maxsize=None)
def compiled_logits(arch):
  return jax.jit(tiny(arch).compute_logits)


def direct(arch, params, prompt, choice):
  """(summed log p(choice), every choice token the argmax) from one forward pass over the
  unpadded features, built here by hand: log-softmax in float64, summed over the choice.

  Decoder-only: the row `prompt ++ choice`, inputs shifted right from 0, causal attention
  flags on the prompt and one position more. ED: the prompt as encoder input (an empty one
  is a single padding token), the choice as decoder targets from start token 0.
  """
  prompt, choice = np.asarray(prompt, np.int32), np.asarray(choice, np.int32)
  if arch == ED:
    enc = prompt if len(prompt) else np.zeros((1,), np.int32)
    batch = {"encoder_input_tokens": enc[None], "decoder_target_tokens": choice[None],
             "decoder_input_tokens": np.concatenate([[0], choice[:-1]])[None].astype(np.int32),
             "decoder_loss_weights": np.ones((1, len(choice)), np.int32)}
    start = 0
  else:
    row = np.concatenate([prompt, choice]).astype(np.int32)
    n = len(row)
    batch = {"decoder_target_tokens": row[None],
             "decoder_input_tokens": np.concatenate([[0], row[:-1]])[None].astype(np.int32),
             "decoder_loss_weights": (np.arange(n) >= len(prompt))[None].astype(np.int32),
             "decoder_causal_attention": (np.arange(n) <= len(prompt))[None].astype(np.int32)}
    start = len(prompt)
  logits = np.asarray(compiled_logits(arch)(params, batch), np.float64)[0, start:]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  total = float(log_probs[np.arange(len(choice)), choice].sum())
  return total, bool((logits.argmax(-1) == choice).all())


def greedy_choice(arch, params, prompt, steps):
  """The model's own greedy continuation of `prompt`, `steps` tokens (by direct passes)."""
  choice = []
  for _ in range(steps):
    probe = np.asarray(choice + [2], np.int32)
    prompt_ = np.asarray(prompt, np.int32)
    if arch == ED:
      batch = {"encoder_input_tokens": prompt_[None],
               "decoder_input_tokens": np.concatenate([[0], probe[:-1]])[None].astype(np.int32),
               "decoder_target_tokens": probe[None]}
    else:
      row = np.concatenate([prompt_, probe]).astype(np.int32)
      n = len(row)
      batch = {"decoder_target_tokens": row[None],
               "decoder_input_tokens": np.concatenate([[0], row[:-1]])[None].astype(np.int32),
               "decoder_causal_attention":
                   (np.arange(n) <= len(prompt_))[None].astype(np.int32)}
    logits = np.asarray(compiled_logits(arch)(params, batch))[0]
    choice.append(int(logits[-1].argmax()))
  assert 0 not in choice                   # a 0 would read as padding
  return np.asarray(choice, np.int32)


# Prompt lengths (0: an empty context) and choice lengths from small sets, so that the
# direct passes compile few shapes; the scorer packs them into several buckets.
PROMPT_LENGTHS = (0, 3, 9, 21)
CHOICE_LENGTHS = (1, 4, 7)


def make_requests(seed, n=9):
  rng = np.random.default_rng(seed)
  ids = lambda k: rng.integers(2, VOCAB, k).astype(np.int32)
  return [Request(ids(PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)]),
                  tuple(ids(int(rng.choice(CHOICE_LENGTHS)))
                        for _ in range(int(rng.integers(1, 4)))))
          for i in rng.permutation(n)]


@functools.lru_cache(maxsize=None)
def references(arch):
  model, params = model_and_params(arch)
  requests = make_requests(ARCHS.index(arch))
  expected = [[direct(arch, params, r.prompt, c) for c in r.choices] for r in requests]
  return requests, expected


@pytest.mark.parametrize("shapes", scoring.SHAPES)
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_batches_equal_one_direct_pass_per_request(arch, shapes):
  model, params = model_and_params(arch)
  requests, expected = references(arch)
  # Small batches: several batches per length bucket, several buckets.
  scorer = scoring.Scorer(model, params, max_tokens=96, shapes=shapes)
  results = scorer.score(requests, greedy=True)
  assert len(results) == len(requests)
  assert scorer.computed["batches"] >= 3
  for r, result, ref in zip(requests, results, expected):
    assert result.scores.shape == (len(r.choices),) and result.scores.dtype == np.float64
    assert result.greedy.shape == (len(r.choices),) and result.greedy.dtype == bool
    np.testing.assert_allclose(result.scores, [s for s, _ in ref], atol=1e-4, rtol=1e-5)
    assert result.greedy.tolist() == [g for _, g in ref]
  assert all((res.scores < 0).all() for res in results)
  assert len({round(float(x), 3) for res in results for x in res.scores}) > 10
  normalized = scorer.score(requests, normalize=True)
  for r, res, ref in zip(requests, normalized, expected):
    assert res.greedy is None
    np.testing.assert_allclose(res.scores, [s / len(c) for (s, _), c in zip(ref, r.choices)],
                               atol=1e-4, rtol=1e-5)


def test_the_non_causal_decoder_reads_its_prefix_bidirectionally():
  requests, cd = references(CD)
  _, nd = references(ND)
  with_prompt = [(a, b) for r, x, y in zip(requests, cd, nd) if len(r.prompt) > 1
                 for (a, _), (b, _) in zip(x, y)]
  assert all(abs(a - b) > 1e-4 for a, b in with_prompt)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_flag_is_true_for_the_models_own_continuation(arch):
  model, params = model_and_params(arch)
  prompt = np.random.default_rng(5).integers(2, VOCAB, 9).astype(np.int32)
  greedy = greedy_choice(arch, params, prompt, 4)
  other = greedy.copy()
  other[-1] = (other[-1] + 1) % VOCAB or 2
  scorer = scoring.Scorer(model, params, max_tokens=64, shapes=scoring.POW2)
  result = scorer.score([Request(prompt, (greedy, other))], greedy=True)[0]
  assert result.greedy.tolist() == [True, False]
  assert result.scores[0] > result.scores[1]
  np.testing.assert_allclose(result.scores[0], direct(arch, params, prompt, greedy)[0],
                             atol=1e-4, rtol=1e-5)


def test_one_shape_computes_one_batch_shape():
  model, params = model_and_params(CD)
  requests, _ = references(CD)
  scorer = scoring.Scorer(model, params, max_tokens=128, shapes=scoring.ONE_SHAPE)
  scorer.score(requests)
  longest = scoring.bucket(max(len(r.prompt) + len(c) for r in requests for c in r.choices))
  rows = scoring.batch_rows(128, longest)
  assert scorer.computed["decoder_positions"] == scorer.computed["batches"] * rows * longest


def test_ed_encodes_each_prompt_once_per_batch():
  model, params = model_and_params(ED)
  requests, _ = references(ED)
  scorer = scoring.Scorer(model, params, max_tokens=16384, shapes=scoring.POW2)
  scorer.score(requests)
  # One batch per encoder length bucket: 7 prompts of 0 to 9 tokens in 16 positions
  # (8 rows), 2 of 21 in 32 (2 rows).
  assert sorted(len(r.prompt) for r in requests) == [0, 0, 0, 3, 3, 9, 9, 21, 21]
  assert scorer.computed["batches"] == 2
  assert scorer.computed["encoder_positions"] == 16 * 8 + 32 * 2


def test_requests_are_checked():
  model, params = model_and_params(CD)
  scorer = scoring.Scorer(model, params)
  assert scorer.score([]) == []
  with pytest.raises(ValueError, match="request 1"):
    scorer.score([Request(np.asarray([5, 6], np.int32), (np.asarray([7, 1], np.int32),)),
                  Request(np.asarray([5, 6], np.int32), (np.zeros((0,), np.int32),))])
  with pytest.raises(ValueError, match="request 0"):
    scorer.score([Request(np.asarray([5], np.int32), ())])
  with pytest.raises(ValueError, match="unknown shapes"):
    scoring.Scorer(model, params, shapes="exact")


# -- shapes and batch builders ---------------------------------------------------------------

def test_buckets():
  assert [scoring.pow2(n) for n in (0, 1, 2, 3, 5, 16, 17)] == [1, 1, 2, 4, 8, 16, 32]
  assert [scoring.bucket(n) for n in (0, 1, 16, 17, 40)] == [16, 16, 16, 32, 64]
  assert [scoring.fine_bucket(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12,
                                                            12, 12, 16]
  assert [scoring.fine_bucket(n, 16) for n in (1, 17, 25, 33, 49)] == [16, 24, 32, 48, 64]
  assert [scoring.batch_rows(64, n) for n in (16, 24, 32, 100)] == [4, 2, 2, 1]


def test_ed_chunks_stay_within_the_budget():
  requests = [Request(np.ones(3, np.int32), (np.ones(5, np.int32),) * k) for k in (1, 2, 3, 1)]
  chunks = list(scoring.ed_chunks(range(4), requests, 16, 64))
  # costs 16 + 16 k: 32, 48, 64, 32
  assert chunks == [[0], [1], [2], [3]]
  assert list(scoring.ed_chunks(range(4), requests, 16, 96)) == [[0, 1], [2, 3]]
  fine = list(scoring.ed_chunks(range(4), requests, 16, 64, lambda n: scoring.fine_bucket(n, 4)))
  assert fine == [[0, 1], [2, 3]]      # costs 22, 28, 34, 22


def test_decoder_batch_features():
  batch = scoring.decoder_batch([([5, 6], [7, 1]), ([], [9])], length=6, rows=3)
  assert set(batch) == {"decoder_input_tokens", "decoder_target_tokens",
                        "decoder_loss_weights", "decoder_causal_attention"}
  assert all(v.shape == (3, 6) and v.dtype == np.int32 for v in batch.values())
  assert batch["decoder_target_tokens"].tolist()[:2] == [[5, 6, 7, 1, 0, 0], [9, 0, 0, 0, 0, 0]]
  assert batch["decoder_input_tokens"].tolist()[:2] == [[0, 5, 6, 7, 1, 0], [0, 9, 0, 0, 0, 0]]
  assert batch["decoder_loss_weights"].tolist()[:2] == [[0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]]
  assert batch["decoder_causal_attention"].tolist() == [[1, 1, 1, 0, 0, 0],
                                                        [1, 0, 0, 0, 0, 0], [0] * 6]


def test_ed_batch_builders():
  enc = scoring.encoder_batch([np.asarray([4, 5, 6]), np.zeros(0, np.int32)], 4, 4)
  assert enc.tolist() == [[4, 5, 6, 0], [0] * 4, [0] * 4, [0] * 4] and enc.dtype == np.int32
  idx, targets = scoring.ed_decoder_batch([(1, [7, 1]), (0, [8, 9, 1])], 4, 4)
  assert idx.tolist() == [1, 0, 0, 0] and idx.dtype == np.int32
  assert targets.tolist() == [[7, 1, 0, 0], [8, 9, 1, 0], [0] * 4, [0] * 4]
