"""Each architecture's layout (`arch_objective.layouts`) on literal token sequences, and
the rule that code outside the model's own modules asks the layout, never the kind."""
import ast
import pathlib

import numpy as np
import pytest

from arch_objective import architectures, layouts
from arch_objective.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CD, ND, ED = architectures.ARCHITECTURES


def _ids(*values):
  return np.asarray(values, np.int32)


def test_each_architecture_has_its_layout():
  assert architectures.get(CD).layout == layouts.DecoderLayout(marks_prefix=False)
  assert architectures.get(ND).layout == layouts.DecoderLayout(marks_prefix=True)
  assert architectures.get(ED).layout == layouts.EncoderDecoderLayout()
  assert [architectures.get(a).layout.family for a in (CD, ND, ED)] == [
      "decoder", "decoder", "encoder_decoder"]


def test_reference_batches():
  decoder = layouts.DECODER.reference_batch(_ids(5, 6), _ids(7, 8))
  assert {k: v.tolist() for k, v in decoder.items()} == {
      "decoder_input_tokens": [[0, 5, 6, 7]],
      "decoder_target_tokens": [[5, 6, 7, 8]],
      "decoder_loss_weights": [[0, 0, 1, 1]],
      "decoder_causal_attention": [[1, 1, 1, 0]]}
  encoder_decoder = layouts.ENCODER_DECODER.reference_batch(_ids(5, 6), _ids(7, 8))
  assert {k: v.tolist() for k, v in encoder_decoder.items()} == {
      "encoder_input_tokens": [[5, 6]],
      "decoder_target_tokens": [[7, 8]],
      "decoder_input_tokens": [[0, 7]],
      "decoder_loss_weights": [[1, 1]]}


def test_generation_batches():
  prompts = [_ids(4, 5, 6), _ids(7)]
  decoder = layouts.PREFIX_DECODER.generation_batch(prompts, rows=3, length=5)
  assert decoder["decoder_input_tokens"].tolist() == [[0, 4, 5, 6, 0], [0, 7, 0, 0, 0],
                                                      [0, 0, 0, 0, 0]]
  assert decoder["decoder_causal_attention"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0],
                                                          [1, 0, 0, 0, 0]]
  encoder_decoder = layouts.ENCODER_DECODER.generation_batch(prompts, rows=3, length=4)
  assert list(encoder_decoder) == ["encoder_input_tokens"]
  assert encoder_decoder["encoder_input_tokens"].tolist() == [[4, 5, 6, 0], [7, 0, 0, 0],
                                                              [0, 0, 0, 0]]
  assert layouts.DECODER.prompt_positions(3) == 4
  assert layouts.ENCODER_DECODER.prompt_positions(3) == 3


def test_prompt_sharing():
  pairs = [(_ids(1, 2), _ids(3)), (_ids(4), _ids(5)), (_ids(1, 2), _ids(6)),
           (_ids(9), _ids())]
  assert layouts.DECODER.share_prompts(pairs, [0, 1, 2]) == [[0], [1], [2]]
  assert layouts.ENCODER_DECODER.share_prompts(pairs, [0, 1, 2]) == [[0, 2], [1]]


def test_budgets_and_windows():
  assert layouts.DECODER.row_budget(640) == 640
  assert layouts.ENCODER_DECODER.row_budget(640) is None
  assert layouts.DECODER.prompt_budget(inputs_length=512, row_length=640, steps=100) == 539
  assert layouts.DECODER.prompt_budget(inputs_length=512, row_length=640, steps=700) == 1
  assert layouts.ENCODER_DECODER.prompt_budget(inputs_length=512, row_length=640,
                                               steps=100) == 512
  tokens = np.arange(10, 17, dtype=np.int32)
  windows = layouts.ENCODER_DECODER.rolling_windows(
      tokens, row_length=4, targets_length=3, windows=None)
  assert [(c.tolist(), t.tolist()) for c, t in windows] == [
      ([], [10, 11, 12]), ([], [13, 14, 15]), ([], [16])]
  seen = []
  def overlapping(t, n):
    seen.append((t.tolist(), n))
    return [(t[:0], t)]
  assert len(layouts.DECODER.rolling_windows(tokens, row_length=4, targets_length=3,
                                             windows=overlapping)) == 1
  assert seen == [(tokens.tolist(), 4)]


def test_complete_row_marks_the_prefix_decoders_rows_only():
  row = {"decoder_target_tokens": _ids(3, 4, 1)}
  assert layouts.PREFIX_DECODER.complete_row(dict(row))["decoder_causal_attention"].tolist() \
      == [0, 0, 0]
  assert "decoder_causal_attention" not in layouts.DECODER.complete_row(dict(row))
  assert "decoder_causal_attention" not in layouts.ENCODER_DECODER.complete_row(dict(row))


class _Config:
  num_decoder_layers, num_encoder_layers = 24, 24


def test_activation_stacks():
  assert layouts.DECODER.activation_stacks(_Config, 626) == (24, 626)
  assert layouts.ENCODER_DECODER.activation_stacks(_Config, 626) == (48, 313.0)


def test_by_family_names_what_is_missing():
  with pytest.raises(ValueError, match=r"the table has no entry for the encoder_decoder "
                                       r"layout; it has \['decoder'\]"):
    layouts.by_family({"decoder": 1}, layouts.ENCODER_DECODER, "the table")


def test_features_are_declared_once_and_checked_by_role():
  features = architectures.FEATURES
  assert architectures.DECODER_FEATURES == (
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
      "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
  assert architectures.ENCODER_FEATURES == (
      "encoder_input_tokens", "encoder_segment_ids", "encoder_positions")
  assert features["decoder_loss_weights"].accepts(np.float32)
  assert not features["decoder_target_tokens"].accepts(np.float32)
  assert features["decoder_causal_attention"].accepts(np.bool_)
  ed = architectures.get(ED)
  with pytest.raises(UserError, match=r"feature 'encoder_input_tokens' must have an "
                                      r"integer dtype, found float32"):
    ed.check_batch({"encoder_input_tokens": np.zeros((2, 3), np.float32)}, ())
  with pytest.raises(UserError, match=r"missing feature\(s\) \['decoder_target_tokens'\]"):
    ed.check_batch({"encoder_input_tokens": np.zeros((2, 3), np.int32)},
                   ("decoder_target_tokens",))
  with pytest.raises(UserError, match=r"'decoder_loss_weights' has shape \(2, 4\) but "
                                      r"'decoder_input_tokens' has \(2, 3\)"):
    architectures.get(CD).check_batch(
        {"decoder_input_tokens": np.zeros((2, 3), np.int32),
         "decoder_loss_weights": np.zeros((2, 4), np.float32)}, ())


# Modules that may ask what model they hold: the model's own modules and the conversion
# between formats (a t5x or Hugging Face tree is laid out by kind).
_MAY_ASK = ("arch_objective/models.py", "arch_objective/architectures.py",
            "arch_objective/layouts.py", "arch_objective/objectives/pipeline.py")
_KIND = ("has_encoder", "bidirectional_prefix")


def test_nothing_else_branches_on_the_model_kind():
  asked = []
  for folder in ("arch_objective", "tasks"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      name = path.relative_to(ROOT).as_posix()
      if name in _MAY_ASK or name.startswith("arch_objective/convert/"):
        continue
      for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in _KIND:
          asked.append(f"{name}:{node.lineno} .{node.attr}")
  assert asked == []
