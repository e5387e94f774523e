"""Each architecture's static facts (`architectures.Architecture`) against literal values,
and no code outside the owners compares architecture names."""
import ast
import pathlib

import numpy as np
import pytest

from arch_objective import architectures
from arch_objective.objectives import feature_converters, pipeline

CD, ND, ED = (architectures.CAUSAL_DECODER, architectures.NON_CAUSAL_DECODER,
              architectures.ENCODER_DECODER)
PAPER = {"decoder": 626, "inputs": 512, "targets": 114}


# ---------------------------------------------------------------------------
# The specs
# ---------------------------------------------------------------------------
def test_each_architecture_has_its_literal_facts():
  facts = {name: (s.short, s.has_encoder, s.bidirectional_prefix, s.feature_converter,
                  s.length_keys) for name, s in architectures.SPECS.items()}
  assert facts == {
      CD: ("CD", False, False, "prefix_lm_rows", ("decoder",)),
      ND: ("ND", False, True, "prefix_lm_rows", ("decoder",)),
      ED: ("ED", True, False, "encoder_decoder_rows", ("inputs", "targets")),
  }
  assert architectures.SHORT_NAMES == {CD: "CD", ND: "ND", ED: "ED"}
  assert architectures.DECODER_ONLY == (CD, ND)
  assert tuple(architectures.SPECS) == architectures.ARCHITECTURES
  assert all(architectures.get(n).name == n for n in architectures.ARCHITECTURES)


def test_feature_groups_are_literal():
  decoder = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
             "decoder_segment_ids", "decoder_positions", "decoder_causal_attention")
  assert architectures.get(CD).feature_groups == (decoder,)
  assert architectures.get(ND).feature_groups == (decoder,)
  assert architectures.get(ED).feature_groups == (
      ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"),
      ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
       "decoder_segment_ids", "decoder_positions"))
  assert architectures.model_features(ED) == architectures.get(ED).feature_groups


@pytest.mark.parametrize("arch,batch,expected", [
    (CD, 1, {"decoder_input_tokens": (1, 626)}),
    (ND, 8, {"decoder_input_tokens": (8, 626)}),
    (ED, 8, {"encoder_input_tokens": (8, 512), "decoder_input_tokens": (8, 114)}),
])
def test_input_shapes_at_the_paper_lengths(arch, batch, expected):
  spec = architectures.get(arch)
  shapes = spec.input_shapes(PAPER, batch)
  assert shapes == expected and list(shapes) == list(expected)
  assert spec.lengths_of(shapes) == {k: PAPER[k] for k in spec.length_keys}


def test_row_lengths_and_tokens_read_only_the_architecture_s_keys():
  assert architectures.get(CD).row_lengths(PAPER) == {"decoder": 626}
  assert architectures.get(ED).row_lengths(PAPER) == {"inputs": 512, "targets": 114}
  assert architectures.get(ND).row_tokens(PAPER) == 626
  assert architectures.get(ED).row_tokens(PAPER) == 626
  assert architectures.get(ED).row_tokens({"inputs": 626, "targets": 626}) == 1252
  assert architectures.get(CD).input_shapes({"decoder": 8}) == {"decoder_input_tokens": (1, 8)}


def test_missing_lengths_and_shapes_name_what_is_needed():
  with pytest.raises(ValueError, match=r"encoder_decoder needs the lengths \['inputs', "
                                       r"'targets'\].*missing \['targets'\]"):
    architectures.get(ED).input_shapes({"decoder": 626, "inputs": 512})
  with pytest.raises(ValueError, match=r"causal_decoder: input_shapes must give "
                                       r"\['decoder_input_tokens'\]"):
    architectures.get(CD).lengths_of({"encoder_input_tokens": (1, 8)})


def test_lookups_by_name():
  with pytest.raises(ValueError, match="unknown arch 'decoder'; valid architectures: "
                                       "causal_decoder, non_causal_decoder, encoder_decoder."):
    architectures.get("decoder")
  with pytest.raises(ValueError, match="unknown source_arch None"):
    architectures.get(None, "source_arch")
  assert architectures.find("decoder") is None and architectures.find(["x"]) is None
  assert architectures.find(ED) is architectures.SPECS[ED]
  assert [architectures.is_decoder_only(a) for a in (CD, ND, ED, None, "x")] == [
      True, True, False, False, False]
  assert architectures.decoder_only(False).name == CD
  assert architectures.decoder_only(True).name == ND


def test_only_the_two_decoders_share_parameters():
  pairs = {(a, b): architectures.share_parameters(a, b)
           for a in architectures.ARCHITECTURES for b in architectures.ARCHITECTURES}
  assert {p for p, shared in pairs.items() if shared} == {
      (CD, CD), (CD, ND), (ND, CD), (ND, ND), (ED, ED)}
  assert not architectures.share_parameters(CD, "x")
  assert not architectures.share_parameters(None, None)


@pytest.mark.parametrize("arch,converter", [
    (CD, feature_converters.prefix_lm_rows), (ND, feature_converters.prefix_lm_rows),
    (ED, feature_converters.encoder_decoder_rows)])
def test_each_architecture_reads_inputs_and_targets_with_its_converter(arch, converter):
  examples = [{"inputs": np.array([5, 6]), "targets": np.array([7, 1])},
              {"inputs": np.array([8]), "targets": np.array([9, 1])}]
  got = list(feature_converters.inputs_targets_rows(arch, examples, 6, 4))
  expected = list(converter(examples, 6, 4, True))
  assert len(got) == len(expected) == 1
  assert {k: v.tolist() for k, v in got[0].items()} == {
      k: v.tolist() for k, v in expected[0].items()}
  with pytest.raises(ValueError, match="unknown arch 'ed'"):
    feature_converters.inputs_targets_rows("ed", examples, 6, 4)


# ---------------------------------------------------------------------------
# The (objective, architecture) table
# ---------------------------------------------------------------------------
def test_the_table_has_a_cell_for_every_pair_but_the_one_without_a_reading():
  pairs = {(o, a) for o in pipeline.OBJECTIVES for a in architectures.ARCHITECTURES}
  assert set(pipeline.TABLE) | set(pipeline.NO_READING) == pairs
  assert set(pipeline.NO_READING) == {(pipeline.FULL_LM, ED)}
  assert {p for p, cell in pipeline.TABLE.items() if cell.examples_per_row != 1.0} == {
      (pipeline.PREFIX_LM, ED)}


@pytest.mark.parametrize("objective,arch,expected", [
    (pipeline.FULL_LM, CD, {"decoder": 626}),
    (pipeline.FULL_LM, ND, {"decoder": 626}),
    (pipeline.PREFIX_LM, CD, {"decoder": 626}),
    (pipeline.PREFIX_LM, ND, {"decoder": 626}),
    (pipeline.PREFIX_LM, ED, {"inputs": 626, "targets": 626}),
    (pipeline.SPAN_CORRUPTION, CD, {"inputs": 512, "targets": 114, "decoder": 626}),
    (pipeline.SPAN_CORRUPTION, ND, {"inputs": 512, "targets": 114, "decoder": 626}),
    (pipeline.SPAN_CORRUPTION, ED, {"inputs": 512, "targets": 114}),
])
def test_feature_lengths_of_every_cell(objective, arch, expected):
  o = pipeline.Objective(objective, arch)
  assert o.feature_lengths == expected
  # a row's tokens: 626 per decoder row; the ED prefix LM holds two chunks
  tokens = architectures.get(arch).row_tokens(expected)
  assert tokens == (1252 if (objective, arch) == (pipeline.PREFIX_LM, ED) else 626)


# ---------------------------------------------------------------------------
# No architecture-name comparisons outside the owners
# ---------------------------------------------------------------------------
REPO = pathlib.Path(__file__).resolve().parents[1]
# The code read: the package, the seqio task modules and the benchmarks.
SCANNED = ("arch_objective", "tasks", "bench")
# Where names may be compared: the model classes and the specs themselves.
OWNERS = ("arch_objective/models.py", "arch_objective/architectures.py",
          "arch_objective/convert/hf_code/")
# Files that still compare names, with how many lines at most (may only shrink).
ALLOWED = {
    "bench/training.py": 1,   # picks the measured CD entries for the scaling table (a filter)
}
_NAME_CONSTANTS = {"CAUSAL_DECODER", "NON_CAUSAL_DECODER", "ENCODER_DECODER", "DECODER_ONLY",
                   "_DECODER_ONLY"}


def _is_arch_name(node) -> bool:
  """A literal architecture name, a name constant, or a tuple/list of them."""
  if isinstance(node, ast.Constant):
    return node.value in architectures.ARCHITECTURES
  if isinstance(node, ast.Name):
    return node.id in _NAME_CONSTANTS
  if isinstance(node, ast.Attribute):
    return node.attr in _NAME_CONSTANTS
  if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
    return any(_is_arch_name(e) for e in node.elts)
  return False


def name_comparisons(source: str) -> set[int]:
  """Line numbers where `source` branches on an architecture's name: compares with one
  (`==`, `!=`, `in`), chooses one by a condition, looks a fact up by name in
  `SHORT_NAMES`, tests an architecture name's prefix, or reads an `is_ed` flag."""
  lines = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Compare) and any(
        _is_arch_name(x) for x in [node.left] + node.comparators):
      lines.add(node.lineno)
    elif isinstance(node, ast.IfExp) and (_is_arch_name(node.body) or
                                          _is_arch_name(node.orelse)):
      lines.add(node.lineno)
    elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute)
          and node.value.attr == "SHORT_NAMES"
          and getattr(node.value.value, "id", None) in ("models", "architectures")):
      lines.add(node.lineno)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "startswith" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
          and any(a.startswith(node.args[0].value) for a in architectures.ARCHITECTURES)):
      lines.add(node.lineno)
    elif ((isinstance(node, ast.Name) and node.id in ("is_ed", "is_encoder_decoder")) or
          (isinstance(node, ast.Attribute) and node.attr in ("is_ed", "is_encoder_decoder")
           and isinstance(node.ctx, ast.Load))):
      lines.add(node.lineno)
  return lines


def comparisons_by_file(root: pathlib.Path = REPO, scanned=SCANNED) -> dict[str, int]:
  found = {}
  for path in sorted(p for folder in scanned for p in (root / folder).rglob("*.py")):
    name = path.relative_to(root).as_posix()
    if name in OWNERS or any(name.startswith(o) for o in OWNERS if o.endswith("/")):
      continue
    lines = name_comparisons(path.read_text())
    if lines:
      found[name] = len(lines)
  return found


def test_no_code_outside_the_owners_compares_architecture_names():
  found = comparisons_by_file()
  over = {k: v for k, v in found.items() if v > ALLOWED.get(k, 0)}
  assert not over, (f"architecture names compared in {over}: read the fact from "
                    f"`architectures.get(name)` (or the table of objectives/pipeline.py)")


def test_the_count_catches_each_kind_of_comparison(tmp_path):
  source = ("from arch_objective import architectures, models\n"
            "def f(arch, model, self, x):\n"
            "  if arch == 'encoder_decoder':\n"                         # 3
            "    return 1\n"
            "  if model.name != models.ENCODER_DECODER:\n"              # 5
            "    return 2\n"
            "  a = models.NON_CAUSAL_DECODER if x else models.CAUSAL_DECODER\n"  # 7
            "  b = arch in _DECODER_ONLY\n"                             # 8
            "  c = models.SHORT_NAMES[arch]\n"                          # 9
            "  d = arch.startswith('non_causal')\n"                     # 10
            "  e = self.is_ed\n"                                        # 11
            "  return architectures.get(arch).has_encoder, x.name == arch\n")
  assert name_comparisons(source) == {3, 5, 7, 8, 9, 10, 11}
  (tmp_path / "arch_objective").mkdir()
  (tmp_path / "arch_objective" / "bad.py").write_text(source)
  (tmp_path / "arch_objective" / "models.py").write_text(source)     # an owner: not counted
  assert comparisons_by_file(tmp_path, ("arch_objective",)) == {"arch_objective/bad.py": 7}
