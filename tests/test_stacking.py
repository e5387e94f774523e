"""`stacking.py`: t5x's per-layer parameter names (`layers_0..layers_{n-1}`) to the
stacked layout of a scanned stack (`layers`, a leading layer axis) and back, exactly, for
numpy, jax and abstract leaves, and the trees it refuses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arch_objective import stacking


def per_layer_tree(encoder_layers=11, decoder_layers=2):
  """An encoder-decoder-like tree: a shared embedding, and stacks of per-layer subtrees
  beside a final norm (11 encoder layers: `layers_10` sorts after `layers_9`)."""
  rng = np.random.default_rng(0)

  def layer():
    return {"mlp": {"wo": {"kernel": rng.standard_normal((3, 2)).astype(np.float32)}},
            "pre_mlp_layer_norm": {"scale": rng.standard_normal(2).astype(np.float32)}}

  return {"token_embedder": {"embedding": rng.standard_normal((5, 2)).astype(np.float32)},
          "encoder": {"encoder_norm": {"scale": np.ones(2, np.float32)},
                      **{f"layers_{i}": layer() for i in range(encoder_layers)}},
          "decoder": {f"layers_{i}": layer() for i in range(decoder_layers)}}


def test_each_stack_is_stacked_on_a_leading_layer_axis_and_back_exactly():
  tree = per_layer_tree()
  stacked = stacking.stack_layers(tree)
  assert sorted(stacked["encoder"]) == ["encoder_norm", "layers"]
  assert sorted(stacked["decoder"]) == ["layers"]
  kernel = stacked["encoder"]["layers"]["mlp"]["wo"]["kernel"]
  assert isinstance(kernel, np.ndarray) and kernel.shape == (11, 3, 2)    # numpy stays numpy
  for i in (0, 2, 10):
    np.testing.assert_array_equal(kernel[i], tree["encoder"][f"layers_{i}"]["mlp"]["wo"]["kernel"])
  assert stacked["decoder"]["layers"]["pre_mlp_layer_norm"]["scale"].shape == (2, 2)
  assert stacked["token_embedder"]["embedding"] is tree["token_embedder"]["embedding"]
  assert stacked["encoder"]["encoder_norm"] == tree["encoder"]["encoder_norm"]
  back = stacking.unstack_layers(stacked)
  flat, flat_back = stacking.flatten(tree), stacking.flatten(back)
  assert sorted(flat_back) == sorted(flat)
  for name, value in flat.items():
    assert flat_back[name].dtype == value.dtype, name
    np.testing.assert_array_equal(flat_back[name], value)
  # Trees without per-layer subtrees, and leaves, pass through unchanged.
  assert stacking.stack_layers({"a": {"b": 1}}) == {"a": {"b": 1}}
  assert stacking.unstack_layers({"layers": 3}) == {"layers": 3}
  assert stacking.stack_layers(7) == 7


def test_jax_arrays_stack_under_jit_and_abstract_leaves_keep_their_dtype():
  tree = {"layers_0": {"w": jnp.ones((2,))}, "layers_1": {"w": jnp.zeros((2,))}}
  stacked = jax.jit(stacking.stack_layers)(tree)
  assert isinstance(stacked["layers"]["w"], jax.Array)
  np.testing.assert_array_equal(stacked["layers"]["w"], [[1, 1], [0, 0]])
  abstract = {f"layers_{i}": {"w": jax.ShapeDtypeStruct((2, 3), jnp.bfloat16)}
              for i in range(4)}
  leaf = stacking.stack_layers(abstract)["layers"]["w"]
  assert isinstance(leaf, jax.ShapeDtypeStruct)
  assert leaf.shape == (4, 2, 3) and leaf.dtype == jnp.bfloat16
  back = stacking.unstack_layers({"layers": {"w": leaf}})
  assert sorted(back) == ["layers_0", "layers_1", "layers_2", "layers_3"]
  assert back["layers_3"]["w"].shape == (2, 3) and back["layers_3"]["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("tree,message", [
    ({"layers_0": {"x": np.zeros(2)}, "layers_2": {"x": np.zeros(2)}},
     r"cannot stack layers \['layers_0', 'layers_2'\]: expected layers_0 .. layers_1 "
     r"without gaps"),
    ({"layers": {"x": np.zeros((1, 2))}, "layers_0": {"x": np.zeros(2)}},
     r"cannot stack layers: the tree holds both 'layers' and 'layers_i' subtrees"),
    ({"layers_0": {"a": np.zeros(2)}, "layers_1": {"b": np.zeros(2)}},
     r"cannot stack layers: layers_1 has other parameters than layers_0 \(\['b'\] vs "
     r"\['a'\]\)"),
], ids=["gap", "both layouts", "other parameters"])
def test_trees_that_cannot_be_stacked_are_refused(tree, message):
  with pytest.raises(ValueError, match=message):
    stacking.stack_layers({"decoder": tree})


@pytest.mark.parametrize("tree,message", [
    ({"layers": {"x": np.zeros((2, 3))}, "layers_0": {"x": np.zeros(3)}},
     r"cannot unstack layers: the tree holds both 'layers' and \['layers_0'\]"),
    ({"layers": {"a": np.zeros((2, 3)), "b": np.zeros((3,))}},
     r"one shared leading layer axis, found leading sizes \['2', '3'\]"),
    ({"layers": {"a": np.zeros((2, 3)), "b": np.float32(1.0)}},
     r"found leading sizes \['2', 'None'\]"),
], ids=["both layouts", "other layer counts", "no layer axis"])
def test_trees_that_cannot_be_unstacked_are_refused(tree, message):
  with pytest.raises(ValueError, match=message):
    stacking.unstack_layers({"decoder": tree})
