"""What a user types wrong gets one line and exit 2, and loses nothing: each row is a
command as typed, its exit status and a fragment of the line it must print (stderr holds
that one line and no traceback). `{run}` is a causal decoder trained for 2 steps on the
local world, `{tmp}` a fresh folder; a row that would change `{run}` runs on a copy
(`{copy}`), and `{truncated}` is a copy whose train state lost its `_METADATA` file.

The cases that need a prepared input (a tampered export, a full disk, a second
vocabulary, a bad corpus in a subprocess) live beside their feature's tests:
test_convert_safety, test_resume_safety, test_eval_safety, test_distributed_errors,
test_lm_eval_cli."""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest

from arch_objective import cli
from arch_objective.errors import UserError

CD = ["--gin_file=experiments/paper/cd_flm.gin", "--gin_file=local.gin"]
TRAIN = ["train"] + CD + ["--gin.LOCAL_STEPS=2"]
EVALUATE = ["evaluate", "--gin_file=models/causal_decoder.gin",
            "--gin_file=objectives/full_lm.gin", "--gin_file=runs/evaluate.gin",
            "--gin_file=local.gin"]
T0 = ["eval", "t0", "--gin_file=experiments/paper/eval_t0.gin", "--gin_file=local.gin"]
HARNESS = ["eval", "harness", "--gin_file=experiments/paper/eval_harness.gin",
           "--gin_file=local.gin"]

# (case, command, exit status, fragment of the one line)
ROWS = [
    ("plan: negative length", ["plan", "--arch", "causal_decoder", "--size", "tiny",
                               "--length", "-5"],
     2, "argument --length: expected a positive integer, found -5"),
    ("plan: unknown device", ["plan"] + CD[:1] + ["--device", "foo"],
     2, "--device 'foo': expected one of tpu_v4, tpu_v5e"),
    ("plan: no devices", ["plan"] + CD[:1] + ["--num_devices", "0"],
     2, "argument --num_devices: expected a positive integer, found 0"),
    ("plan: a step that is not there", ["plan", "--model_dir", "{run}/checkpoints/99"],
     2, "no step 99 in {run}/checkpoints; steps are [2]"),
    ("plan: a truncated checkpoint", ["plan", "--model_dir", "{truncated}"],
     2, "checkpoint {truncated}/checkpoints/2 cannot be read: state/_METADATA missing"),
    ("train: resume from a truncated checkpoint", TRAIN + ["--gin.MODEL_DIR='{truncated}'",
                                                           "--gin.LOCAL_STEPS=4"],
     2, "It is the only checkpoint of the run and stays where it is"),
    ("evaluate: a truncated checkpoint", EVALUATE + ["--gin.MODEL_DIR='{truncated}'"],
     2, "checkpoint {truncated}/checkpoints/2 is incomplete: state/_METADATA missing"),
    ("data: negative count", ["data", "show", "--task", "local_full_lm", "--num", "-1"],
     2, "argument --num: expected a positive integer, found -1"),
    ("gin: unclosed bracket", TRAIN + ["--gin.MODEL_DIR='{tmp}/a'", "--gin.TRAIN_STEPS=("],
     2, "gin binding 'TRAIN_STEPS=(': the value is not a Python literal"),
    ("train: empty MODEL_DIR", TRAIN + ["--gin.MODEL_DIR=''"],
     2, "MODEL_DIR (train.model_dir) must name the run's directory, found ''"),
    ("train: keep no checkpoint", TRAIN + ["--gin.MODEL_DIR='{tmp}/a'",
                                           "--gin.train.keep_checkpoints=0"],
     2, "train.keep_checkpoints must be a positive integer"),
    ("train: process 5 of 2", TRAIN + ["--gin.MODEL_DIR='{tmp}/a'", "--num_processes", "2",
                                       "--process_id", "5"],
     2, "--process_id must be below --num_processes=2"),
    ("train: two processes, no coordinator", TRAIN + ["--gin.MODEL_DIR='{tmp}/a'",
                                                      "--num_processes", "2",
                                                      "--process_id", "0"],
     2, "a multi-process job needs a coordinator address"),
    ("train: resume with another optimizer", TRAIN + ["--gin.MODEL_DIR='{copy}'",
                                                      "--gin.LOCAL_STEPS=4",
                                                      "--gin.adafactor.momentum=0.9"],
     2, "with a different run: optimizer: {'momentum': None} -> {'momentum': 0.9}"),
    ("train: initial checkpoint without checkpoints",
     ["train", "--gin_file=experiments/paper/nc_a.gin", "--gin_file=local.gin",
      "--gin.MODEL_DIR='{tmp}/a'", "--gin.INITIAL_CHECKPOINT_PATH='{tmp}'"],
     2, "(INITIAL_CHECKPOINT_PATH): no checkpoint in {tmp}"),
    ("evaluate: EVAL_STEPS 0", EVALUATE + ["--gin.MODEL_DIR='{run}'", "--gin.EVAL_STEPS=0"],
     2, "eval_steps (gin: EVAL_STEPS, or evaluate.eval_steps) must be a positive number"),
    ("evaluate: missing MODEL_DIR", EVALUATE + ["--gin.MODEL_DIR='{tmp}/none'"],
     2, "MODEL_DIR {tmp}/none does not exist"),
    ("eval t0: inputs length 0", T0 + ["--checkpoint", "{run}", "--inputs_length", "0"],
     2, "--inputs_length (gin: INPUTS_LENGTH, or eval_t0.inputs_length) must be a positive"),
    ("eval t0: negative bootstrap", T0 + ["--checkpoint", "{run}", "--bootstrap", "-1"],
     2, "--bootstrap (gin: BOOTSTRAP, or eval_t0.bootstrap) must be an integer >= 0"),
    ("eval t0: a step that is not there", T0 + ["--checkpoint", "{run}/checkpoints/99"],
     2, "no step 99 in {run}/checkpoints; steps are [2]"),
    ("eval harness: negative bootstrap", HARNESS + ["--checkpoint", "{run}",
                                                    "--bootstrap_iters", "-5"],
     2, "--bootstrap_iters (gin: BOOTSTRAP_ITERS, or eval_harness.bootstrap_iters) must be"),
    ("eval harness: negative limit", HARNESS + ["--checkpoint", "{run}", "--limit", "-1"],
     2, "--limit (gin: LIMIT, or eval_harness.limit) must be a number of examples >= 1"),
    ("t5x-out: unknown dtype", ["convert", "t5x-out", "--model_dir", "{run}",
                                "--out", "{tmp}/t5x", "--dtype", "float13"],
     2, "--dtype: expected one of float32, bfloat16, float16, float64, found 'float13'"),
    ("hf-out: unknown dtype", ["convert", "hf-out", "--model_dir", "{run}",
                               "--out", "{tmp}/hf", "--dtype", "float13"],
     2, "--dtype: expected one of float32, bfloat16, float16, float64, found 'float13'"),
]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> pathlib.Path:
  model_dir = tmp_path_factory.mktemp("user_errors") / "cd"
  assert cli.main(TRAIN + [f"--gin.MODEL_DIR='{model_dir}'"]) == 0
  return model_dir


def _listing(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _fill(text: str, values: dict) -> str:
  for name, value in values.items():
    text = text.replace("{" + name + "}", value)
  return text


@pytest.mark.parametrize("case,argv,status,fragment", ROWS, ids=[r[0] for r in ROWS])
@pytest.mark.slow
def test_a_mistake_is_one_line(case, argv, status, fragment, run, tmp_path, capsys):
  copy, truncated = tmp_path / "copy", tmp_path / "truncated"
  shutil.copytree(run, copy)
  shutil.copytree(run, truncated)
  (truncated / "checkpoints" / "2" / "state" / "_METADATA").unlink()
  values = {"run": str(run), "tmp": str(tmp_path), "copy": str(copy),
            "truncated": str(truncated)}
  before = _listing(run), _listing(copy), _listing(truncated)
  capsys.readouterr()
  try:
    rc = cli.main([_fill(a, values) for a in argv])
  except SystemExit as e:        # argparse
    rc = e.code
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert rc == status, err[-3000:]
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  assert lines[0].startswith(f"arch-objective {argv[0]}"), lines[0]
  assert _fill(fragment, values) in lines[0], lines[0]
  assert (_listing(run), _listing(copy), _listing(truncated)) == before, \
      "a refused command changed a run"


def test_traceback_on_request(capsys, monkeypatch):
  """`--traceback` (or ARCH_OBJECTIVE_TRACEBACK=1) prints the traceback above the line."""
  argv = ["plan", "--gin_file=experiments/paper/cd_flm.gin", "--device", "foo"]
  assert cli.main(argv) == 2
  assert "Traceback" not in capsys.readouterr().err
  assert cli.main(argv + ["--traceback"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("Traceback") and err.strip().splitlines()[-1].startswith(
      "arch-objective plan: --device 'foo'")
  monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
  assert cli.main(argv) == 2
  assert "Traceback" in capsys.readouterr().err


def test_only_a_user_error_is_one_line(monkeypatch):
  """A ValueError raised inside JAX is a bug, not a user's mistake: it keeps its traceback
  (it propagates out of `main`); so do a KeyError and a plain ValueError of ours. The
  project's `UserError` is one line."""
  import jax.numpy as jnp

  def jax_error(args):
    jnp.concatenate([])                   # JAX's own ValueError

  def key_error(args):
    return {}["emb_dim"]

  def plain(args):
    raise ValueError("an invariant broke")
  def ours(args):
    raise UserError("--length: expected a positive integer, found -5.")

  real = cli.build_parser

  def with_func(func):
    def build():
      parser = real()
      parser.set_defaults(func=func)
      for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=func)
      return parser
    return build

  argv = ["plan", "--arch", "causal_decoder", "--size", "tiny"]
  for func, error in ((jax_error, ValueError), (key_error, KeyError), (plain, ValueError)):
    monkeypatch.setattr(cli, "build_parser", with_func(func))
    with pytest.raises(error):
      cli.main(argv)
  monkeypatch.setattr(cli, "build_parser", with_func(ours))
  assert cli.main(argv) == 2
