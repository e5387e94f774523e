"""One door to a model directory: `checkpoints.open_model_dir` gives the model its meta
describes and its parameters, whichever reader asks (evaluation, conversion, `plan`).

A meta whose config lacks a field that decides the model is refused by every reader, in
one line naming the field: never built at a size preset's or the dataclass default's
value. Only the execution options (attention_impl, remat_policy, scan_layers), which
configs written before them lack, take their defaults.
"""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from arch_objective import build_model, models, network
from arch_objective.convert import param_tree
from arch_objective.training import checkpoints

import helpers

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
STEP = 3


def tiny(arch=CD):
  return build_model(arch, "tiny", dtype="float32", vocab_size=128)


@pytest.fixture(scope="module")
def written(tiny_model_dirs):
  """A causal decoder's model directory at step 3 (`write_model_dir`: conftest's
  `tiny_model_dirs`, the model of `tiny()`) and its params."""
  return tiny_model_dirs(CD)


def copy_without(written, tmp_path, *fields):
  """A copy of the model directory whose meta config lacks `fields`."""
  copy = tmp_path / "cd"
  shutil.copytree(written[0], copy)
  meta_file = copy / "checkpoints" / str(STEP) / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  for name in fields:
    del meta["config"][name]
  meta_file.write_text(json.dumps(meta))
  return str(copy)


def test_every_form_of_the_path_opens_the_same_model(written):
  out, params = written
  for path in (out, f"{out}/checkpoints", f"{out}/checkpoints/{STEP}"):
    model, read, meta, step = checkpoints.open_model_dir(path)
    assert model.name == CD and model.config == tiny().config and step == STEP
    assert meta["arch"] == CD and meta["vocab_size"] == 100
    saved, back = param_tree.flatten(params), param_tree.flatten(read)
    assert sorted(saved) == sorted(back)
    for name, value in saved.items():
      assert back[name].dtype == np.float32
      np.testing.assert_array_equal(value, back[name])
  assert checkpoints.open_model_dir(out, STEP, read_params=False)[3] == STEP


def test_the_door_reads_as_asked(written):
  out, _ = written
  model, params, meta, step = checkpoints.open_model_dir(out, arch=ND, dtype="bfloat16",
                                                         read_params=False)
  assert params is None and step == STEP and meta["arch"] == CD
  assert model.name == ND and model.config.dtype == "bfloat16"
  with pytest.raises(ValueError, match="holds a causal_decoder model; it cannot be read as "
                                       "encoder_decoder"):
    checkpoints.open_model_dir(out, arch=ED)
  with pytest.raises(ValueError, match=rf"is step {STEP}; step 7 names another"):
    checkpoints.open_model_dir(f"{out}/checkpoints/{STEP}", 7)
  with pytest.raises(ValueError, match=rf"no step 7 in .*; steps are \[{STEP}\]"):
    checkpoints.open_model_dir(out, 7)


def test_the_reference_path_resets_only_the_execution_options():
  trained = dataclasses.replace(tiny().config, attention_impl="dot_product",
                                remat_policy="full", scan_layers=True, dropout_rate=0.1)
  meta = {"arch": CD, "config": dataclasses.asdict(trained)}
  as_trained = models.from_meta(meta, "/ckpt")
  assert as_trained.config == trained
  scored = models.from_meta(meta, "/ckpt", reference=True)
  assert (scored.config.attention_impl, scored.config.remat_policy, scored.config.scan_layers,
          scored.config.dropout_rate) == ("einsum", "none", False, 0.0)
  assert dataclasses.replace(scored.config, attention_impl="dot_product", remat_policy="full",
                             scan_layers=True, dropout_rate=0.1) == trained


def test_every_field_but_the_execution_options_must_be_saved():
  assert set(network.FUNCTION_FIELDS) | set(network.EXECUTION_OPTIONS) == {
      f.name for f in dataclasses.fields(network.TransformerConfig)}
  assert not set(network.FUNCTION_FIELDS) & set(network.EXECUTION_OPTIONS)


@pytest.mark.parametrize("field", ["emb_dim", "num_decoder_layers", "dtype"])
def test_a_meta_without_a_config_field_is_refused_naming_it(written, tmp_path, field):
  copy = copy_without(written, tmp_path, field)
  for read_params in (True, False):
    with pytest.raises(ValueError) as e:
      checkpoints.open_model_dir(copy, read_params=read_params)
    assert f"the model config lacks {field};" in str(e.value) and copy in str(e.value)


def test_a_meta_without_an_execution_option_takes_its_default(written, tmp_path):
  copy = copy_without(written, tmp_path, *network.EXECUTION_OPTIONS)
  model, _, _, _ = checkpoints.open_model_dir(copy, read_params=False)
  assert model.config == tiny().config


def one_line_refusal(capsys, argv):
  """(exit status, the one line on stderr) of a command run in-process."""
  rc, _, err = helpers.run_cli(capsys, argv)
  return rc, helpers.one_line(err)


@pytest.mark.parametrize("command", [
    ["convert", "hf-out", "--model_dir", "{dir}", "--out", "{out}", "--no_tokenizer"],
    ["convert", "t5x-out", "--model_dir", "{dir}", "--out", "{out}"],
    ["convert", "switch-arch", "--model_dir", "{dir}", "--arch", ND, "--out", "{out}"],
    ["eval", "t0", "--checkpoint", "{dir}", "--max_examples", "1"],
    ["plan", "--model_dir", "{dir}"],
], ids=lambda argv: " ".join(argv[:2]))
def test_every_command_refuses_a_meta_without_a_config_field(written, tmp_path, capsys,
                                                             command):
  copy = copy_without(written, tmp_path, "emb_dim")
  out = tmp_path / "out"
  argv = [a.replace("{dir}", copy).replace("{out}", str(out)) for a in command]
  rc, line = one_line_refusal(capsys, argv)
  assert rc == 2, line
  name = " ".join(a for a in command[:2] if not a.startswith("-"))
  assert line.startswith(f"arch-objective {name}: "), line
  assert "the model config lacks emb_dim;" in line and copy in line, line
  assert not out.exists()
