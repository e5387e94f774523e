"""`network.py`: the networks' config (size presets and overrides, checked fields, the
reference path, the one reader of saved configs), the layer class remat wraps, a
cross-attention stack's inputs, the cross-attention keys and values projected once per
prompt, and dropout broadcast over the length as in t5x."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_objective import layers, network

from helpers import tiny_model_and_params


# ---------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------
def test_a_size_preset_gives_the_config_with_overrides_on_top():
  tiny = network.make_config("tiny")
  assert (tiny.emb_dim, tiny.num_heads, tiny.head_dim, tiny.mlp_dim) == (64, 4, 16, 128)
  assert tiny.num_encoder_layers == tiny.num_decoder_layers == 2
  assert tiny == network.TransformerConfig(emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                                           num_encoder_layers=2, num_decoder_layers=2)
  narrow = network.make_config("tiny", emb_dim=32, dtype="float32")
  assert (narrow.emb_dim, narrow.dtype, narrow.mlp_dim) == (32, "float32", 128)
  with pytest.raises(ValueError, match="unknown size 'huge'; valid sizes: tiny, small"):
    network.make_config("huge")
  with pytest.raises(ValueError, match=r"unknown config override\(s\) \['emb_size'\]"):
    network.make_config("tiny", emb_size=32)


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 0, "TransformerConfig.vocab_size must be a positive int, found 0"),
    ("head_dim", -1, "TransformerConfig.head_dim must be a positive int, found -1"),
    ("num_heads", 2.0, "TransformerConfig.num_heads must be a positive int, found 2.0"),
    ("dropout_rate", 1.0, r"TransformerConfig.dropout_rate must be in \[0, 1\), found 1.0"),
    ("dropout_rate", -0.1, r"TransformerConfig.dropout_rate must be in \[0, 1\), found -0.1"),
    ("dtype", "int8", "TransformerConfig.dtype must be one of bfloat16, float32, float16; "
                      "found 'int8'"),
    ("scan_layers", 1, "TransformerConfig.scan_layers must be True or False, found 1"),
], ids=["vocab_size=0", "head_dim=-1", "num_heads=2.0", "dropout_rate=1", "dropout_rate<0",
        "dtype=int8", "scan_layers=1"])
def test_a_config_field_out_of_range_is_refused_naming_it(field, value, message):
  with pytest.raises(ValueError, match=message):
    network.TransformerConfig(**{field: value})


def test_the_reference_config_resets_the_execution_options_only():
  fast = network.make_config("tiny", attention_impl="dot_product", remat_policy="dots",
                             scan_layers=True, dropout_rate=0.1, dtype="float16")
  reference = fast.reference()
  assert (reference.attention_impl, reference.remat_policy, reference.scan_layers) == (
      "einsum", "none", False)
  assert dataclasses.replace(reference, attention_impl="dot_product", remat_policy="dots",
                             scan_layers=True) == fast
  assert fast.activation_dtype == jnp.float16
  assert network.make_config("tiny").activation_dtype == jnp.bfloat16


def test_a_saved_config_reads_back_as_the_config_that_wrote_it():
  config = network.make_config("tiny", mlp_activations=("relu",), scan_layers=True)
  saved = json.loads(json.dumps(dataclasses.asdict(config)))    # JSON keeps tuples as lists
  assert saved["mlp_activations"] == ["relu"]
  assert network.config_from_dict(saved, "/ckpt") == config
  with pytest.raises(ValueError, match=r"/ckpt: unknown config field\(s\) \['emb_size'\]"):
    network.config_from_dict(dict(saved, emb_size=3), "/ckpt")
  with pytest.raises(ValueError, match=r"/ckpt: the model config is not a JSON object "
                                       r"\(found list\)"):
    network.config_from_dict([1, 2], "/ckpt")


@pytest.mark.parametrize("missing", [("emb_dim", "num_decoder_layers"), ("mlp_activations",),
                                     ("vocab_size",), ("dropout_rate", "dtype"),
                                     ("float32_attention_logits",)])
def test_a_saved_config_without_a_field_is_refused_naming_it(missing):
  """A `small` checkpoint whose meta lacks fields is refused by the one reader of saved
  configs (`network.config_from_dict`, under `models.from_meta`), naming the fields:
  never built at some preset's size. Execution options a config written before them
  lacks take their defaults."""
  import dataclasses as dc
  from arch_objective import models, network
  small = models.build_model("causal_decoder", "small")
  config = {k: v for k, v in dc.asdict(small.config).items() if k not in missing}
  for read in (lambda: models.from_meta({"arch": "causal_decoder", "config": config}, "/ckpt"),
               lambda: network.config_from_dict(config, "/ckpt")):
    with pytest.raises(ValueError) as e:
      read()
    assert f"the model config lacks {', '.join(missing)};" in str(e.value)
    assert "/ckpt" in str(e.value)
  older = {k: v for k, v in dc.asdict(small.config).items()
           if k not in ("attention_impl", "remat_policy", "scan_layers")}
  assert models.from_meta({"arch": "causal_decoder", "config": older}, "/ckpt").config == \
      small.config
  assert network.config_from_dict(older, "/ckpt") == small.config


# ---------------------------------------------------------------------------
# Layers and stacks
# ---------------------------------------------------------------------------
def test_remat_wraps_the_layer_for_training_only():
  plain, full = network.make_config("tiny"), network.make_config("tiny", remat_policy="full")
  assert network.layer_class(plain) is network.TransformerLayer
  wrapped = network.layer_class(full)
  assert wrapped is not network.TransformerLayer
  assert issubclass(wrapped, network.TransformerLayer)
  for mode in (layers.MODE_PREFILL, layers.MODE_AUTOREGRESSIVE):   # no gradient: no remat
    assert network.layer_class(full, mode) is network.TransformerLayer


def test_a_cross_attention_stack_takes_encoded_or_key_values_exactly_once():
  config = network.make_config("tiny", vocab_size=16, dtype="float32")
  stack = network.TransformerStack(config, cross_attention=True)
  tokens, rng = jnp.ones((1, 4), jnp.int32), jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r"the decoder stack's cross-attention takes encoded "
                                       r"\[batch, length, emb\] or cross_key_values, exactly "
                                       r"one; found neither"):
    stack.init(rng, tokens, None)
  with pytest.raises(ValueError, match="cross_rows selects rows of cross_key_values"):
    stack.init(rng, tokens, None, encoded=jnp.zeros((1, 3, 64)),
               cross_rows=jnp.zeros((1,), jnp.int32))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cross_key_values_are_each_layers_key_and_value_projections(scan_layers):
  """Against numpy: layer n's `encoder_decoder_attention/{key,value}/kernel [d, h*e]`
  applied to `encoded [b, i, d]`, split into heads -> `[n, b, i, h, e]`."""
  config = network.TransformerConfig(vocab_size=8, emb_dim=4, num_heads=2, head_dim=3,
                                     mlp_dim=8, num_encoder_layers=1, num_decoder_layers=3,
                                     dtype="float32", scan_layers=scan_layers)
  rng = np.random.default_rng(0)
  kernels = {n: rng.standard_normal((3, 4, 6)).astype(np.float32) for n in ("key", "value")}
  if scan_layers:       # stacked: one `layers` subtree with a leading layer axis
    decoder = {"layers": {network.CROSS_ATTENTION: {n: {"kernel": k}
                                                    for n, k in kernels.items()}}}
  else:
    decoder = {f"layers_{i}": {network.CROSS_ATTENTION: {n: {"kernel": k[i]}
                                                         for n, k in kernels.items()}}
               for i in range(3)}
  encoded = rng.standard_normal((2, 5, 4)).astype(np.float32)
  kv = network.cross_key_values(config, {network.DECODER: decoder}, jnp.asarray(encoded))
  for name, got in zip(("key", "value"), kv):
    expected = np.einsum("bid,ndk->nbik", encoded.astype(np.float64), kernels[name])
    np.testing.assert_allclose(np.asarray(got), expected.reshape(3, 2, 5, 2, 3), rtol=1e-5,
                               atol=1e-5)


def test_every_dropout_of_the_network_broadcasts_over_length():
  # t5x drops whole embedding units for every position (broadcast_dims=(-2,)), the final
  # decoder dropout included. Captured outputs of every Dropout module: a unit dropped at
  # one position is dropped at all positions of that row.
  model, params, batch = tiny_model_and_params("causal_decoder", 0.5)
  from arch_objective import network
  module = network.DecoderOnly(model.config)
  tokens = jnp.asarray(batch["decoder_input_tokens"])
  _, state = module.apply({"params": params}, tokens, None, enable_dropout=True,
                          rngs={"dropout": jax.random.PRNGKey(5)},
                          capture_intermediates=lambda mdl, _: isinstance(mdl, layers.Dropout))
  outputs = [v for path, v in jax.tree_util.tree_leaves_with_path(state["intermediates"])
             if "Dropout" in jax.tree_util.keystr(path)]
  # embedding, three per layer (after attention, inside the MLP, after the MLP), final.
  assert len(outputs) == 1 + 3 * model.config.num_decoder_layers + 1
  for out in outputs:
    zero = np.asarray(out) == 0                                   # [b, l, d] or [b, l, mlp]
    assert zero.any()
    np.testing.assert_array_equal(zero, np.broadcast_to(zero[:, :1], zero.shape))
