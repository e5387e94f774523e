"""`training/partitioning.py`: the one table from logical axes to mesh axes (with and
without FSDP), meshes over the devices there are, mesh specs, and a `Partitioner`
placing parameters and batches and checking that they divide over the mesh. Joining a
multi-host job (`initialize_distributed`) is tested in test_distributed_errors.py."""
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from arch_objective import layers
from arch_objective.training import partitioning


def one_device_partitioner(fsdp=False):
  return partitioning.Partitioner(partitioning.make_mesh(1, 1, jax.devices()[:1]), fsdp)


def test_one_table_maps_each_logical_axis_to_a_mesh_axis():
  table = partitioning.logical_axis_rules()
  rules = dict(table)
  assert len(rules) == len(table)                                  # each axis named once
  assert {axis: rules[axis] for axis in layers.PARAM_AXES} == {
      layers.VOCAB: "model", layers.EMBED: None, layers.MLP: "model", layers.HEADS: "model",
      layers.KV: None, layers.JOINED_KV: "model", layers.RELPOS_BUCKETS: None,
      layers.LAYERS: None}
  assert rules[layers.ACT_BATCH] == "data" and rules[layers.ACT_LENGTH] is None
  assert rules[layers.ACT_MLP] == rules[layers.ACT_HEADS] == rules[layers.ACT_VOCAB] == "model"
  # FSDP splits the parameters' embed axis over `data` too, and changes nothing else.
  fsdp = dict(partitioning.logical_axis_rules(fsdp=True))
  assert fsdp.pop(layers.EMBED) == "data" and rules.pop(layers.EMBED) is None
  assert fsdp == rules


def test_a_mesh_takes_every_device_by_default():
  mesh = partitioning.make_mesh()
  assert mesh.axis_names == ("data", "model")
  assert dict(mesh.shape) == {"data": jax.device_count(), "model": 1}
  assert dict(partitioning.make_mesh(1, 1, jax.devices()[:1]).shape) == {"data": 1, "model": 1}


@pytest.mark.parametrize("data,model,message", [
    (-1, 3, "8 devices cannot be split into model=3 parts; choose a model size dividing 8"),
    (4, 4, r"mesh data=4 x model=4 needs 16 devices but 8 are available; set data x "
           r"model = 8"),
    (8, 0, "mesh model size must be >= 1, found 0"),
], ids=["model=3 of 8", "16 of 8", "model=0"])
def test_a_mesh_that_does_not_fit_the_devices_is_refused(data, model, message):
  with pytest.raises(ValueError, match=message):      # before any device is looked at
    partitioning.make_mesh(data, model, devices=[object()] * 8)


def test_a_mesh_spec_gives_the_axis_sizes():
  assert partitioning.parse_mesh("data=4,model=2") == {"data": 4, "model": 2}
  assert partitioning.parse_mesh(" model=2 , ") == {"model": 2}
  assert partitioning.parse_mesh("data=-1") == {"data": -1}
  assert partitioning.parse_mesh("") == {}
  for spec, part in [("data=4,batch=2", "batch=2"), ("data=four", "data=four"),
                     ("data", "data")]:
    with pytest.raises(ValueError, match=rf"mesh spec '{spec}': expected 'data=N,model=M', "
                                         rf"found '{part}'"):
      partitioning.parse_mesh(spec)


def test_the_partitioner_places_parameters_and_batches_by_the_table():
  partitioner = one_device_partitioner()
  assert partitioner.data_parallel_size == 1
  specs = {"wi": P(layers.EMBED, layers.MLP), "scale": P(layers.EMBED), "step": P()}
  shardings = partitioner.logical_to_mesh(specs)
  assert {k: tuple(s.spec) for k, s in shardings.items()} == {
      "wi": (None, "model"), "scale": (None,), "step": ()}
  assert all(s.mesh is partitioner.mesh for s in shardings.values())
  fsdp = one_device_partitioner(fsdp=True).logical_to_mesh(specs)
  assert tuple(fsdp["wi"].spec) == ("data", "model") and tuple(fsdp["scale"].spec) == ("data",)
  assert partitioner.batch_sharding().spec == P("data")
  assert partitioner.replicated().spec == P()
  rows = np.arange(12, dtype=np.int32).reshape(3, 4)
  batch = partitioner.shard_batch({"decoder_input_tokens": rows})
  assert batch["decoder_input_tokens"].sharding.spec == P("data")
  np.testing.assert_array_equal(batch["decoder_input_tokens"], rows)
  with partitioner.activation_context():
    assert nn.get_logical_axis_rules() == partitioner.rules
    assert dict(jax.sharding.get_abstract_mesh().shape) == {"data": 1, "model": 1}
  assert nn.get_logical_axis_rules() == ()


def test_batches_and_parameters_must_divide_over_the_mesh():
  shardings = one_device_partitioner().logical_to_mesh(
      {"wi": P(layers.EMBED, layers.MLP), "scale": P(layers.EMBED)})
  fsdp_shardings = one_device_partitioner(fsdp=True).logical_to_mesh(
      {"wi": P(layers.EMBED, layers.MLP), "scale": P(layers.EMBED)})
  # The checks read the mesh's axis sizes only: these stand in for a data=4 x model=2 mesh.
  partitioner = partitioning.Partitioner(types.SimpleNamespace(shape={"data": 4, "model": 2}))
  assert partitioner.data_parallel_size == 4
  assert partitioner.check_batch_size(8) == 8                      # rows of this process
  with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the data-parallel "
                                       r"size 4 .*use a multiple of 4"):
    partitioner.check_batch_size(6)
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)
  partitioner.check_divisible({"wi": shape(64, 128), "scale": shape(63)}, shardings)
  with pytest.raises(ValueError, match=r"parameter \['wi'\] of shape \(64, 127\) cannot be "
                                       r"split over mesh axis 'model' of size 2; choose a mesh "
                                       r"size dividing 127"):
    partitioner.check_divisible({"wi": shape(64, 127), "scale": shape(63)}, shardings)
  with pytest.raises(ValueError, match=r"parameter \['scale'\] of shape \(63,\) cannot be "
                                       r"split over mesh axis 'data' of size 4"):
    partitioner.check_divisible({"wi": shape(64, 128), "scale": shape(63)}, fsdp_shardings)
