"""The three architectures: parameter trees, masks in action, packing, cached decoding,
loss and scoring, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arch_objective import build_model, layers, models

from helpers import TINY_VOCAB as VOCAB, init_params as init, tiny_model as tiny

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER


def shift_right(targets, segment_ids=None):
  """Independent autoregressive inputs: targets shifted right, 0 at each segment start."""
  targets = np.asarray(targets)
  inputs = np.zeros_like(targets)
  inputs[:, 1:] = targets[:, :-1]
  if segment_ids is not None:
    seg = np.asarray(segment_ids)
    starts = np.concatenate([np.ones_like(seg[:, :1]), seg[:, 1:] != seg[:, :-1]], axis=1)
    inputs[starts.astype(bool)] = 0
  return inputs


def decoder_batch(targets, dca=None, segment_ids=None):
  targets = np.asarray(targets, np.int32)
  batch = {"decoder_target_tokens": targets,
           "decoder_input_tokens": shift_right(targets, segment_ids).astype(np.int32)}
  if dca is not None:
    batch["decoder_causal_attention"] = np.asarray(dca, np.int32)
  if segment_ids is not None:
    batch["decoder_segment_ids"] = np.asarray(segment_ids, np.int32)
  return batch


def ed_batch(inputs, targets, enc_seg=None, dec_seg=None):
  batch = {"encoder_input_tokens": np.asarray(inputs, np.int32),
           "decoder_target_tokens": np.asarray(targets, np.int32),
           "decoder_input_tokens": shift_right(targets, dec_seg).astype(np.int32)}
  if enc_seg is not None:
    batch["encoder_segment_ids"] = np.asarray(enc_seg, np.int32)
    batch["decoder_segment_ids"] = np.asarray(dec_seg, np.int32)
  return batch


@pytest.fixture(scope="module")
def params(tiny_params):
  """Tiny float32 parameters: decoder-only (shared by CD and ND) and ED (conftest)."""
  return tiny_params


# ---------------------------------------------------------------------------
# Parameter trees and counts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch,expected", [(CD, 4_762_357_760), (ND, 4_762_357_760),
                                           (ED, 11_003_736_064)])
def test_paper_parameter_counts_are_exact(arch, expected):
  assert models.count_params(build_model(arch, "paper")) == expected


def test_decoder_only_parameter_names_match_t5x(params):
  flat = traverse_util.flatten_dict(params["dec"], sep="/")
  shapes = {k: v.shape for k, v in flat.items()}
  # tiny: emb 64, 4 heads x 16, mlp 128, 2 layers
  expected = {"decoder/token_embedder/embedding": (VOCAB, 64),
              "decoder/decoder_norm/scale": (64,)}
  for i in range(2):
    p = f"decoder/layers_{i}/"
    expected.update({
        p + "relpos_bias/rel_embedding": (4, 32),
        p + "pre_self_attention_layer_norm/scale": (64,),
        p + "self_attention/query/kernel": (64, 64),
        p + "self_attention/key/kernel": (64, 64),
        p + "self_attention/value/kernel": (64, 64),
        p + "self_attention/out/kernel": (64, 64),
        p + "pre_mlp_layer_norm/scale": (64,),
        p + "mlp/wi_0/kernel": (64, 128),
        p + "mlp/wi_1/kernel": (64, 128),
        p + "mlp/wo/kernel": (128, 64)})
  assert shapes == expected


def test_encoder_decoder_parameter_names_match_t5x(params):
  flat = traverse_util.flatten_dict(params["ed"], sep="/")
  names = set(flat)
  expected = {"token_embedder/embedding", "encoder/relpos_bias/rel_embedding",
              "encoder/encoder_norm/scale", "decoder/relpos_bias/rel_embedding",
              "decoder/decoder_norm/scale"}
  for i in range(2):
    e, d = f"encoder/layers_{i}/", f"decoder/layers_{i}/"
    expected |= {e + "pre_attention_layer_norm/scale", e + "pre_mlp_layer_norm/scale",
                 d + "pre_self_attention_layer_norm/scale",
                 d + "pre_cross_attention_layer_norm/scale", d + "pre_mlp_layer_norm/scale"}
    for proj in ("query", "key", "value", "out"):
      expected |= {e + f"attention/{proj}/kernel", d + f"self_attention/{proj}/kernel",
                   d + f"encoder_decoder_attention/{proj}/kernel"}
    for mlp in ("wi_0", "wi_1", "wo"):
      expected |= {e + f"mlp/{mlp}/kernel", d + f"mlp/{mlp}/kernel"}
  assert names == expected


@pytest.mark.parametrize("arch", [CD, ED])
def test_every_parameter_has_logical_axes(arch):
  model = tiny(arch)
  axes = traverse_util.flatten_dict(
      model.logical_axes(models.default_input_shapes(arch, 1, 8, 8, 8))["params"], sep="/")
  shapes = traverse_util.flatten_dict(
      model.abstract_variables(models.default_input_shapes(arch, 1, 8, 8, 8))["params"], sep="/")
  assert set(axes) == set(shapes)
  for name, spec in axes.items():
    assert len(spec) == len(shapes[name].shape), name
    assert all(a in layers.PARAM_AXES for a in spec), (name, spec)
  assert tuple(axes[[k for k in axes if k.endswith("token_embedder/embedding")][0]]) == (
      layers.VOCAB, layers.EMBED)


def test_default_activation_dtype_is_bfloat16_with_float32_logits_and_params():
  model = build_model(CD, "tiny", vocab_size=VOCAB)
  assert model.config.dtype == "bfloat16"
  p = init(model, {"decoder_input_tokens": (1, 8)})
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p))
  logits = model.compute_logits(p, decoder_batch(np.arange(2, 10)[None]))
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


# ---------------------------------------------------------------------------
# Causality probes
# ---------------------------------------------------------------------------
def _logits(arch, p, targets, dca=None):
  return np.asarray(tiny(arch).compute_logits(p, decoder_batch(targets, dca)))


@pytest.mark.slow
def test_causal_decoder_never_looks_ahead(params):
  rng = np.random.default_rng(0)
  base = rng.integers(2, VOCAB, (1, 10))
  dca = (np.arange(10) <= 4)[None]  # present but ignored by CD
  ref = _logits(CD, params["dec"], base, dca)
  for j in (2, 5, 9):
    changed = base.copy()
    changed[0, j] = (changed[0, j] + 7) % (VOCAB - 2) + 2
    out = _logits(CD, params["dec"], changed, dca)
    # Changing target j changes the input at position j+1 only.
    np.testing.assert_array_equal(out[0, :j + 1], ref[0, :j + 1])
    if j + 1 < 10:
      assert np.abs(out[0, j + 1] - ref[0, j + 1]).max() > 1e-4


def test_non_causal_decoder_prefix_is_bidirectional_and_blind_to_targets(params):
  rng = np.random.default_rng(1)
  base = rng.integers(2, VOCAB, (1, 10))
  dca = (np.arange(10) <= 4)[None]  # inputs are targets 0..3 (input positions 1..4), plus one
  ref = _logits(ND, params["dec"], base, dca)
  # A later prefix token (target 3 = input at position 4) changes earlier prefix logits.
  changed = base.copy()
  changed[0, 3] = (changed[0, 3] + 5) % (VOCAB - 2) + 2
  out = _logits(ND, params["dec"], changed, dca)
  assert np.abs(out[0, :4] - ref[0, :4]).max() > 1e-4
  # Tokens after the prefix never affect the prefix (positions 0..4).
  for j in (4, 6, 9):
    changed = base.copy()
    changed[0, j] = (changed[0, j] + 3) % (VOCAB - 2) + 2
    out = _logits(ND, params["dec"], changed, dca)
    np.testing.assert_array_equal(out[0, :5], ref[0, :5])
    np.testing.assert_array_equal(out[0, :j + 1], ref[0, :j + 1])


@pytest.mark.slow
def test_non_causal_decoder_with_zero_prefix_equals_causal_decoder(params):
  rng = np.random.default_rng(2)
  targets = rng.integers(2, VOCAB, (3, 9))
  targets[1, 6:] = 0  # padding
  zero = np.zeros_like(targets)
  np.testing.assert_array_equal(_logits(ND, params["dec"], targets, zero),
                                _logits(CD, params["dec"], targets))


@pytest.mark.slow
def test_encoder_decoder_decoder_is_causal_and_encoder_is_seen(params):
  rng = np.random.default_rng(3)
  model = tiny(ED)
  inputs, targets = rng.integers(2, VOCAB, (1, 7)), rng.integers(2, VOCAB, (1, 8))
  ref = np.asarray(model.compute_logits(params["ed"], ed_batch(inputs, targets)))
  for j in (1, 4, 7):
    changed = targets.copy()
    changed[0, j] = (changed[0, j] + 9) % (VOCAB - 2) + 2
    out = np.asarray(model.compute_logits(params["ed"], ed_batch(inputs, changed)))
    np.testing.assert_array_equal(out[0, :j + 1], ref[0, :j + 1])
  changed_inputs = inputs.copy()
  changed_inputs[0, -1] = (changed_inputs[0, -1] + 1) % (VOCAB - 2) + 2
  out = np.asarray(model.compute_logits(params["ed"], ed_batch(changed_inputs, targets)))
  assert np.abs(out[0, 0] - ref[0, 0]).max() > 1e-4  # every decoder position sees all inputs


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_packed_row_equals_each_sequence_alone_decoder_only(arch, params):
  a, b = np.array([5, 9, 11, 13, 17]), np.array([21, 23, 29])
  packed = np.concatenate([a, b, [0, 0]])[None]
  seg = np.array([[1] * 5 + [2] * 3 + [0, 0]])
  dca_a, dca_b = np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0])
  dca = np.concatenate([dca_a, dca_b, [0, 0]])[None]
  model = tiny(arch)
  out = np.asarray(model.compute_logits(params["dec"], decoder_batch(packed, dca, seg)))
  alone_a = np.asarray(model.compute_logits(params["dec"], decoder_batch(a[None], dca_a[None])))
  alone_b = np.asarray(model.compute_logits(params["dec"], decoder_batch(b[None], dca_b[None])))
  np.testing.assert_allclose(out[0, :5], alone_a[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out[0, 5:8], alone_b[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_packed_row_equals_each_sequence_alone_encoder_decoder(params):
  model = tiny(ED)
  ia, ta = np.array([3, 4, 5, 6]), np.array([7, 8, 9])
  ib, tb = np.array([10, 11, 12]), np.array([13, 14])
  packed = ed_batch(np.concatenate([ia, ib, [0]])[None], np.concatenate([ta, tb, [0]])[None],
                    np.array([[1, 1, 1, 1, 2, 2, 2, 0]]), np.array([[1, 1, 1, 2, 2, 0]]))
  out = np.asarray(model.compute_logits(params["ed"], packed))
  alone_a = np.asarray(model.compute_logits(params["ed"], ed_batch(ia[None], ta[None])))
  alone_b = np.asarray(model.compute_logits(params["ed"], ed_batch(ib[None], tb[None])))
  np.testing.assert_allclose(out[0, :3], alone_a[0], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out[0, 3:5], alone_b[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# Decoding with the KV cache
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_cached_decoding_matches_full_forward_decoder_only(arch, params):
  model = tiny(arch)
  steps = 5
  prompt_lengths = [3, 5]  # P = inputs + 1 positions, per row
  rng = np.random.default_rng(4)
  width = 6
  prompt_inputs = np.zeros((2, width), np.int32)
  dca = np.zeros((2, width), np.int32)
  for r, p in enumerate(prompt_lengths):
    prompt_inputs[r, 1:p] = rng.integers(2, VOCAB, p - 1)
    dca[r, :p] = 1
  result = model.predict_batch(params["dec"], {"decoder_input_tokens": prompt_inputs,
                                               "decoder_causal_attention": dca},
                               max_decode_steps=steps, eos_id=None, return_logits=True)
  tokens, logits = np.asarray(result.tokens), np.asarray(result.logits)
  assert tokens.shape == (2, steps) and logits.shape == (2, steps, VOCAB)
  np.testing.assert_array_equal(tokens, logits.argmax(-1))
  for r, p in enumerate(prompt_lengths):
    length = p + steps - 1
    full_inputs = np.zeros((1, length), np.int32)
    full_inputs[0, :p] = prompt_inputs[r, :p]
    full_inputs[0, p:] = tokens[r, :steps - 1]
    row_dca = np.zeros((1, length), np.int32)
    row_dca[0, :p] = 1
    batch = {"decoder_input_tokens": full_inputs, "decoder_causal_attention": row_dca,
             "decoder_target_tokens": np.ones((1, length), np.int32)}
    full = np.asarray(model.compute_logits(params["dec"], batch))
    np.testing.assert_allclose(logits[r], full[0, p - 1:], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_cached_decoding_matches_full_forward_encoder_decoder(params):
  model = tiny(ED)
  steps = 6
  inputs = np.array([[5, 6, 7, 8, 9, 0], [10, 11, 12, 0, 0, 0]], np.int32)
  result = model.predict_batch(params["ed"], {"encoder_input_tokens": inputs},
                               max_decode_steps=steps, eos_id=None, return_logits=True)
  tokens, logits = np.asarray(result.tokens), np.asarray(result.logits)
  dec_inputs = np.concatenate([np.zeros((2, 1), np.int32), tokens[:, :-1]], axis=1)
  batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": dec_inputs,
           "decoder_target_tokens": np.ones_like(dec_inputs)}
  full = np.asarray(model.compute_logits(params["ed"], batch))
  np.testing.assert_allclose(logits, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.slow
def test_cross_key_values_projected_once_per_prompt_give_the_per_row_logits(params,
                                                                           scan_layers):
  # Three prompts (one padded to a single token), six decoder rows reading them in
  # another order, one row with target padding.
  model = tiny(ED, scan_layers=scan_layers)
  rng = np.random.default_rng(11)
  enc = np.zeros((3, 7), np.int32)
  for p, n in enumerate((7, 4, 1)):
    enc[p, :n] = rng.integers(2, VOCAB, n)
  rows = np.array([2, 0, 0, 1, 2, 1], np.int32)
  targets = rng.integers(2, VOCAB, (6, 5)).astype(np.int32)
  targets[1, 3:] = 0
  inputs = shift_right(targets).astype(np.int32)
  p = params["ed"]
  encoded = jax.jit(model.encode)(p, enc)
  reference = jax.jit(model.decode_logits)(p, encoded[rows], enc[rows], inputs, targets)
  kv = jax.jit(model.cross_key_values)(p, encoded)
  c = model.config
  assert kv.key.shape == kv.value.shape == (c.num_decoder_layers, 3, 7, c.num_heads,
                                            c.head_dim)
  decode = jax.jit(lambda kv, enc, rows: model.decode_logits(
      p, None, enc, inputs, targets, cross_key_values=kv, cross_rows=rows))
  np.testing.assert_allclose(decode(kv, enc, rows), reference, rtol=1e-6, atol=1e-6)
  per_row = jax.tree_util.tree_map(lambda a: a[:, rows], kv)      # [layers, 6, 7, h, e]
  np.testing.assert_allclose(decode(per_row, enc[rows], None), reference, rtol=1e-6,
                             atol=1e-6)
  full = jax.jit(model.compute_logits)(p, {"encoder_input_tokens": enc[rows],
                                           "decoder_input_tokens": inputs,
                                           "decoder_target_tokens": targets})
  np.testing.assert_allclose(reference, full, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="exactly one; found both"):
    model.decode_logits(p, encoded[rows], enc[rows], inputs, targets, cross_key_values=per_row)
  with pytest.raises(ValueError, match="exactly one; found neither"):
    model.decode_logits(p, None, enc[rows], inputs, targets)
  with pytest.raises(ValueError, match="cross_rows selects prompts"):
    model.decode_logits(p, encoded, enc, inputs, targets, cross_rows=rows)


# ---------------------------------------------------------------------------
# Loss and scoring through the model
# ---------------------------------------------------------------------------
def test_score_batch_is_the_brute_force_log_softmax_sum(params):
  model = tiny(ND)
  rng = np.random.default_rng(5)
  targets = rng.integers(2, VOCAB, (2, 7))
  batch = decoder_batch(targets, (np.arange(7) <= 3)[None].repeat(2, 0))
  batch["decoder_loss_weights"] = (np.arange(7) >= 3)[None].repeat(2, 0).astype(np.int32)
  logits = np.asarray(model.compute_logits(params["dec"], batch), np.float64)
  expected = []
  for r in range(2):
    total = 0.0
    for t in range(3, 7):
      row = logits[r, t]
      total += row[targets[r, t]] - np.log(np.sum(np.exp(row - row.max()))) - row.max()
    expected.append(total)
  np.testing.assert_allclose(np.asarray(model.score_batch(params["dec"], batch)), expected,
                             rtol=1e-5, atol=1e-4)


def test_loss_fn_is_sum_over_weighted_tokens_with_z_loss(params):
  model = tiny(CD)
  rng = np.random.default_rng(6)
  targets = rng.integers(2, VOCAB, (2, 6))
  batch = decoder_batch(targets)
  batch["decoder_loss_weights"] = np.array([[1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0]], np.int32)
  loss, metrics = model.loss_fn(params["dec"], batch, None)
  logits = np.asarray(model.compute_logits(params["dec"], batch), np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  ce = log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  w = batch["decoder_loss_weights"]
  np.testing.assert_allclose(float(loss), np.sum((ce + 1e-4 * log_z ** 2) * w), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["z_loss"]), np.sum(1e-4 * log_z ** 2 * w), rtol=1e-5)
  assert float(metrics["num_tokens"]) == 7.0
  per_token = tiny(CD, loss_normalizing_factor="per_token")
  np.testing.assert_allclose(float(per_token.loss_fn(params["dec"], batch, None)[0]),
                             float(loss) / 7.0, rtol=1e-6)


def test_dropout_is_active_only_with_a_dropout_rng(params):
  model = tiny(CD, dropout_rate=0.3)
  batch = decoder_batch(np.arange(2, 12)[None])
  clean = np.asarray(model.compute_logits(params["dec"], batch))
  np.testing.assert_array_equal(clean, np.asarray(tiny(CD).compute_logits(params["dec"], batch)))
  noisy1 = np.asarray(model.compute_logits(params["dec"], batch, jax.random.PRNGKey(0)))
  noisy2 = np.asarray(model.compute_logits(params["dec"], batch, jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(noisy1, noisy2)
  assert np.abs(noisy1 - clean).max() > 1e-3


@pytest.mark.slow
def test_loss_fn_jits_and_differentiates(params):
  model = tiny(ED)
  batch = ed_batch(np.arange(2, 8)[None], np.arange(10, 15)[None])
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, None)[0]))(params["ed"])
  norms = [float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------
def test_missing_causal_attention_for_non_causal_decoder_is_named(params):
  batch = decoder_batch(np.arange(2, 8)[None])
  with pytest.raises(ValueError, match="decoder_causal_attention"):
    tiny(ND).compute_logits(params["dec"], batch)
  with pytest.raises(ValueError, match="decoder_causal_attention"):
    tiny(ND).predict_batch(params["dec"], {"decoder_input_tokens": batch["decoder_input_tokens"]},
                           max_decode_steps=2)


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b.pop("decoder_target_tokens"), "missing feature.*decoder_target_tokens"),
    (lambda b: b.update(decoder_input_tokens=np.zeros((1, 5), np.int32)),
     "has shape \\(1, 6\\) but 'decoder_input_tokens' has \\(1, 5\\)"),
    (lambda b: b.update(decoder_target_tokens=np.zeros((1, 6, 2), np.int32)),
     "'decoder_target_tokens' must have shape \\[batch, length\\]"),
    (lambda b: b.update(decoder_input_tokens=np.zeros((1, 6), np.float32)),
     "'decoder_input_tokens' must have an integer dtype, found float32"),
])
def test_bad_batches_raise_named_errors(mutate, match, params):
  batch = decoder_batch(np.arange(2, 8)[None])
  mutate(batch)
  with pytest.raises(ValueError, match=match):
    tiny(CD).compute_logits(params["dec"], batch)


def test_encoder_decoder_batch_size_mismatch_is_named(params):
  batch = ed_batch(np.ones((2, 4)), np.ones((1, 3)))
  with pytest.raises(ValueError, match="batch size"):
    tiny(ED).compute_logits(params["ed"], batch)


@pytest.mark.parametrize("call,match", [
    (lambda: build_model("decoder", "tiny"), "unknown arch 'decoder'.*causal_decoder"),
    (lambda: build_model(CD, "huge"), "unknown size 'huge'.*tiny, small"),
    (lambda: build_model(CD, "tiny", emb_size=3), "unknown option.*emb_size"),
    (lambda: build_model(CD, "tiny", dtype="int8"), "dtype must be one of"),
    (lambda: tiny(CD, loss_normalizing_factor="mean").loss_fn(
        init(tiny(CD), {"decoder_input_tokens": (1, 4)}),
        decoder_batch(np.arange(2, 6)[None]), None), "loss_normalizing_factor.*per_token"),
])
def test_bad_options_raise_named_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_from_meta_builds_the_checkpoints_model_and_names_bad_metadata():
  from arch_objective import models
  import dataclasses as dc
  trained = models.build_model("causal_decoder", "tiny", vocab_size=96, num_decoder_layers=3)
  meta = {"arch": "causal_decoder",
          "config": {k: list(v) if isinstance(v, tuple) else v
                     for k, v in dc.asdict(trained.config).items()}}
  again = models.from_meta(meta, "/ckpt")
  assert again.name == "causal_decoder" and again.config == trained.config
  nd = models.from_meta(meta, "/ckpt", "non_causal_decoder", dropout_rate=0.0, dtype="bfloat16")
  assert nd.name == "non_causal_decoder" and nd.config.dtype == "bfloat16"
  assert dc.replace(nd.config, dtype=trained.config.dtype, dropout_rate=trained.config.dropout_rate
                    ) == trained.config
  with pytest.raises(ValueError, match="'/ckpt' holds a causal_decoder model; it cannot be read "
                                       "as encoder_decoder"):
    models.from_meta(meta, "/ckpt", "encoder_decoder")
  with pytest.raises(ValueError, match="'/ckpt' has no model metadata"):
    models.from_meta({"arch": "causal_decoder"}, "/ckpt")
