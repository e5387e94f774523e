"""The execution options of `TransformerConfig` against the reference path.

attention_impl ('dot_product', 'cudnn'), remat_policy ('full', 'dots', 'minimal') and
scan_layers each must compute what the default config computes: the same logits and
gradients (float32, tolerances below), the same parameters and parameter names, the
same decoding. Plus the partitioning of stacked parameters, plan's memory estimate, and
a paper gin file run with every option bound from the command line.

Tolerances (float32), relative to the largest magnitude of each compared array:
  ATTENTION_TOL 1e-5  fused attention sums in another order than the reference einsums
  PROGRAM_TOL   1e-6  remat and scan run the same operations in another program
"""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from arch_objective import build_model, cli, layers, losses, models, network
from arch_objective.convert import param_tree
from arch_objective.training import checkpoints, partitioning, plan

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
VOCAB = 64
ATTENTION_TOL = 1e-5
PROGRAM_TOL = 1e-6


def tiny(arch, **kw):
  kw.setdefault("vocab_size", VOCAB)
  kw.setdefault("dtype", "float32")
  return build_model(arch, "tiny", **kw)


@pytest.fixture(scope="module")
def params():
  """Tiny float32 parameters of the reference: decoder-only (CD and ND) and ED."""
  dec = tiny(CD).get_initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": (1, 8)})
  ed = tiny(ED).get_initial_variables(
      jax.random.PRNGKey(1), {"encoder_input_tokens": (1, 8), "decoder_input_tokens": (1, 8)})
  return {CD: dec["params"], ND: dec["params"], ED: ed["params"]}


def _shift(targets, segment_ids):
  inputs = np.zeros_like(targets)
  inputs[:, 1:] = targets[:, :-1]
  starts = np.concatenate([np.ones_like(segment_ids[:, :1]),
                           segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  inputs[starts.astype(bool)] = 0
  return inputs


def hard_batch(arch):
  """Packed rows (segment ids), padding at the end of each row and, for ND, a prefix
  (`decoder_causal_attention`) in every packed sequence."""
  rng = np.random.default_rng(7)
  if arch == ED:
    enc_seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    dec_seg = np.array([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 0, 0, 0]], np.int32)
    enc = np.where(enc_seg > 0, rng.integers(2, VOCAB, enc_seg.shape), 0).astype(np.int32)
    targets = np.where(dec_seg > 0, rng.integers(2, VOCAB, dec_seg.shape), 0).astype(np.int32)
    return {"encoder_input_tokens": enc, "encoder_segment_ids": enc_seg,
            "decoder_target_tokens": targets, "decoder_segment_ids": dec_seg,
            "decoder_input_tokens": _shift(targets, dec_seg).astype(np.int32)}
  seg = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
  dca = np.array([[1, 1, 1, 0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]], np.int32)
  targets = np.where(seg > 0, rng.integers(2, VOCAB, seg.shape), 0).astype(np.int32)
  return {"decoder_target_tokens": targets, "decoder_segment_ids": seg,
          "decoder_causal_attention": dca,
          "decoder_input_tokens": _shift(targets, seg).astype(np.int32)}


def logits_loss_grads(model, params, batch):
  """(logits, loss, gradients w.r.t. params) of one jitted forward and backward pass; the
  loss is `loss_fn`'s (weighted cross-entropy plus z-loss) of the same logits."""
  targets = jnp.asarray(batch["decoder_target_tokens"])

  def loss(p):
    logits = model.compute_logits(p, batch)
    value = losses.compute_weighted_cross_entropy(
        logits, targets, (targets > 0).astype(jnp.float32), z_loss=model.z_loss)[0]
    return value, logits
  (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits), float(value), grads


def max_relative_difference(actual, expected) -> float:
  """max |actual - expected| / max |expected| over each pair of leaves, the worst leaf."""
  worst = 0.0
  flat_a = traverse_util.flatten_dict(actual, sep="/") if isinstance(actual, dict) else {
      "": actual}
  flat_e = traverse_util.flatten_dict(expected, sep="/") if isinstance(expected, dict) else {
      "": expected}
  assert set(flat_a) == set(flat_e)
  for name, e in flat_e.items():
    e, a = np.asarray(e, np.float64), np.asarray(flat_a[name], np.float64)
    assert a.shape == e.shape, name
    scale = np.abs(e).max()
    if scale > 0:
      worst = max(worst, float(np.abs(a - e).max() / scale))
    else:
      assert np.abs(a).max() == 0, name
  return worst


@pytest.fixture(scope="module")
def reference():
  """The reference path's logits, loss and gradients on each architecture's hard batch."""
  cache = {}

  def get(arch, params):
    if arch not in cache:
      cache[arch] = logits_loss_grads(tiny(arch), params[arch], hard_batch(arch))
    return cache[arch]
  return get


# ---------------------------------------------------------------------------
# attention_impl
# ---------------------------------------------------------------------------
def test_dot_product_attention_function_matches_the_reference_einsums():
  rng = np.random.default_rng(0)
  b, q, k, h, e = 2, 5, 6, 3, 4
  query, key, value = (jnp.asarray(rng.normal(size=s), jnp.float32)
                       for s in ((b, q, h, e), (b, k, h, e), (b, k, h, e)))
  mask = rng.random((b, 1, q, k)) > 0.3
  mask[1, 0, 2] = False                                # a query that sees no key at all
  bias = layers.combine_biases(layers.mask_to_bias(jnp.asarray(mask), jnp.float32),
                               jnp.asarray(rng.normal(size=(1, h, q, k)), jnp.float32))
  ref = layers.dot_product_attention(query, key, value, bias)
  fused = layers.dot_product_attention(query, key, value, bias, implementation="dot_product")
  assert fused.shape == (b, q, h, e)
  assert max_relative_difference(fused, ref) < ATTENTION_TOL
  # A fully masked query averages the values uniformly on both paths.
  np.testing.assert_allclose(fused[1, 2], jnp.mean(value[1], axis=0), rtol=1e-5, atol=1e-6)
  # With float32 logits the reference and the fused path agree in bfloat16 too.
  bf16 = [t.astype(jnp.bfloat16) for t in (query, key, value)]
  ref16 = layers.dot_product_attention(*bf16, bias, dtype=jnp.bfloat16, float32_logits=True)
  fused16 = layers.dot_product_attention(*bf16, bias, dtype=jnp.bfloat16,
                                         implementation="dot_product")
  assert fused16.dtype == jnp.bfloat16
  assert max_relative_difference(fused16, ref16) < 2e-2


@pytest.mark.parametrize("arch", [CD, ND, ED])
@pytest.mark.slow
def test_dot_product_attention_gives_the_reference_logits_and_gradients(arch, params,
                                                                        reference):
  ref_logits, ref_loss, ref_grads = reference(arch, params)
  logits, loss, grads = logits_loss_grads(tiny(arch, attention_impl="dot_product"),
                                          params[arch], hard_batch(arch))
  assert max_relative_difference(logits, ref_logits) < ATTENTION_TOL
  assert loss == pytest.approx(ref_loss, rel=ATTENTION_TOL)
  assert max_relative_difference(grads, ref_grads) < ATTENTION_TOL


@pytest.mark.parametrize("arch", [ND, ED])
@pytest.mark.slow
def test_cached_decoding_with_the_options_matches_the_reference(arch, params):
  if arch == ED:
    batch = {"encoder_input_tokens": np.array([[5, 6, 7, 8, 9, 0], [10, 11, 12, 0, 0, 0]],
                                              np.int32)}
  else:
    batch = {"decoder_input_tokens": np.array([[0, 5, 6, 7, 0, 0], [0, 9, 0, 0, 0, 0]], np.int32),
             "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]],
                                                  np.int32)}
  def predict(model):
    return jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_steps=4, eos_id=None,
                                                     return_logits=True))(params[arch], batch)
  ref = predict(tiny(arch))
  # The prefill runs the fused attention inside the scanned, rematerialised stack; each
  # cached step runs the reference einsums over the stacked cache.
  out = predict(tiny(arch, attention_impl="dot_product", scan_layers=True,
                     remat_policy="full"))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
  assert max_relative_difference(out.logits, ref.logits) < ATTENTION_TOL


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the error off NVIDIA GPUs")
def test_cudnn_attention_off_a_gpu_fails_naming_the_option(params):
  model = tiny(CD, attention_impl="cudnn")
  # Parameters come from the reference network, so initialising works anywhere.
  fresh = model.abstract_variables({"decoder_input_tokens": (1, 8)})
  assert jax.tree_util.tree_structure(fresh["params"]) == jax.tree_util.tree_structure(
      params[CD])
  with pytest.raises(ValueError, match="attention_impl='cudnn'.*NVIDIA GPUs.*'cpu'"):
    jax.eval_shape(model.compute_logits, params[CD], hard_batch(CD))
  with pytest.raises(ValueError, match="attention_impl='cudnn'"):
    jax.eval_shape(tiny(ED, attention_impl="cudnn").compute_logits, params[ED], hard_batch(ED))


@pytest.mark.parametrize("field,value,valid", [
    ("attention_impl", "flash", "einsum, dot_product, cudnn"),
    ("remat_policy", "everything", "none, full, dots, minimal"),
    ("scan_layers", "yes", "True or False"),
])
def test_bad_option_values_raise_errors_naming_the_field(field, value, valid):
  with pytest.raises(ValueError, match=f"TransformerConfig.{field}.*{valid}"):
    tiny(CD, **{field: value})


# ---------------------------------------------------------------------------
# remat_policy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("policy,arch", [("full", ED), ("dots", ND), ("minimal", ND)])
@pytest.mark.slow
def test_remat_keeps_the_loss_and_gradients(policy, arch, params, reference):
  ref_logits, ref_loss, ref_grads = reference(arch, params)
  logits, loss, grads = logits_loss_grads(tiny(arch, remat_policy=policy), params[arch],
                                          hard_batch(arch))
  assert loss == pytest.approx(ref_loss, rel=PROGRAM_TOL)
  assert max_relative_difference(logits, ref_logits) < PROGRAM_TOL
  assert max_relative_difference(grads, ref_grads) < PROGRAM_TOL


def test_remat_policy_names_map_to_jax_checkpoint_policies():
  policies = jax.checkpoint_policies
  assert network.remat_policy("full") is policies.nothing_saveable
  assert network.remat_policy("dots") is policies.checkpoint_dots
  assert network.remat_policy("minimal") is policies.checkpoint_dots_with_no_batch_dims
  with pytest.raises(ValueError, match="'none' means no remat"):
    network.remat_policy("none")


# ---------------------------------------------------------------------------
# scan_layers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch", [CD, ND, ED])
@pytest.mark.slow
def test_scanned_layers_give_the_unscanned_logits_and_gradients(arch, params, reference):
  ref_logits, ref_loss, ref_grads = reference(arch, params)
  model = tiny(arch, scan_layers=True)
  # Per-layer parameters in, per-layer gradients out: the model stacks inside the call.
  logits, loss, grads = logits_loss_grads(model, params[arch], hard_batch(arch))
  assert loss == pytest.approx(ref_loss, rel=PROGRAM_TOL)
  assert max_relative_difference(logits, ref_logits) < PROGRAM_TOL
  assert max_relative_difference(grads, ref_grads) < PROGRAM_TOL


def test_models_take_either_parameter_layout(params, reference):
  ref_logits, _, _ = reference(CD, params)
  scanned, unscanned = tiny(CD, scan_layers=True), tiny(CD)
  stacked = scanned.params_to_scanned(params[CD])
  batch = hard_batch(CD)
  # Already stacked: the scanned model skips the copy; the unscanned one unstacks.
  logits = jax.jit(scanned.compute_logits)(stacked, batch)
  assert max_relative_difference(logits, ref_logits) < PROGRAM_TOL
  np.testing.assert_array_equal(np.asarray(jax.jit(unscanned.compute_logits)(stacked, batch)),
                                ref_logits)


@pytest.mark.parametrize("arch", [CD, ED])
def test_stacking_the_layers_round_trips_exactly(arch, params):
  model = tiny(arch, scan_layers=True)
  canonical = jax.tree_util.tree_map(np.asarray, params[arch])
  stacked = model.params_to_scanned(canonical)
  stacks = ["decoder"] if arch == CD else ["encoder", "decoder"]
  for stack in stacks:
    assert not any(k.startswith("layers_") for k in stacked[stack])
    kernel = stacked[stack]["layers"]["mlp"]["wo"]["kernel"]
    assert isinstance(kernel, np.ndarray) and kernel.shape == (2, 128, 64)
    np.testing.assert_array_equal(kernel[1], canonical[stack]["layers_1"]["mlp"]["wo"]["kernel"])
  back = model.params_to_unscanned(stacked)
  flat_back, flat = param_tree.flatten(back), param_tree.flatten(canonical)
  assert set(flat_back) == set(flat)
  for name, value in flat.items():
    assert flat_back[name].dtype == value.dtype
    np.testing.assert_array_equal(flat_back[name], value)
  # The stacked layout is exactly the scanned module's own parameter tree.
  shapes = models.default_input_shapes(arch, 1, 8, 8, 8)
  own = jax.eval_shape(lambda r: nn.unbox(model._boxed_variables(r, shapes, scanned=True)),
                       jax.random.PRNGKey(0))["params"]
  assert {k: v.shape for k, v in param_tree.flatten(own).items()} == {
      k: v.shape for k, v in param_tree.flatten(stacked).items()}
  # Either layout passes through its own conversion unchanged.
  assert param_tree.flatten(model.params_to_scanned(stacked)).keys() == param_tree.flatten(
      stacked).keys()
  with pytest.raises(ValueError, match="layers_0 .. layers_1 without gaps"):
    param_tree.stack_layers({"decoder": {"layers_0": {"x": np.zeros(2)},
                                         "layers_2": {"x": np.zeros(2)}}})


@pytest.mark.parametrize("arch", [CD, ED])
def test_options_change_neither_the_initial_parameters_nor_their_names(arch, params):
  shapes = models.default_input_shapes(arch, 1, 8, 8, 8)
  seed = 0 if arch == CD else 1
  model = tiny(arch, attention_impl="dot_product", remat_policy="minimal", scan_layers=True)
  fresh = model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"]
  flat, flat_ref = param_tree.flatten(fresh), param_tree.flatten(params[arch])
  assert set(flat) == set(flat_ref)
  assert "decoder/layers_1/mlp/wo/kernel" in flat and "decoder/layers/mlp/wo/kernel" not in flat
  for name in flat_ref:
    np.testing.assert_array_equal(np.asarray(flat[name]), np.asarray(flat_ref[name]))
  assert param_tree.model_shapes(model) == param_tree.model_shapes(tiny(arch))
  assert model.logical_axes(shapes) == tiny(arch).logical_axes(shapes)


@pytest.mark.parametrize("fsdp", [False, True])
def test_the_stacked_layer_axis_maps_to_no_mesh_axis(fsdp):
  model = tiny(ED, scan_layers=True)
  shapes = models.default_input_shapes(ED, 1, 8, 8, 8)
  axes = traverse_util.flatten_dict(model.logical_axes(shapes, scanned=True)["params"], sep="/")
  stacked = {k: v for k, v in axes.items() if "/layers/" in k}
  assert stacked and all(spec[0] == layers.LAYERS for spec in stacked.values())
  assert all(layers.LAYERS not in spec for k, spec in axes.items() if k not in stacked)
  assert all(a in layers.PARAM_AXES for spec in axes.values() for a in spec)
  rules = partitioning.logical_axis_rules(fsdp)
  assert dict(rules)[layers.LAYERS] is None
  partitioner = partitioning.Partitioner(partitioning.make_mesh(1, 1, jax.devices()[:1]), fsdp)
  shardings = traverse_util.flatten_dict(
      partitioner.logical_to_mesh(model.logical_axes(shapes, scanned=True)["params"]), sep="/")
  for name in stacked:
    spec = shardings[name].spec
    assert spec[0] is None, name
    # The other axes are split as the per-layer parameter's axes are.
    per_layer = nn.logical_to_mesh_axes(stacked[name][1:], rules)
    assert tuple(spec[1:]) == tuple(per_layer), name


# ---------------------------------------------------------------------------
# plan and gin
# ---------------------------------------------------------------------------
def test_plan_estimate_falls_with_remat_and_counts_the_scan_copy():
  mesh = {"data": 16, "model": 4}
  s, b, t = 626, 16.0, 4

  def memory(**options):
    model = build_model(CD, "small", **options)
    return plan.memory_per_device(model, mesh, False, b, s)
  base = memory()
  by_policy = {p: memory(remat_policy=p) for p in ("dots", "minimal", "full")}
  assert (base["activations"] > by_policy["dots"]["activations"]
          > by_policy["minimal"]["activations"] > by_policy["full"]["activations"])
  for name in ("parameters", "optimizer_state", "gradients"):
    assert by_policy["full"][name] == base[name]
  # Full remat: each layer keeps its input, s*b*h*2 bytes, plus one layer's activations;
  # no remat keeps every layer's; the float32 logits and their gradient in both.
  c = build_model(CD, "small").config
  h, a, n, v = c.emb_dim, c.num_heads, c.num_decoder_layers, c.vocab_size
  one_layer = s * b * h * (10 + 24 / t) + 5 * a * s * s * b / t
  logits = 8 * b * s * v / t
  assert by_policy["full"]["activations"] == pytest.approx(n * 2 * s * b * h + one_layer
                                                           + logits)
  assert base["activations"] == pytest.approx(n * one_layer + logits)
  # Scanning adds two copies of every parameter but the embedding (split over model) and
  # the final norm: the stacked parameters and the stacked gradients.
  scanned = memory(scan_layers=True)
  assert base["scanned_layer_copy"] == 0 and scanned["activations"] == base["activations"]
  outside_layers = v * h * 4 / t + h * 4
  assert scanned["scanned_layer_copy"] == pytest.approx(
      2 * (base["parameters"] - outside_layers))
  assert scanned["total"] == pytest.approx(base["total"] + scanned["scanned_layer_copy"])


def test_plan_reads_the_remat_policy_from_gin():
  def report(*bindings):
    return plan.plan_run(["experiments/paper/cd_flm.gin"], list(bindings),
                         {"data": 16, "model": 4})["memory_per_device_gib"]
  full = report("build_model.remat_policy='full'")
  assert full["activations"] < report()["activations"] / 4


@pytest.mark.slow
def test_a_paper_gin_file_runs_a_step_with_every_option_bound(tmp_path, capsys):
  model_dir = tmp_path / "run"
  argv = ["train", "--gin_file=experiments/paper/nd_plm.gin", "--gin_file=local.gin",
          f"--gin.MODEL_DIR='{model_dir}'", f"--gin.LOCAL_DATA_DIR='{tmp_path / 'world'}'",
          "--gin.LOCAL_STEPS=1", "--gin.EVAL_PERIOD=0",
          "--gin.build_model.attention_impl='dot_product'",
          "--gin.build_model.remat_policy='full'", "--gin.build_model.scan_layers=True"]
  code = cli.main(argv)
  out = capsys.readouterr()
  assert code == 0, out.err[-3000:]
  summary = json.loads(out.out.strip().splitlines()[-1])
  assert summary["step"] == 1 and np.isfinite(summary["loss"])
  saved, meta, step = checkpoints.load_params(str(model_dir))
  assert step == 1 and meta["arch"] == ND
  config = meta["config"]
  assert (config["attention_impl"], config["remat_policy"], config["scan_layers"]) == (
      "dot_product", "full", True)
  assert config["emb_dim"] == network.SIZES["tiny"]["emb_dim"]
  # The checkpoint keeps t5x's per-layer names.
  names = set(param_tree.flatten(saved))
  assert "decoder/layers_1/self_attention/query/kernel" in names
  assert not any("/layers/" in n for n in names)


def test_evaluation_reads_a_run_trained_with_every_option_on_the_reference_path():
  """A run trained with the fused kernel (cuDNN, GPU-only), remat and scan is scored on
  any machine: evaluation rebuilds its model on the reference path."""
  import dataclasses
  from arch_objective import models
  model = build_model("non_causal_decoder", "tiny", dtype="float32", vocab_size=64,
                      attention_impl="cudnn", remat_policy="full", scan_layers=True)
  meta = {"arch": model.name, "config": dataclasses.asdict(model.config)}
  rebuilt = models.from_meta(meta, "runs/x", reference=True)
  assert (rebuilt.config.attention_impl, rebuilt.config.remat_policy,
          rebuilt.config.scan_layers) == ("einsum", "none", False)
  assert rebuilt.config.vocab_size == 64 and rebuilt.config.emb_dim == model.config.emb_dim
