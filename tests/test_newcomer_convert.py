"""`convert t5x-in` reads our own `convert t5x-out` export back without options; its
errors name options that exist."""
import json
import os

import numpy as np

from arch_objective import cli, models
from arch_objective.convert import model_dir, param_tree, t5x
from arch_objective.training import checkpoints

from helpers import one_layer_model, random_params, run_cli

CD = models.CAUSAL_DECODER
ED = models.ENCODER_DECODER


def _model_dir(tmp_path, arch=ED, step=7):
  model = one_layer_model(arch, 128)
  params = random_params(model, 0)
  directory = str(tmp_path / "src")
  vocabulary = tmp_path / "spm.model"          # recorded, not read
  model_dir.write_model_dir(directory, arch, model.config, params, step=step,
                            vocabulary=str(vocabulary), vocab_size=100, task="local_full_lm")
  return directory, model, params


def test_our_t5x_export_round_trips_without_options(tmp_path, capsys):
  directory, model, params = _model_dir(tmp_path)
  rc, out, err = run_cli(capsys, ["convert", "t5x-out", "--model_dir", directory,
                                  "--out", str(tmp_path / "t5x")])
  assert rc == 0, err
  report = json.loads(out.strip().splitlines()[-1])
  assert os.path.isfile(report["model_config"])
  rc, out, err = run_cli(capsys, ["convert", "t5x-in", "--checkpoint", str(tmp_path / "t5x"),
                                  "--out", str(tmp_path / "back")])
  assert rc == 0, err
  back, back_params, meta, step = checkpoints.open_model_dir(str(tmp_path / "back"))
  assert step == 7 and meta["arch"] == ED and back.config == model.config
  assert meta["vocab_size"] == 100 and meta["vocabulary"] == str(tmp_path / "spm.model")
  assert meta["task"] == "local_full_lm" and meta["lineage"][-1]["conversion"] == "t5x-in"
  flat, flat_back = param_tree.flatten(params), param_tree.flatten(back_params)
  assert set(flat) == set(flat_back)
  for name in flat:
    np.testing.assert_array_equal(np.asarray(flat[name]), np.asarray(flat_back[name]))


def test_a_foreign_t5x_checkpoint_asks_for_arch_and_size(tmp_path, capsys):
  model = one_layer_model(CD, 128)
  ckpt = t5x.write_t5x_checkpoint(random_params(model, 1), str(tmp_path / "t5x"), 3)
  rc, _, err = run_cli(capsys, ["convert", "t5x-in", "--checkpoint", ckpt,
                                "--out", str(tmp_path / "md")])
  line = err.strip().splitlines()[-1]
  assert rc == 2 and "Traceback" not in err
  assert "model_config.json" in line and "--arch and --size" in line and "--config" in line


def test_a_checkpoint_that_does_not_fit_names_real_options(tmp_path, capsys):
  model = one_layer_model(CD, 128)
  ckpt = t5x.write_t5x_checkpoint(random_params(model, 1), str(tmp_path / "t5x"), 3)
  rc, _, err = run_cli(capsys, ["convert", "t5x-in", "--checkpoint", ckpt, "--arch", CD,
                                "--size", "tiny", "--out", str(tmp_path / "md")])
  line = err.strip().splitlines()[-1]
  assert rc == 2 and "strict=False" not in line
  assert "--config NAME=VALUE" in line and "--allow_missing" in line
  parser = cli.build_parser()
  args = parser.parse_args(["convert", "t5x-in", "--checkpoint", ckpt, "--out", "x",
                            "--config", "vocab_size=128", "--allow_missing"])
  assert args.allow_missing and args.config == ["vocab_size=128"]
