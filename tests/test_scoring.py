"""`evaluation.scoring`: batched, bucketed scores against one unpadded forward pass per
(context, continuation) for the CD, ND and ED, greedy flags, batch builders, shapes."""
import functools

import jax
import numpy as np
import pytest

from arch_objective import layers, models
from arch_objective.evaluation import scoring
from arch_objective.evaluation.scoring import Request

import helpers

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
ARCHS = (CD, ND, ED)
VOCAB = 256


@functools.lru_cache(maxsize=None)
def tiny(arch):
  """`helpers.one_layer_model` with a 256-id vocabulary."""
  return helpers.one_layer_model(arch, VOCAB)


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


# -- an independent reference: the tiny models' forward pass in numpy, float64 -------------

def _rms(x, scale):
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def _gelu(x):                                     # flax's nn.gelu: the tanh approximation
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _relpos(table, q, k, bidirectional):
  """T5's relative position bias `[h, q, k]` of `table [h, 32]` (buckets: max distance 128)."""
  rel = np.arange(k)[None, :] - np.arange(q)[:, None]
  return table[:, layers.relative_position_bucket(rel, bidirectional, 32, 128)]


def _attention(p, x_q, x_kv, mask, bias):
  """`x_q [q, d]`, `x_kv [k, d]`, mask `[q, k]` (0/1), bias `[h, q, k]` -> `[q, d]`."""
  c = tiny(CD).config
  h, e = c.num_heads, c.head_dim
  q, k, v = (x @ p[n]["kernel"] for x, n in ((x_q, "query"), (x_kv, "key"), (x_kv, "value")))
  q, k, v = (t.reshape(len(t), h, e) for t in (q, k, v))
  logits = np.einsum("qhd,khd->hqk", q, k) + bias + np.where(mask > 0, 0.0, -1e10)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("hqk,khd->qhd", weights, v).reshape(len(x_q), h * e) @ p["out"]["kernel"]


def _mlp(p, x):
  return (_gelu(x @ p["wi_0"]["kernel"]) * (x @ p["wi_1"]["kernel"])) @ p["wo"]["kernel"]


def numpy_logits(arch, params, batch):
  """Logits `[l, v]` (float64) of the one-row `batch`, computed from the parameters alone:
  T5.1.1 pre-norm layers (one per stack), relative position biases, masks from the
  features as the models build them (spec §1): causal, OR the prefix both ways for the
  ND, AND not padding; the ED's encoder bidirectional, its cross-attention on the
  non-padding encoder tokens."""
  f64 = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  inputs = np.asarray(batch["decoder_input_tokens"])[0]
  real = np.asarray(batch["decoder_target_tokens"])[0] > 0
  n = len(inputs)
  mask = np.tril(np.ones((n, n), bool))
  if arch == ND:
    dca = np.asarray(batch["decoder_causal_attention"])[0] > 0
    mask |= dca[:, None] & dca[None, :]
  mask &= real[:, None] & real[None, :]
  if arch != ED:
    dec = f64["decoder"]
    x = dec["token_embedder"]["embedding"][inputs]
    layer = dec["layers_0"]
    bias = _relpos(layer["relpos_bias"]["rel_embedding"], n, n, False)
  else:
    enc_tokens = np.asarray(batch["encoder_input_tokens"])[0]
    enc_real = enc_tokens > 0
    embedding = f64["token_embedder"]["embedding"]
    encoder = f64["encoder"]
    y = embedding[enc_tokens]
    layer = encoder["layers_0"]
    enc_bias = _relpos(encoder["relpos_bias"]["rel_embedding"], len(y), len(y), True)
    normed = _rms(y, layer["pre_attention_layer_norm"]["scale"])
    y = y + _attention(layer["attention"], normed, normed,
                       enc_real[:, None] & enc_real[None, :], enc_bias)
    y = y + _mlp(layer["mlp"], _rms(y, layer["pre_mlp_layer_norm"]["scale"]))
    encoded = _rms(y, encoder["encoder_norm"]["scale"])
    dec = f64["decoder"]
    x = embedding[inputs]
    layer = dec["layers_0"]
    bias = _relpos(dec["relpos_bias"]["rel_embedding"], n, n, False)
  y = _rms(x, layer["pre_self_attention_layer_norm"]["scale"])
  x = x + _attention(layer["self_attention"], y, y, mask, bias)
  if arch == ED:
    y = _rms(x, layer["pre_cross_attention_layer_norm"]["scale"])
    x = x + _attention(layer["encoder_decoder_attention"], y, encoded,
                       real[:, None] & enc_real[None, :], 0.0)
  x = x + _mlp(layer["mlp"], _rms(x, layer["pre_mlp_layer_norm"]["scale"]))
  return _rms(x, dec["decoder_norm"]["scale"]) @ dec["logits_dense"]["kernel"]


def direct(arch, params, prompt, choice):
  """(summed log p(choice), every choice token the argmax) from one forward pass over the
  unpadded features, built here by hand, in numpy (`numpy_logits`): log-softmax in
  float64, summed over the choice.

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
  logits = numpy_logits(arch, params, batch)[start:]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  total = float(log_probs[np.arange(len(choice)), choice].sum())
  return total, bool((logits.argmax(-1) == choice).all())


def greedy_choice(arch, params, prompt, steps):
  """The model's own greedy continuation of `prompt`, `steps` tokens (by `numpy_logits`)."""
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
    choice.append(int(numpy_logits(arch, params, batch)[-1].argmax()))
  assert 0 not in choice                   # a 0 would read as padding
  return np.asarray(choice, np.int32)


# Prompt lengths (0: an empty context) and choice lengths from small sets; the scorer packs
# them into several buckets.
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


@pytest.mark.parametrize("arch", ARCHS)
def test_the_numpy_reference_is_the_models_forward_pass(arch):
  # One row with padding on every side (targets, and the ED's encoder input): the numpy
  # forward pass gives the model's logits at every real position.
  model, params = model_and_params(arch)
  rng = np.random.default_rng(3)
  targets = np.zeros((1, 12), np.int32)
  targets[0, :9] = rng.integers(2, VOCAB, 9)
  batch = {"decoder_target_tokens": targets,
           "decoder_input_tokens": np.concatenate([[[0]], targets[:, :-1]], axis=1)}
  if arch == ED:
    enc = np.zeros((1, 8), np.int32)
    enc[0, :5] = rng.integers(2, VOCAB, 5)
    batch["encoder_input_tokens"] = enc
  else:
    batch["decoder_causal_attention"] = (np.arange(12) <= 4)[None].astype(np.int32)
  expected = np.asarray(jax.jit(model.compute_logits)(params, batch))[0, :9]
  np.testing.assert_allclose(numpy_logits(arch, params, batch)[:9], expected, rtol=1e-4,
                             atol=1e-4)


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
  # `normalize` is an argument of the compiled programs, not a constant: the same
  # programs divide by each choice's length.
  normalized = scorer.score(requests, normalize=True, greedy=True)
  for r, res, ref in zip(requests, normalized, expected):
    assert res.greedy.tolist() == [g for _, g in ref]
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
  assert all(result.greedy is None for result in scorer.score(requests))   # not asked
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


@pytest.mark.parametrize("shapes", [scoring.FINE, scoring.ONE_SHAPE])
def test_ed_cross_attention_keys_and_values_projected_once_per_prompt(shapes):
  # FINE runs the split programs (encode, then decode per choice length), ONE_SHAPE the
  # joint one. Projecting the cross-attention keys/values once per prompt and gathering
  # them per row gives the per-row projection's scores and flags (bit for bit on CPU; the
  # bound allows other matmul blockings elsewhere).
  # The requests of one encoder and one choice length bucket, in one batch: rows of
  # several prompts, gathered in another order than the prompts'.
  model, params = model_and_params(ED)
  requests = [r for r in make_requests(ARCHS.index(ED))
              if len(r.prompt) <= 9 and max(map(len, r.choices)) <= 4]
  assert len(requests) >= 3 and sum(len(r.choices) for r in requests) > len(requests)
  once = scoring.Scorer(model, params, shapes=shapes)
  per_row = scoring.Scorer(model, params, shapes=shapes, cross_kv_per_prompt=False)
  for a, b in zip(once.score(requests, greedy=True), per_row.score(requests, greedy=True)):
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    assert a.greedy.tolist() == b.greedy.tolist()
  # The keys/values of each encoder position are projected once, not once per choice.
  counts = once.computed
  assert counts["cross_attention_key_positions"] == counts["encoder_positions"]
  assert (per_row.computed["cross_attention_key_positions"]
          > per_row.computed["encoder_positions"] == counts["encoder_positions"])


@pytest.mark.parametrize("shapes", [scoring.FINE, scoring.POW2, scoring.ONE_SHAPE])
def test_cross_kv_max_bytes_splits_the_prompts_of_a_batch(shapes):
  """A budget of two prompts' keys and values: every batch holds at most that (prompts
  padded), the prompts are split over more batches, and the scores do not change."""
  model, params = model_and_params(ED)
  requests = [r for r in make_requests(ARCHS.index(ED))
              if len(r.prompt) <= 9 and max(map(len, r.choices)) <= 4]
  free = scoring.Scorer(model, params, shapes=shapes)
  expected = free.score(requests, greedy=True)
  c = model.config                # per position: layers x (keys, values) x heads x dims x 4 B
  assert free.cross_kv_bytes(1, 10) == c.num_decoder_layers * 2 * 10 * c.num_heads * c.head_dim * 4
  budget = free.cross_kv_bytes(2, 16)            # two prompts of the (only) 16-token bucket
  assert free.computed["cross_kv_bytes"] > budget  # unbounded, one batch holds them all
  bounded = scoring.Scorer(model, params, shapes=shapes, cross_kv_max_bytes=budget)
  for a, b in zip(bounded.score(requests, greedy=True), expected):
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    assert a.greedy.tolist() == b.greedy.tolist()
  assert bounded.computed["cross_kv_bytes"] == budget
  # Below one prompt's worth, each batch still takes one prompt.
  single = scoring.Scorer(model, params, shapes=shapes, cross_kv_max_bytes=1)
  for a, b in zip(single.score(requests), expected):
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
  assert single.computed["cross_kv_bytes"] == free.cross_kv_bytes(1, 16)
  with pytest.raises(ValueError, match="cross_kv_max_bytes must be a positive"):
    scoring.Scorer(model, params, cross_kv_max_bytes=0)


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


def test_merge_length_groups_weighs_padding_against_new_programs():
  groups = [(4, 2), (8, 1), (48, 6)]             # (padded length, rows), ascending
  # Free programs: every group apart (8 + 8 + 288 positions).
  assert scoring.merge_length_groups(groups, 0) == [(0, 1), (1, 2), (2, 3)]
  # 20 a program: 2 + 1 rows of 8 (24 + 20) beat 8 + 20 + 8 + 20; 12 rows of 48 do not.
  assert scoring.merge_length_groups(groups, 20) == [(0, 2), (2, 3)]
  # 1000 a program: one batch of fine_bucket(9) = 12 rows of 48 (576 + 1000).
  assert scoring.merge_length_groups(groups, 1000) == [(0, 3)]
  # A shape compiled before is free: 2 rows of 4 and 1 of 8 stay apart when both exist.
  known = {(2, 4), (1, 8)}
  assert scoring.merge_length_groups(groups, 20, known=lambda r, n: (r, n) in known) == [
      (0, 1), (1, 2), (2, 3)]
  assert scoring.merge_length_groups([(8, 1)], 5) == [(0, 1)]
  assert scoring.merge_length_groups([], 5) == []


def test_new_program_cost_trades_decode_programs_for_padding_not_scores():
  """ED, FINE: merging choice-length buckets cuts the decode batches (and so programs),
  computes more padded positions, and gives the same scores and greedy flags; a second
  call reuses the shapes the first compiled."""
  model, params = model_and_params(ED)
  requests = make_requests(ARCHS.index(ED), n=12)
  apart = scoring.Scorer(model, params, new_program_cost=0)
  merged = scoring.Scorer(model, params, new_program_cost=10 ** 6)
  expected = apart.score(requests, greedy=True)
  for a, b in zip(merged.score(requests, greedy=True), expected):
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    assert a.greedy.tolist() == b.greedy.tolist()
  assert merged.computed["batches"] < apart.computed["batches"]
  assert merged.computed["decoder_positions"] > apart.computed["decoder_positions"]
  assert merged.computed["encoder_positions"] == apart.computed["encoder_positions"]
  shapes = set(merged._decode_shapes)
  merged.score(requests)
  assert merged._decode_shapes == shapes           # nothing new to compile
  with pytest.raises(ValueError, match="new_program_cost must be a number of positions"):
    scoring.Scorer(model, params, new_program_cost=-1)


@pytest.mark.parametrize("arch", [CD, ED])
def test_a_calls_new_programs_compile_together_on_worker_threads_once(arch, monkeypatch):
  """Every program a call needs is compiled before any batch runs (on the pool's threads
  with two workers, on the caller's with one), each once; another scorer of the same
  model compiles nothing; the scores do not depend on how programs were compiled."""
  import threading

  import jax
  model, params = model_and_params(arch)
  requests, expected = references(arch)
  compiled_on = []
  compile = jax.stages.Lowered.compile

  def recording(self, *a, **k):
    compiled_on.append(threading.current_thread() is threading.main_thread())
    return compile(self, *a, **k)
  monkeypatch.setattr(jax.stages.Lowered, "compile", recording)
  results = {}
  for workers in (1, 2):
    monkeypatch.setattr(scoring, "_PROGRAMS", {})       # nothing compiled yet
    compiled_on.clear()
    scorer = scoring.Scorer(model, params, max_tokens=96, compile_workers=workers)
    results[workers] = scorer.score(requests, greedy=True)
    assert scorer.computed["programs_compiled"] == len(compiled_on) == len(scoring._PROGRAMS)
    assert len(compiled_on) >= 2
    assert all(compiled_on) if workers == 1 else not any(compiled_on)
    compiled_on.clear()
    again = scoring.Scorer(model, params, max_tokens=96, compile_workers=workers)
    again.score(requests, greedy=True)
    assert again.computed["programs_compiled"] == 0 and compiled_on == []
  for one, two, ref in zip(results[1], results[2], expected):
    np.testing.assert_array_equal(one.scores, two.scores)
    np.testing.assert_allclose(one.scores, [s for s, _ in ref], atol=1e-4, rtol=1e-5)
    assert one.greedy.tolist() == two.greedy.tolist() == [g for _, g in ref]
  for bad in (0, -2, True, 1.5):
    with pytest.raises(ValueError, match=f"compile_workers must be a positive number of "
                                         f"threads, found {bad!r}"):
      scoring.Scorer(model, params, compile_workers=bad)


def test_a_failed_compilation_leaves_the_scorer_as_it_was(monkeypatch):
  """A compilation that fails (out of memory, an interrupt) raises from `score`, keeps no
  half-made state (shapes counted as compiled, lowered programs), and the next call
  scores as if it never happened."""
  import jax
  model, params = model_and_params(ED)
  requests, expected = references(ED)
  monkeypatch.setattr(scoring, "_PROGRAMS", {})
  scorer = scoring.Scorer(model, params, max_tokens=96, compile_workers=2)

  def failing(self, *a, **k):
    raise MemoryError("compiling: out of memory")
  with monkeypatch.context() as patch:
    patch.setattr(jax.stages.Lowered, "compile", failing)
    with pytest.raises(MemoryError, match="out of memory"):
      scorer.score(requests)
  assert scorer._decode_shapes == set() and scorer._planned == {}
  assert scoring._PROGRAMS == {}
  for result, ref in zip(scorer.score(requests), expected):
    np.testing.assert_allclose(result.scores, [s for s, _ in ref], atol=1e-4, rtol=1e-5)
  assert scorer.computed["programs_compiled"] == len(scoring._PROGRAMS) >= 2


def test_host_parameters_are_placed_on_the_device_once():
  """Parameters as a checkpoint gives them (numpy) are put on the device when the scorer is
  made, not copied with every batch; the scores are those of the device parameters."""
  import jax
  model, params = model_and_params(ED)
  host = jax.tree_util.tree_map(np.asarray, params)
  scorer = scoring.Scorer(model, host, max_tokens=96)
  leaves = jax.tree_util.tree_leaves(scorer.params)
  assert leaves and all(isinstance(x, jax.Array) for x in leaves)
  assert {d for x in leaves for d in x.devices()} == {jax.devices()[0]}
  requests, _ = references(ED)
  on_device = scoring.Scorer(model, params, max_tokens=96).score(requests)
  for a, b in zip(scorer.score(requests), on_device):
    np.testing.assert_array_equal(a.scores, b.scores)
