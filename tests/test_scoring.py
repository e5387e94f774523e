"""`evaluation.scoring`: packed scores against one unpadded forward pass per (context,
continuation) for the CD, ND and ED, greedy flags, plans and their compilation, shapes,
packing and its budgets."""
import functools
import types

import jax
import numpy as np
import pytest

from arch_objective import layers, layouts, models
from arch_objective.evaluation import scoring
from arch_objective.evaluation.scoring import Request, programs
from arch_objective.evaluation.scoring import scorer as scorer_lib

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
  return helpers.random_params(tiny(ED if family == "ed" else CD),
                               0 if family == "decoder" else 1, draw="fan_in")


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


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_batches_equal_one_direct_pass_per_request(arch):
  model, params = model_and_params(arch)
  requests, expected = references(arch)
  # Small batches: several batches per length class. (Packed rows hold several requests
  # each: at 96 tokens the ED's fit in 2 batches, at 64 in 4.)
  scorer = scoring.Scorer(model, params, max_tokens=64)
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
  # `normalize` divides each choice's sum by its length on the host: the same programs.
  normalized = scorer.score(requests, normalize=True, greedy=True)
  assert scorer.computed["programs_compiled"] == 0
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
  scorer = scoring.Scorer(model, params, max_tokens=64)
  result = scorer.score([Request(prompt, (greedy, other))], greedy=True)[0]
  assert result.greedy.tolist() == [True, False]
  assert result.scores[0] > result.scores[1]
  np.testing.assert_allclose(result.scores[0], direct(arch, params, prompt, greedy)[0],
                             atol=1e-4, rtol=1e-5)


def test_cross_kv_max_bytes_splits_the_prompts_of_a_batch():
  """A budget of two encoder rows' keys and values: every batch holds at most that, the
  rows are split over more batches, and the scores do not change."""
  model, params = model_and_params(ED)
  requests, _ = references(ED)               # prompts packed into 4 encoder rows of 24
  free = scoring.Scorer(model, params)
  expected = free.score(requests, greedy=True)
  c = model.config                # per position: layers x (keys, values) x heads x dims x 4 B
  assert free.cross_kv_bytes(1, 10) == c.num_decoder_layers * 2 * 10 * c.num_heads * c.head_dim * 4
  budget = free.cross_kv_bytes(2, 24)
  # Unbounded, one batch holds them all.
  assert free.computed["cross_kv_bytes"] == free.cross_kv_bytes(4, 24) > budget
  bounded = scoring.Scorer(model, params, cross_kv_max_bytes=budget)
  for a, b in zip(bounded.score(requests, greedy=True), expected):
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    assert a.greedy.tolist() == b.greedy.tolist()
  assert bounded.computed["cross_kv_bytes"] == budget and bounded.computed["batches"] == 2
  # Below one row's worth, each batch still takes one encoder row.
  single = scoring.Scorer(model, params, cross_kv_max_bytes=1)
  for a, b in zip(single.score(requests), expected):
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
  assert single.computed["cross_kv_bytes"] == free.cross_kv_bytes(1, 24)
  assert single.computed["batches"] == 4
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


def test_a_model_of_another_layout_family_is_named():
  """The scorer packs by the model's layout family; one it has no layout for is named
  with the families it has."""
  other = types.SimpleNamespace(name="vision", layout=types.SimpleNamespace(family="vision"))
  with pytest.raises(ValueError, match=r"the scorer's layouts has no entry for the vision "
                                       r"layout; it has \['decoder', 'encoder_decoder'\]"):
    scoring.Scorer(other, {})


# -- shapes and the reference's batches ------------------------------------------------------

def test_buckets():
  assert [scoring.pow2(n) for n in (0, 1, 2, 3, 5, 16, 17)] == [1, 1, 2, 4, 8, 16, 32]
  assert [scoring.bucket(n) for n in (0, 1, 16, 17, 40)] == [16, 16, 16, 32, 64]
  assert [scoring.fine_bucket(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12,
                                                            12, 12, 16]
  assert [scoring.fine_bucket(n, 16) for n in (1, 17, 25, 33, 49)] == [16, 24, 32, 48, 64]
  assert [scoring.batch_rows(64, n) for n in (16, 24, 32, 100)] == [4, 2, 2, 1]


def test_decoder_batch_features():
  """`layouts.decoder_batch`, the rows of `naive_scores`' reference batches."""
  batch = layouts.decoder_batch([([5, 6], [7, 1]), ([], [9])], length=6, rows=3)
  assert set(batch) == {"decoder_input_tokens", "decoder_target_tokens",
                        "decoder_loss_weights", "decoder_causal_attention"}
  assert all(v.shape == (3, 6) and v.dtype == np.int32 for v in batch.values())
  assert batch["decoder_target_tokens"].tolist()[:2] == [[5, 6, 7, 1, 0, 0], [9, 0, 0, 0, 0, 0]]
  assert batch["decoder_input_tokens"].tolist()[:2] == [[0, 5, 6, 7, 1, 0], [0, 9, 0, 0, 0, 0]]
  assert batch["decoder_loss_weights"].tolist()[:2] == [[0, 0, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]]
  assert batch["decoder_causal_attention"].tolist() == [[1, 1, 1, 0, 0, 0],
                                                        [1, 0, 0, 0, 0, 0], [0] * 6]


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
  # Rows of at most 16 tokens packed: the longer requests form other length classes, so
  # the decoder-only call too needs several programs.
  monkeypatch.setattr(scorer_lib, "PACKED_ROW_TOKENS", 16)
  results = {}
  for workers in (1, 2):
    monkeypatch.setattr(programs, "_PROGRAMS", {})       # nothing compiled yet
    compiled_on.clear()
    scorer = scoring.Scorer(model, params, max_tokens=96, compile_workers=workers)
    results[workers] = scorer.score(requests, greedy=True)
    assert scorer.computed["programs_compiled"] == len(compiled_on) == len(programs._PROGRAMS)
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
  half-made state (the scorer's attributes are the ones it had, no program is kept as
  compiled), and the next call scores as if it never happened."""
  import jax
  model, params = model_and_params(ED)
  requests, expected = references(ED)
  monkeypatch.setattr(programs, "_PROGRAMS", {})
  scorer = scoring.Scorer(model, params, max_tokens=96, compile_workers=2)
  before = {name: value for name, value in vars(scorer).items() if name != "computed"}

  def failing(self, *a, **k):
    raise MemoryError("compiling: out of memory")
  with monkeypatch.context() as patch:
    patch.setattr(jax.stages.Lowered, "compile", failing)
    with pytest.raises(MemoryError, match="out of memory"):
      scorer.score(requests)
  after = {name: value for name, value in vars(scorer).items() if name != "computed"}
  assert after.keys() == before.keys()
  assert all(after[name] is value for name, value in before.items())
  assert programs._PROGRAMS == {}
  for result, ref in zip(scorer.score(requests), expected):
    np.testing.assert_allclose(result.scores, [s for s, _ in ref], atol=1e-4, rtol=1e-5)
  assert scorer.computed["programs_compiled"] == len(programs._PROGRAMS) >= 2


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


# -- packed rows -------------------------------------------------------------------------------

def test_pack_places_every_item_once_within_the_capacity():
  assert scoring.pack([5, 1, 4, 2, 3], 6) == [[0, 1], [2, 3], [4]]        # the docstring's
  assert scoring.pack([], 8) == []
  assert scoring.pack([8, 8], 8) == [[0], [1]]
  # Random lengths: every index exactly once, no bin over the capacity, two items longer
  # than half the capacity never in one bin, and bins opened longest item first.
  rng = np.random.default_rng(7)
  for _ in range(200):
    capacity = int(rng.integers(1, 41))
    lengths = rng.integers(1, capacity + 1, int(rng.integers(0, 61))).tolist()
    bins = scoring.pack(lengths, capacity)
    assert sorted(k for b in bins for k in b) == list(range(len(lengths)))
    assert all(b and sum(lengths[k] for k in b) <= capacity for b in bins)
    assert all(sum(2 * lengths[k] > capacity for k in b) <= 1 for b in bins)
    assert all(lengths[b[0]] == max(lengths[k] for k in b) for b in bins)
    firsts = [lengths[b[0]] for b in bins]
    assert firsts == sorted(firsts, reverse=True)


def test_packed_rows():
  # Rounded up to a sixteenth of their power of two: at most one row in eight is padding.
  assert [scoring.packed_rows(n) for n in (0, 1, 2, 15, 16, 17, 18, 19, 33, 34, 100)] == [
      1, 1, 2, 15, 16, 18, 18, 20, 36, 36, 104]


def test_decode_logits_takes_encoder_and_cross_segment_ids_together():
  model, params = model_and_params(ED)
  encoded = np.zeros((1, 4, model.config.emb_dim), np.float32)
  enc = np.asarray([[5, 6, 7, 0]], np.int32)
  dec = np.asarray([[8, 9]], np.int32)
  seg = np.asarray([[1, 1, 2, 0]], np.int32)
  with pytest.raises(ValueError, match="found only encoder_segment_ids"):
    model.decode_logits(params, encoded, enc, dec, dec, encoder_segment_ids=seg)
  with pytest.raises(ValueError, match="found only cross_segment_ids"):
    model.decode_logits(params, encoded, enc, dec, dec, cross_segment_ids=dec > 0)


def test_packed_encoder_segments_attend_only_to_themselves():
  """Two prompts in one encoder row, segments 1 and 2: at each prompt's positions the
  encoder outputs are those of the prompt alone at the start of its own row (relative
  positions do not depend on where a segment starts); without the segment ids they are
  not (the check can fail)."""
  model, params = model_and_params(ED)
  rng = np.random.default_rng(9)
  a, b = rng.integers(2, VOCAB, 5), rng.integers(2, VOCAB, 7)
  packed = np.zeros((1, 16), np.int32)
  packed[0, :5], packed[0, 5:12] = a, b
  seg = np.asarray([[1] * 5 + [2] * 7 + [0] * 4], np.int32)
  alone = np.zeros((2, 16), np.int32)
  alone[0, :5], alone[1, :7] = a, b
  encode = jax.jit(model.encode)
  out = np.asarray(encode(params, packed, seg))[0]
  ref = np.asarray(encode(params, alone))
  np.testing.assert_allclose(out[:5], ref[0, :5], atol=1e-5)
  np.testing.assert_allclose(out[5:12], ref[1, :7], atol=1e-5)
  mixed = np.asarray(encode(params, packed))[0]
  assert np.abs(mixed[:12] - out[:12]).max() > 1e-3


def _requests(spec, seed):
  """Requests of random ids with (prompt length, choice lengths) as in `spec`."""
  rng = np.random.default_rng(seed)
  ids = lambda k: rng.integers(2, VOCAB, k).astype(np.int32)
  return [Request(ids(p), tuple(ids(c) for c in choices)) for p, choices in spec]


def _assert_direct(arch, params, requests, results, greedy=True):
  for r, result in zip(requests, results):
    ref = [direct(arch, params, r.prompt, c) for c in r.choices]
    np.testing.assert_allclose(result.scores, [s for s, _ in ref], atol=1e-4, rtol=1e-5)
    if greedy:
      assert result.greedy.tolist() == [g for _, g in ref]


def test_ed_packed_layout_by_hand(monkeypatch):
  """Seven prompts of 10, 3, 2, 0, 0, 9 and 5 tokens, choices of 1 to 5 tokens, one batch.

  Encoder rows of fine_bucket(10, 16) = 16: the longest prompt opens a row that the
  shortest fill, 10 + 2 + 3 (prompts 0, 2, 1); then 9 + 5 (prompts 5, 6); the two empty
  prompts share a row of padding: 3 rows, 48 encoder positions. Decoder rows per encoder
  row, lengths from fine_bucket(5, 4) = 6 up: at 6 the choices (3 1 4 2 2 | 5 1 1 | 1 3 2)
  take 3 + 2 + 1 rows (36 positions), at 8 2 + 1 + 1 (32), at 12 1 + 1 + 1 (36), at 16
  48, at 24 72: 4 rows of 8, 32 decoder positions. One program encodes and projects the
  keys and values, one decodes."""
  model, params = model_and_params(ED)
  requests = _requests([(10, [3, 1]), (3, [2]), (2, [4, 2]), (0, [1, 3]), (0, [2]),
                        (9, [5]), (5, [1, 1])], 11)
  monkeypatch.setattr(programs, "_PROGRAMS", dict(programs._PROGRAMS))   # restored after
  scoring.clear_programs()
  assert programs._PROGRAMS == {}
  monkeypatch.setattr(scorer_lib, "PACKED_CROSS_ROWS", 1)    # a decoder row reads one row
  scorer = scoring.Scorer(model, params)
  enc_rows, groups, dec_rows, dec_len, parts = scorer.pack_encoder_decoder(
      requests, list(range(7)), 16)
  assert enc_rows == [[0, 2, 1], [5, 6], [3, 4]] and dec_len == 8
  assert groups == [[0], [1], [2]]
  assert [list(p) for p in parts] == [[0, 1, 2]]          # 48 + 32 positions: one batch
  assert [len(rows) for rows in dec_rows] == [2, 1, 1]
  assert dec_rows[0] == [[(2, 0), (0, 1), (1, 0)], [(0, 0), (2, 1)]]      # 4 + 1 + 2, 3 + 2
  results = scorer.score(requests, greedy=True)
  assert scorer.computed == {"batches": 1, "encoder_positions": 48, "decoder_positions": 32,
                             "cross_attention_key_positions": 48,
                             "cross_kv_bytes": scorer.cross_kv_bytes(3, 16),
                             "programs_compiled": 2}
  _assert_direct(ED, params, requests, results)
  # A second call of the same shapes compiles nothing.
  again = scoring.Scorer(model, params)
  for a, b in zip(again.score(requests, greedy=True), results):
    np.testing.assert_array_equal(a.scores, b.scores)
  assert again.computed["programs_compiled"] == 0
  # Decoder rows that read two encoder rows: rows 0 and 1 form a group, the row of padding
  # stays alone. The group's choices (3 1 4 2 2 | 5 1 1) take at 6: [5 1] [4 1 1] [3 2]
  # [2] = 4 rows, the padding row's (1 3 2) one: 5 rows of 6, 30 positions (at 8: 4 rows,
  # 32; at 12: 3, 36; at 16 and 24: 48).
  monkeypatch.setattr(scorer_lib, "PACKED_CROSS_ROWS", 2)
  paired = scoring.Scorer(model, params)
  enc_rows, groups, dec_rows, dec_len, parts = paired.pack_encoder_decoder(
      requests, list(range(7)), 16)
  assert enc_rows == [[0, 2, 1], [5, 6], [3, 4]] and groups == [[0, 1], [2]]
  assert dec_len == 6 and [len(rows) for rows in dec_rows] == [4, 1]
  results = paired.score(requests, greedy=True)
  assert paired.computed["encoder_positions"] == 48
  assert paired.computed["decoder_positions"] == 30 and paired.computed["batches"] == 1
  _assert_direct(ED, params, requests, results)


def test_a_plan_is_data_compiled_before_it_runs(monkeypatch):
  """An ED call's plan: per batch a step that projects the prompts' keys and values, and
  one that decodes against them (an `Output` of the first, resolved when the plan runs).
  Compiling the plan runs nothing (the decode program is lowered from the first
  program's output shapes); running it gives `score`'s scores."""
  model, params = model_and_params(ED)
  requests, _ = references(ED)
  monkeypatch.setattr(programs, "_PROGRAMS", {})
  scorer = scoring.Scorer(model, params, max_tokens=64)
  plan = scorer.plan(requests, greedy=True)
  assert len(plan.steps) == 2 * plan.computed["batches"] >= 8
  for k, (encode, decode) in enumerate(zip(plan.steps[::2], plan.steps[1::2])):
    assert encode.program is programs.ed_packed_encode_kv and encode.into is None
    assert decode.program is programs.ed_packed_decode_scores
    assert decode.args[0] == programs.Output(2 * k) and decode.static == (True,)
  ran = []
  with monkeypatch.context() as patch:
    patch.setattr(jax.stages.Compiled, "__call__", lambda self, *a, **k: ran.append(self))
    compiled, count = programs.compile_plan(
        plan.steps, model, scorer.params, params_signature=programs.signature(params),
        workers=1)
  assert ran == [] and count == len(programs._PROGRAMS) == 2          # one length class
  assert len(compiled) == len(plan.steps)
  scores = [np.zeros(len(r.choices)) for r in requests]
  flags = [np.zeros(len(r.choices), bool) for r in requests]
  for segments, (token_scores, equal) in programs.run_plan(plan.steps, compiled,
                                                           scorer.params):
    segments.collect(token_scores, equal, False, scores, flags)
  for result, s, f in zip(scorer.score(requests, greedy=True), scores, flags):
    np.testing.assert_array_equal(result.scores, s)
    np.testing.assert_array_equal(result.greedy, f)
  assert scorer.computed == dict(plan.computed, programs_compiled=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_a_request_longer_than_a_packed_row_gets_rows_of_its_own(arch, monkeypatch):
  """With `PACKED_ROW_TOKENS` 16, prompts of 3, 9, 0 and 20 tokens: the request of 20
  (decoder-only: 21 and 23 tokens with its choices) is packed into rows of its own
  bucket, 24, the rest into rows of 16: two length classes, one batch each, and every
  score is the direct pass's. At the default row size they share one class."""
  model, params = model_and_params(arch)
  requests = _requests([(3, [2, 4]), (9, [3]), (20, [1, 3]), (0, [2])], 13)
  one_class = scoring.Scorer(model, params)
  _assert_direct(arch, params, requests, one_class.score(requests, greedy=True))
  assert one_class.computed["batches"] == 1
  monkeypatch.setattr(scorer_lib, "PACKED_ROW_TOKENS", 16)
  scorer = scoring.Scorer(model, params)
  _assert_direct(arch, params, requests, scorer.score(requests, greedy=True))
  assert scorer.computed["batches"] == 2
  if arch == ED:
    # Rows of 16: 9 + 3 and the empty prompt's; of 24: the prompt of 20. Decoder rows of 4
    # (16 positions against 18 at 6): 4 | 3 | 2 and 2; 3 + 1.
    assert scorer.computed["encoder_positions"] == 2 * 16 + 24
    assert scorer.computed["decoder_positions"] == 4 * 4 + 1 * 4
  else:
    # Rows of 16: 12 + 2 and 7 + 5 tokens; of 24: 23 and 21.
    assert scorer.computed["decoder_positions"] == 2 * 16 + 2 * 24


@pytest.mark.parametrize("arch, max_tokens, kv_rows", [
    (CD, 48, None), (ED, 48, None), (ED, 16384, 1)])
def test_packed_batches_stay_within_their_budgets(arch, max_tokens, kv_rows):
  """Every batch of a call's plan holds at most `max_tokens` tokens: rows x length, for
  the ED encoder rows x their length plus decoder rows x theirs; its prompts' keys and
  values at most `cross_kv_max_bytes` (`kv_rows` encoder rows of the requests' length,
  24), which bounds `computed['cross_kv_bytes']`. The requests then take several
  batches, with the direct pass's scores."""
  model, params = model_and_params(arch)
  requests, expected = references(arch)
  kv_budget = scoring.DEFAULT_CROSS_KV_MAX_BYTES if kv_rows is None else (
      scoring.Scorer(model, params).cross_kv_bytes(kv_rows, 24))
  scorer = scoring.Scorer(model, params, max_tokens=max_tokens, cross_kv_max_bytes=kv_budget)
  shapes = []
  for step in scorer.plan(requests, greedy=True).steps:
    if step.program is programs.ed_packed_encode_kv:
      shapes.append({"enc": step.args[0].shape})
    elif step.program is programs.ed_packed_decode_scores:
      shapes[-1]["dec"] = step.args[5].shape                     # targets
    else:
      assert step.program is programs.decoder_packed_scores
      shapes.append({"dec": step.args[0]["decoder_target_tokens"].shape})
  results = scorer.score(requests, greedy=True)
  for result, ref in zip(results, expected):
    np.testing.assert_allclose(result.scores, [s for s, _ in ref], atol=1e-4, rtol=1e-5)
    assert result.greedy.tolist() == [g for _, g in ref]
  assert len(shapes) == scorer.computed["batches"] >= 3
  for batch in shapes:
    tokens = int(np.prod(batch["dec"])) + int(np.prod(batch.get("enc", 0)))
    assert tokens <= max_tokens
    if arch == ED:
      assert batch["enc"][1] == 24
      assert scorer.cross_kv_bytes(*batch["enc"]) <= kv_budget
  assert scorer.computed["cross_kv_bytes"] <= kv_budget
  if arch == ED:
    assert scorer.computed["cross_kv_bytes"] == max(
        scorer.cross_kv_bytes(*batch["enc"]) for batch in shapes)


def test_batches_start_from_the_lower_bound_and_keep_every_row():
  """`shapes.deal` deals rows into parts that fit (part b: rows b, b + parts, ...): from
  the lower bound it is given, and in more parts when those do not fit."""
  deal = scoring.shapes.deal
  fits = lambda parts: max(map(len, parts)) <= 10
  for at_least in (1, 5, 10):
    parts = deal(100, fits, at_least)
    assert [list(p) for p in parts] == [list(range(b, 100, 10)) for b in range(10)]
  assert [list(p) for p in deal(7, lambda p: len(p) == 3, 3)] == [[0, 3, 6], [1, 4], [2, 5]]
  # With weights, the heaviest row first to the lightest part: 5 | 4, 3 -> 7 | then 2 to
  # the first (5 + 2), 1 to the first again on the tie (7 against 7).
  weighted = deal(5, lambda parts: True, 2, [5, 1, 4, 2, 3])
  assert [list(p) for p in weighted] == [[0, 1, 3], [2, 4]]
  # A lower bound above what is needed is kept (it comes from the positions to compute).
  assert len(deal(100, fits, 20)) == 20
  # Nothing fits: one row a part.
  assert len(deal(7, lambda parts: False, 1)) == 7


def test_length_classes():
  """Items up to the row size share the class of the longest one's `fine_bucket`; a
  longer one gets the class of its own."""
  classes = scoring.shapes.length_classes
  assert classes([3, 9, 20, 5], 4, 16) == {12: [0, 1, 3], 24: [2]}
  assert classes([3, 9, 20, 5], 16, 512) == {24: [0, 1, 2, 3]}
  assert classes([40, 600], 16, 512) == {48: [0], 768: [1]}


def test_max_tokens_defaults_and_is_checked():
  model, params = model_and_params(CD)
  assert scoring.Scorer(model, params).max_tokens == scoring.DEFAULT_MAX_TOKENS == 4096
  assert scoring.Scorer(model, params, max_tokens=512).max_tokens == 512
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match=f"max_tokens must be a positive number of tokens, "
                                         f"found {bad!r}"):
      scoring.Scorer(model, params, max_tokens=bad)
