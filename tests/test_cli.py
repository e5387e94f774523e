"""The `arch-objective` command and the set-up promises a new user relies on."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from arch_objective import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_plan_prints_exact_paper_counts_and_flops(capsys):
  assert cli.main(["plan", "--arch", "non_causal_decoder", "--size", "paper"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["arch"] == "non_causal_decoder" and report["size"] == "paper"
  assert report["params"] == 4_762_357_760
  # 6N-style count: 2 FLOPs per MAC of the matmul weights per token, x3 for training,
  # plus the attention scores and sums over 626 positions, per token.
  d, layers, mlp, vocab, length = 4096, 24, 10240, 32128, 626
  matmul = layers * (4 * d * d + 3 * d * mlp) + d * vocab
  expected = 3 * (2 * matmul + 4 * length * d * layers)
  assert report["flops_per_token"] == pytest.approx(expected, rel=1e-12)


def test_plan_rejects_unknown_size_listing_choices(capsys):
  with pytest.raises(SystemExit):
    cli.main(["plan", "--arch", "causal_decoder", "--size", "huge"])
  err = capsys.readouterr().err
  assert "huge" in err and "paper" in err


def test_smoke_runs_the_study_smoke_preset(monkeypatch, tmp_path, capsys):
  from arch_objective import study
  calls = []

  def fake_study(preset, out_dir, *, nc_a=None, ul2=None, bindings=(), log=print):
    calls.append((preset, out_dir, nc_a, ul2, list(bindings)))
    (tmp_path / "results.md").write_text("| CD:FLM | 50.0 |\n")
    return {}

  monkeypatch.setattr(study, "run_study", fake_study)
  assert cli.main(["smoke", "--out", str(tmp_path)]) == 0
  assert calls == [("smoke", str(tmp_path), None, None, [])]
  assert "| CD:FLM | 50.0 |" in capsys.readouterr().out
  assert cli.main(["study", "--preset", "smoke", "--out", str(tmp_path), "--ul2"]) == 0
  assert calls[-1] == ("smoke", str(tmp_path), None, True, [])


@pytest.mark.slow
def test_model_core_imports_and_runs_without_tensorflow(tmp_path):
  """The model, losses and decoding must run where TensorFlow cannot be imported."""
  blocker = tmp_path / "sitecustomize.py"
  blocker.write_text(
      "import sys\n"
      "class _Block:\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name == 'tensorflow' or name.startswith('tensorflow.') or name == 'seqio':\n"
      "      raise ImportError('blocked for this test: ' + name)\n"
      "sys.meta_path.insert(0, _Block())\n")
  code = (
      "import numpy as np, jax\n"
      "try:\n  import tensorflow\n  raise SystemExit('tensorflow imported')\n"
      "except ImportError:\n  pass\n"
      "from arch_objective import build_model, losses, decoding, layers, network\n"
      "m = build_model('non_causal_decoder', 'tiny', vocab_size=32, dtype='float32')\n"
      "p = m.get_initial_variables(jax.random.PRNGKey(0), {'decoder_input_tokens': (1, 4)})['params']\n"
      "b = {'decoder_input_tokens': np.array([[0, 5, 6, 7]]), 'decoder_target_tokens': np.array([[5, 6, 7, 1]]),\n"
      "     'decoder_causal_attention': np.array([[1, 1, 0, 0]])}\n"
      "loss, _ = m.loss_fn(p, b, None)\n"
      "assert np.isfinite(float(loss))\n"
      "assert m.predict_batch(p, b, max_decode_steps=2).shape == (1, 2)\n"
      "import sys; assert 'tensorflow' not in sys.modules\n"
      "print('OK')\n")
  env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith("OK")


def test_ci_script_calls_the_readme_test_command():
  ci = (ROOT / ".ci" / "run").read_text()
  readme = (ROOT / "README.md").read_text()
  assert "make test" in ci and "make test" in readme and "make run" in readme


def _help(*command):
  out = subprocess.run([sys.executable, "-m", "arch_objective.cli", *command, "--help"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  return out.stdout


@pytest.mark.slow
def test_every_help_example_runs_as_printed(tmp_path):
  """Each example a `--help` prints, run as printed (its directory moved to tmp_path),
  in the order of cli.EXAMPLES: train, then what reads its checkpoint."""
  import shlex
  for command, example in cli.EXAMPLES.items():
    printed = _help(*command.split())
    assert f"example:\n  {example}\n" in printed, command
    argv = shlex.split(example.replace(cli.EXAMPLE_DIR, str(tmp_path)))
    assert argv[0] == "arch-objective"
    out = subprocess.run([sys.executable, "-m", "arch_objective.cli", *argv[1:]],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, (example, out.stderr[-3000:])
    if command == "train":
      assert json.loads(out.stdout.strip().splitlines()[-1])["last_checkpoint"] == 4
    if command == "evaluate":
      assert json.loads(out.stdout)["step"] == 4
  assert (tmp_path / "cd" / "eval_t0" / "4" / "results.json").is_file()
  assert (tmp_path / "cd" / "eval_harness" / "4" / "harness_results.json").is_file()
  assert len((tmp_path / "infer" / "predictions.jsonl").read_text().splitlines()) == 8
  assert (tmp_path / "cd_hf" / "spiece.model").is_file()


def test_help_imports_neither_jax_nor_tensorflow():
  """`--help` of every command answers without importing the heavy libraries (a second
  of start-up instead of several)."""
  code = (
      "import sys, contextlib, io\n"
      "from arch_objective import cli\n"
      "for argv in ([], ['train'], ['evaluate'], ['plan'], ['eval', 't0'], ['eval', 'harness'],\n"
      "             ['convert', 'hf-out'], ['convert', 't5x-in'], ['data', 'stats'], ['study']):\n"
      "  with contextlib.redirect_stdout(io.StringIO()):\n"
      "    try:\n"
      "      cli.main(argv + ['--help'])\n"
      "    except SystemExit as e:\n"
      "      assert e.code == 0, (argv, e.code)\n"
      "heavy = sorted(m for m in ('jax', 'tensorflow', 'flax', 'torch', 'lm_eval', 'seqio', 'gin')\n"
      "               if m in sys.modules)\n"
      "print('heavy:', heavy)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "heavy: []"


def test_a_wheel_from_the_clone_ships_the_license_gin_files_and_commands(tmp_path):
  """`pip install .` from a clone: the wheel holds the license, every gin file, the task
  YAMLs, the Hugging Face model code, and both console scripts."""
  import zipfile
  out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  (wheel,) = tmp_path.glob("arch_objective-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert any(n.endswith("licenses/LICENSE") for n in names)
  gin_files = {str(p.relative_to(ROOT / "gin")) for p in (ROOT / "gin").rglob("*.gin")}
  shipped = {n[len("arch_objective/gin_files/"):] for n in names
             if n.startswith("arch_objective/gin_files/") and n.endswith(".gin")}
  assert shipped == gin_files
  assert "arch_objective/evaluation/harness_tasks/eai_eval.yaml" in names
  assert "arch_objective/convert/hf_code/modeling_arch_objective.py" in names
  assert "tasks/corpora.py" in names
  zf = zipfile.ZipFile(wheel)
  entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
  assert "arch-objective = arch_objective.cli:main" in entry_points
  assert "arch-objective-lm-eval = arch_objective.evaluation.lm_eval_cli:main" in entry_points
  metadata = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
  assert "License: Apache-2.0" in metadata
  assert (ROOT / "LICENSE").read_text().lstrip().startswith("Apache License")
