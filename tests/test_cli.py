"""The `arch-objective` command and the set-up promises a new user relies on."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from arch_objective import cli, smoke

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


def test_smoke_training_reduces_the_loss_of_each_architecture():
  for arch in ("causal_decoder", "non_causal_decoder", "encoder_decoder"):
    lines = []
    history = smoke.train(arch, steps=25, batch_size=4, length=32, log=lines.append)
    assert len(history) == 25 and all(map(lambda x: x == x, history))
    # Bytes start near log(384) ~ 5.95 nats; a working step learns the byte statistics.
    assert history[0] > 4.5 and min(history[-5:]) < history[0] - 1.0, history
    assert any("step" in line and "loss" in line for line in lines)


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
