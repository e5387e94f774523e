"""The objectives against the spec: literal rows, lengths, statistics, determinism."""
import numpy as np
import pytest

from arch_objective import models
from arch_objective.objectives import (chunking, feature_converters, pipeline, prefix_lm,
                                       span_corruption)

from helpers import unpositioned

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
SENTINEL = 32099


def random_documents(n=60, seed=0, low=3, high=32000):
  rng = np.random.default_rng(seed)
  return [rng.integers(low, high, int(rng.integers(20, 700))).astype(np.int32) for _ in range(n)]


# ---------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------
def test_concat_and_split_with_eos_literal():
  docs = [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13, 14])]
  chunks = list(unpositioned(chunking.concat_and_split_positioned)(docs, 4, append_eos=True))
  expected = [[5, 6, 7, 1], [8, 9, 1, 10], [11, 12, 13, 14], [1]]
  assert [c.tolist() for c in chunks] == expected


def test_concat_and_split_without_eos_and_empty_documents_skipped():
  docs = [np.array([5, 6, 7]), np.array([], np.int32), np.array([8, 9])]
  chunks = list(unpositioned(chunking.concat_and_split_positioned)(docs, 2, append_eos=False))
  assert [c.tolist() for c in chunks] == [[5, 6], [7, 8], [9]]


def test_select_random_chunk_keeps_short_documents_and_windows_long_ones():
  rng = np.random.default_rng(0)
  short = np.arange(10)
  assert chunking.select_random_chunk(short, 10, rng) is short
  long = np.arange(100)
  window = chunking.select_random_chunk(long, 16, rng)
  assert len(window) == 16 and np.all(np.diff(window) == 1)


# ---------------------------------------------------------------------------
# Span corruption
# ---------------------------------------------------------------------------
def test_random_spans_helper_gives_the_paper_lengths():
  assert span_corruption.random_spans_helper(512) == (568, 114)
  assert pipeline.mlm_lengths(626) == (512, 114)


def test_worked_example_of_the_module_docstring():
  tokens = np.arange(10, 18)
  mask = np.array([0, 0, 1, 1, 0, 0, 1, 0], bool)
  inputs = span_corruption.noise_span_to_unique_sentinel(tokens, mask, 99)
  targets = span_corruption.noise_span_to_unique_sentinel(tokens, ~mask, 99)
  assert inputs.tolist() == [10, 11, 99, 14, 15, 98, 17]
  assert targets.tolist() == [99, 12, 13, 98, 16, 97]


def test_568_tokens_become_512_inputs_and_114_targets_with_eos():
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 32000, 568)
  ex = span_corruption.corrupt(tokens, np.random.default_rng(1), SENTINEL)
  assert len(ex["inputs"]) == 512 and len(ex["targets"]) == 114
  assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
  assert np.sum(ex["inputs"] == 1) == 1 and np.sum(ex["targets"] == 1) == 1


def _reconstruct(inputs, targets, sentinel_start):
  """Interleave inputs and targets on their sentinels (independent of the code)."""
  spans, current, key = {}, None, None
  for t in targets[:-1]:
    if t > sentinel_start - 100:
      key = t
      spans[key] = []
    else:
      spans[key].append(t)
  out = []
  for t in inputs[:-1]:
    out.extend(spans[t] if t > sentinel_start - 100 else [t])
  return np.array(out)


def test_sentinels_count_down_and_interleaving_reconstructs_the_tokens():
  rng = np.random.default_rng(3)
  for i in range(50):
    tokens = rng.integers(3, 32000, 568)
    ex = span_corruption.corrupt(tokens, np.random.default_rng(i), SENTINEL)
    sent_in = ex["inputs"][ex["inputs"] > SENTINEL - 100]
    sent_tg = ex["targets"][ex["targets"] > SENTINEL - 100]
    n = len(sent_in)
    np.testing.assert_array_equal(sent_in, SENTINEL - np.arange(n))
    np.testing.assert_array_equal(sent_tg, SENTINEL - np.arange(n))
    assert ex["targets"][0] == SENTINEL  # targets start with the first sentinel
    np.testing.assert_array_equal(_reconstruct(ex["inputs"], ex["targets"], SENTINEL), tokens)


def test_noise_density_and_mean_span_length_statistics():
  """Over 400 masks of 568 tokens: density exactly round(0.15 * 568) / 568 per mask (the
  count is deterministic) and the mean span length 85 / 28 = 3.04; the span lengths'
  empirical mean over all spans within 2% of that, and noise never starts a chunk."""
  spans, noise_total, first = [], 0, []
  for i in range(400):
    mask = span_corruption.random_spans_noise_mask(568, np.random.default_rng(i))
    noise_total += mask.sum()
    first.append(mask[0])
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    starts, ends = np.where(edges == 1)[0], np.where(edges == -1)[0]
    spans.extend(ends - starts)
    assert len(starts) == 28 and mask.sum() == 85
  assert noise_total / (400 * 568) == pytest.approx(0.15, abs=0.001)
  assert np.mean(spans) == pytest.approx(85 / 28, rel=0.02)
  assert not any(first)
  # Span lengths vary (random segmentation), with every length >= 1.
  assert min(spans) >= 1 and max(spans) > 6


def test_vocabulary_without_enough_extra_ids_is_rejected():
  with pytest.raises(ValueError, match="extra_ids >= 29"):
    list(unpositioned(span_corruption.span_corruption_positioned)(
        random_documents(3), 512, SENTINEL, num_extra_ids=0))


# ---------------------------------------------------------------------------
# Prefix LM and full LM rows
# ---------------------------------------------------------------------------
def test_prefix_lm_decoder_row_literal():
  row = prefix_lm.decoder_row(np.array([5, 6, 7, 8, 9, 1]), 6, 2)
  assert row["decoder_target_tokens"].tolist() == [5, 6, 7, 8, 9, 1]
  assert row["decoder_input_tokens"].tolist() == [0, 5, 6, 7, 8, 9]
  assert row["decoder_causal_attention"].tolist() == [1, 1, 1, 0, 0, 0]
  assert row["decoder_loss_weights"].tolist() == [0, 0, 1, 1, 1, 1]
  assert "decoder_segment_ids" not in row  # ND:PLM rows are not packed


def test_prefix_lm_decoder_row_pads_and_never_weights_padding():
  row = prefix_lm.decoder_row(np.array([5, 6, 1]), 6, 1)
  assert row["decoder_target_tokens"].tolist() == [5, 6, 1, 0, 0, 0]
  assert row["decoder_loss_weights"].tolist() == [0, 1, 1, 0, 0, 0]
  with pytest.raises(ValueError, match="split must be in \\[1, 5\\]"):
    prefix_lm.decoder_row(np.array([5, 6, 1]), 6, 0)


def test_prefix_lm_encoder_decoder_row_literal():
  row = prefix_lm.encoder_decoder_row(np.array([5, 6, 7, 8]), np.array([9, 10, 11, 1]), 4, 1)
  expected = {"encoder_input_tokens": [5, 9, 10, 11], "encoder_segment_ids": [1, 2, 2, 2],
              "encoder_positions": [0, 0, 1, 2], "decoder_target_tokens": [6, 7, 8, 1],
              "decoder_input_tokens": [0, 6, 7, 0], "decoder_segment_ids": [1, 1, 1, 2],
              "decoder_positions": [0, 1, 2, 0], "decoder_loss_weights": [1, 1, 1, 1]}
  assert {k: v.tolist() for k, v in row.items()} == expected


def test_splits_are_uniform_over_1_to_length_minus_1():
  docs = random_documents(400, seed=5)
  rows = list(pipeline.Objective(pipeline.PREFIX_LM, ND, length=16).rows(iter(docs), seed=0))
  splits = np.array([r["decoder_causal_attention"].sum() - 1 for r in rows])
  assert splits.min() == 1 and splits.max() == 15
  counts = np.bincount(splits, minlength=16)[1:]
  expected = len(splits) / 15
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 36.1  # chi-square, 14 degrees of freedom, p = 0.001
  for r in rows:  # loss exactly on positions >= split
    split = r["decoder_causal_attention"].sum() - 1
    assert r["decoder_loss_weights"][:split].sum() == 0
    assert np.all(r["decoder_loss_weights"][split:] == (r["decoder_target_tokens"][split:] > 0))


def test_full_lm_rows_put_eos_only_at_document_ends():
  docs = [np.array([5, 6, 7]), np.array([8, 9, 10, 11]), np.array([12, 13])]
  rows = list(pipeline.Objective(pipeline.FULL_LM, CD, length=8).rows(iter(docs)))
  assert rows[0]["decoder_target_tokens"].tolist() == [5, 6, 7, 1, 8, 9, 10, 11]
  assert rows[0]["decoder_loss_weights"].tolist() == [1] * 8
  assert rows[0]["decoder_input_tokens"].tolist() == [0, 5, 6, 7, 1, 8, 9, 10]
  assert rows[1]["decoder_target_tokens"].tolist() == [1, 12, 13, 1, 0, 0, 0, 0]
  assert rows[1]["decoder_loss_weights"].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_packed_lm_and_prefix_lm_and_encoder_decoder_rows_literal():
  exs = [{"inputs": np.array([5, 6]), "targets": np.array([7, 1])},
         {"inputs": np.array([8]), "targets": np.array([9, 1])}]
  (row,) = feature_converters.prefix_lm_rows(exs, 4, 4)
  assert row["decoder_target_tokens"].tolist() == [5, 6, 7, 1, 8, 9, 1, 0]
  assert row["decoder_input_tokens"].tolist() == [0, 5, 6, 7, 0, 8, 9, 0]
  assert row["decoder_loss_weights"].tolist() == [0, 0, 1, 1, 0, 1, 1, 0]
  assert row["decoder_causal_attention"].tolist() == [1, 1, 1, 0, 1, 1, 0, 0]
  assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]
  assert row["decoder_positions"].tolist() == [0, 1, 2, 3, 0, 1, 2, 0]
  (row,) = feature_converters.encoder_decoder_rows(exs, 6, 4)
  assert row["encoder_input_tokens"].tolist() == [5, 6, 8, 0, 0, 0]
  assert row["encoder_segment_ids"].tolist() == [1, 1, 2, 0, 0, 0]
  assert row["decoder_target_tokens"].tolist() == [7, 1, 9, 1]
  assert row["decoder_input_tokens"].tolist() == [0, 7, 0, 9]
  assert row["decoder_segment_ids"].tolist() == [1, 1, 2, 2]
  (row,) = feature_converters.lm_rows([{"targets": np.array([5, 6, 7, 1])},
                                       {"targets": np.array([8, 9, 1])}], 8)
  assert row["decoder_input_tokens"].tolist() == [0, 5, 6, 7, 0, 8, 9, 0]
  assert row["decoder_segment_ids"].tolist() == [1, 1, 1, 1, 2, 2, 2, 0]


def test_unpacked_rows_have_no_segments_and_long_features_are_trimmed():
  exs = [{"inputs": np.arange(3, 12), "targets": np.array([7, 1])},
         {"inputs": np.array([8]), "targets": np.array([9, 1])}]
  rows = list(feature_converters.prefix_lm_rows(exs, 4, 4, pack=False))
  assert len(rows) == 2 and "decoder_segment_ids" not in rows[0]
  assert rows[0]["decoder_target_tokens"].tolist() == [3, 4, 5, 6, 7, 1, 0, 0]
  assert rows[0]["decoder_causal_attention"].tolist() == [1, 1, 1, 1, 1, 0, 0, 0]


def test_every_paper_run_fills_626_tokens_per_row_and_weights_the_right_tokens():
  docs = random_documents(80, seed=7)
  for arch, objective in pipeline.PAPER_RUNS:
    o = pipeline.Objective(objective, arch)
    rows = list(o.rows(iter(docs), seed=0, sentinel_start=SENTINEL))
    assert len(rows) > 10, o.name
    for r in rows[:-1]:
      total = sum(v.shape[0] for k, v in r.items() if k in ("encoder_input_tokens",
                                                             "decoder_target_tokens"))
      expected = 2 * 626 if (arch == ED and objective == pipeline.PREFIX_LM) else 626
      assert total == expected, o.name
    if objective == pipeline.SPAN_CORRUPTION and arch != ED:
      # loss on the 114 targets only, after 512 inputs
      w = rows[0]["decoder_loss_weights"]
      assert w[:512].sum() == 0 and w[512:].sum() == 114


def test_objective_rejects_bad_combinations_and_lengths():
  with pytest.raises(ValueError, match="full_lm.*encoder-decoder"):
    pipeline.Objective(pipeline.FULL_LM, ED)
  with pytest.raises(ValueError, match="unknown objective 'mlm'.*span_corruption"):
    pipeline.Objective("mlm", CD)
  with pytest.raises(ValueError, match="too short"):
    pipeline.Objective(pipeline.PREFIX_LM, ND, length=4)


# ---------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch,objective", pipeline.PAPER_RUNS)
def test_same_seed_same_rows_other_seed_other_rows(arch, objective):
  docs = random_documents(30, seed=11)
  o = pipeline.Objective(objective, arch, length=64)
  run = lambda seed: list(o.rows(iter(docs), seed=seed, sentinel_start=SENTINEL))
  a, b, c = run(0), run(0), run(1)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  differs = any(not np.array_equal(x[k], y[k]) for x, y in zip(a, c) for k in x)
  # Full LM draws nothing (documents shorter than 65,536 tokens are kept whole); the
  # order of documents is the source's business.
  assert differs == (objective != pipeline.FULL_LM)
