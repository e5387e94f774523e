"""Paired bootstrap comparisons of two evaluations on the same examples."""
import numpy as np
import pytest

from arch_objective.evaluation import contrasts


def test_suite_score_is_the_mean_of_prompt_medians():
  table = {"nli": {"p1": [1, 0, 1, 1], "p2": [0, 0, 1, 0], "p3": [1, 1, 1, np.nan]},
           "coref": {"q1": [1, 0], "q2": [0, 0]}}
  # nli: accuracies 75, 25, 100 -> median 75; coref: 50, 0 -> median 25; mean 50.
  assert contrasts.suite_score(table) == pytest.approx(50.0)
  draw = {"nli": np.array([0, 0, 1, 1]), "coref": np.array([0, 0])}
  # nli on examples 0,0,1,1: p1 50, p2 0, p3 100 -> 50; coref: q1 100, q2 0 -> 50.
  assert contrasts.suite_score(table, draw) == pytest.approx(50.0)


def test_a_model_compared_with_itself_differs_by_exactly_zero():
  rng = np.random.default_rng(0)
  table = {"d": {"p": rng.integers(0, 2, 50).astype(float)}}
  out = contrasts.paired_difference(table, table, resamples=200)
  assert out["difference"] == 0.0 and out["ci"] == [0.0, 0.0]
  assert out["excludes_zero"] is False


def test_pairing_finds_a_difference_that_separate_intervals_miss():
  """b answers a random half right; a also gets 12 of b's 200 wrong answers right.
  The paired interval matches the normal approximation of the mean of the per-example
  differences and excludes zero; each model's own interval is about 14 points wide."""
  rng = np.random.default_rng(1)
  n = 200
  b = rng.integers(0, 2, n).astype(float)
  a = b.copy()
  a[np.flatnonzero(b == 0)[:12]] = 1.0
  out = contrasts.paired_difference({"d": {"p": a}}, {"d": {"p": b}}, resamples=4000,
                                    seed=3)
  assert out["difference"] == pytest.approx(100.0 * 12 / n)
  assert out["excludes_zero"] and out["ci"][0] > 0
  d = a - b
  half_width = 1.96 * 100.0 * d.std() / np.sqrt(n)          # normal approximation
  measured = (out["ci"][1] - out["ci"][0]) / 2
  assert measured == pytest.approx(half_width, rel=0.2)
  own = 1.96 * 100.0 * np.sqrt(0.5 * 0.5 / n)               # one model's half-width
  assert own > 2 * measured and 6.0 < own < 8.0


def test_datasets_prompts_and_examples_must_match():
  a = {"d": {"p": [1, 0]}}
  with pytest.raises(ValueError, match="different datasets"):
    contrasts.paired_difference(a, {"e": {"p": [1, 0]}}, names=("CD", "ED"))
  with pytest.raises(ValueError, match="d: CD and ED used different prompts"):
    contrasts.paired_difference(a, {"d": {"q": [1, 0]}}, names=("CD", "ED"))
  with pytest.raises(ValueError, match="different numbers of examples"):
    contrasts.paired_difference(a, {"d": {"p": [1, 0, 1]}})


def test_a_contrasts_change_between_two_evaluations_is_paired_over_all_four():
  """(A2 - B2) - (A1 - B1) on one prompt of one dataset, against the same bootstrap done
  by hand: every resampling draws one set of examples for all four tables."""
  rng = np.random.default_rng(4)
  n = 120
  a1, b1, a2, b2 = (rng.integers(0, 2, n).astype(float) for _ in range(4))
  tables = [{"d": {"p": t}} for t in (a1, b1, a2, b2)]
  out = contrasts.paired_combination(tables, [-1.0, 1.0, 1.0, -1.0], resamples=300, seed=7)
  expected = 100.0 * ((a2.mean() - b2.mean()) - (a1.mean() - b1.mean()))
  assert out["value"] == pytest.approx(expected, abs=1e-9)
  assert out["scores"] == pytest.approx([100.0 * t.mean() for t in (a1, b1, a2, b2)])
  draws = np.random.default_rng(7)
  by_hand = []
  for _ in range(300):
    i = draws.integers(0, n, n)
    by_hand.append(100.0 * ((a2[i].mean() - b2[i].mean()) - (a1[i].mean() - b1[i].mean())))
  assert out["ci"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])), abs=1e-9)
  assert out["excludes_zero"] == (out["ci"][0] > 0 or out["ci"][1] < 0)
  # Unchanged contrast: exactly zero; and the two-table case is paired_difference.
  same = contrasts.paired_combination([tables[0], tables[1], tables[0], tables[1]],
                                      [-1, 1, 1, -1], resamples=50)
  assert same["value"] == 0.0 and same["ci"] == [0.0, 0.0]
  # paired_difference (which delegates to it) against the two-table bootstrap by hand.
  pair = contrasts.paired_difference(tables[2], tables[3], resamples=300, seed=7)
  draws = np.random.default_rng(7)
  by_hand = [100.0 * (a2[i].mean() - b2[i].mean())
             for i in (draws.integers(0, n, n) for _ in range(300))]
  assert pair["difference"] == pytest.approx(100.0 * (a2.mean() - b2.mean()), abs=1e-9)
  assert pair["ci"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])), abs=1e-9)
  with pytest.raises(ValueError, match="one weight per table, found 2 tables and 3"):
    contrasts.paired_combination(tables[:2], [1, -1, 1])
  with pytest.raises(ValueError, match="width 64 and width 256 have different numbers"):
    contrasts.paired_combination([tables[0], {"d": {"p": [1.0]}}], [1, -1],
                                 names=["width 64", "width 256"])


def test_shared_examples_cuts_every_table_to_the_first_examples_all_of_them_scored():
  long = {"d": {"p": [1, 0, 1, 1, 0, 1], "q": [0, 0, 1, 1, 1, 1]}, "e": {"p": [1, 1, 0]}}
  short = {"d": {"p": [0, 0, 1, 1], "q": [1, 0, 1, 0]}, "e": {"p": [0, 1, 1, 0, 1]}}
  golds = [{"d": [0, 1, 2, 0, 1, 2], "e": [1, 0, 1]},
           {"d": [0, 1, 2, 0], "e": [1, 0, 1, 1, 1]}]
  cut = contrasts.shared_examples([long, short], golds, names=["300", "150"])
  assert cut == [{"d": {"p": [1, 0, 1, 1], "q": [0, 0, 1, 1]}, "e": {"p": [1, 1, 0]}},
                 {"d": {"p": [0, 0, 1, 1], "q": [1, 0, 1, 0]}, "e": {"p": [0, 1, 1]}}]
  # The cut tables pair: d: long p 75 q 50 -> 62.5, short 50, 50 -> 50; e: 66.7 vs 66.7.
  out = contrasts.paired_difference(*cut, resamples=50)
  assert out["difference"] == pytest.approx((62.5 + 200 / 3) / 2 - (50 + 200 / 3) / 2)


def test_shared_examples_refuses_tables_whose_gold_answers_differ():
  a = {"d": {"p": [1, 0, 1]}}
  b = {"d": {"p": [1, 0]}}
  with pytest.raises(ValueError, match=r"d: medium and full have different gold answers on "
                                       r"their first 2 examples"):
    contrasts.shared_examples([a, b], [{"d": [0, 1, 2]}, {"d": [0, 2]}],
                              names=["medium", "full"])
  with pytest.raises(ValueError, match="different datasets"):
    contrasts.shared_examples([a, {"e": {"p": [1]}}])
  with pytest.raises(ValueError, match="one name .* per table"):
    contrasts.shared_examples([a, b], names=["only one"])


def test_the_bootstrap_scores_all_resamplings_as_a_loop_over_them_would():
  """The resamplings are scored at once; the interval equals, bit for bit, a loop that
  draws each resampling's examples per dataset and scores it with `suite_score`
  (prompts with unscored examples, and a prompt left with none in a draw, included)."""
  rng = np.random.default_rng(3)

  def table():
    out = {}
    for d, n in (("a", 40), ("b", 7)):
      prompts = {}
      for p in ("p", "q", "r"):
        v = rng.integers(0, 2, n).astype(float)
        v[rng.random(n) < 0.2] = np.nan
        prompts[p] = v
      out[d] = prompts
    out["b"]["r"][:] = np.nan
    out["b"]["r"][0] = 1.0          # scored once: some draws leave it no example
    return out

  tables = [table(), table(), table()]
  weights = [1.0, -0.5, -0.5]
  out = contrasts.paired_combination(tables, weights, resamples=300, seed=11)
  loop_rng = np.random.default_rng(11)
  values = []
  for _ in range(300):
    draw = {d: loop_rng.integers(0, n, n) for d, n in (("a", 40), ("b", 7))}
    values.append(sum(w * contrasts.suite_score(t, draw) for w, t in zip(weights, tables)))
  assert out["ci"] == [float(x) for x in np.percentile(values, [2.5, 97.5])]
  assert out["value"] == sum(w * contrasts.suite_score(t) for w, t in zip(weights, tables))
