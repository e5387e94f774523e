"""Beam search (`decoding.beam_search`, `model.beam_search`) for the three architectures:
against a plain-Python search over full forward passes (t5x's rules, no cache), against
Hugging Face's `generate(num_beams=k, length_penalty=...)` on the ED export (T5) and on
the decoder-only remote-code export (`rules="hf"`), log-probabilities against
`score_batch`, and the scanned cache layout."""
import functools

import jax
import numpy as np
import pytest

import helpers
from arch_objective import build_model, decoding, models
from arch_objective.errors import UserError

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
VOCAB = 128
EOS = 1


def eos_prone(arch: str, seed: int, scan_layers: bool = False):
  """An untied tiny model of `arch` (random weights) whose EOS logit is scaled up, so that
  beams finish at different lengths within a few steps (about 1 row in 8 never does)."""
  model = build_model(arch, "tiny", dtype="float32", vocab_size=VOCAB,
                      logits_via_embedding=False, scan_layers=scan_layers)
  params = helpers.random_params(model, seed=seed)
  params["decoder"]["logits_dense"]["kernel"][:, EOS] *= 3.0
  return model, params


def prompts(seed: int, rows: int, length: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(2, VOCAB, size=(rows, length)).astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5, 6))
def _beams(model, params, batch, k, alpha, steps, rules):
  return model.beam_search(params, batch, num_decodes=k, alpha=alpha, max_decode_steps=steps,
                           rules=rules)


def beams(model, params, rows, k, alpha, steps, rules="t5x"):
  batch = model.layout.generation_batch(list(rows), len(rows),
                                        model.layout.prompt_positions(rows.shape[1]))
  return jax.tree_util.tree_map(np.asarray, _beams(model, params, batch, k, alpha, steps,
                                                   rules))


def until_eos(row) -> list:
  row = [int(t) for t in row]
  return row[:row.index(EOS) + 1] if EOS in row else [t for t in row if t]


# ---------------------------------------------------------------------------------------
# t5x's rules against a plain-Python search over full forward passes
# ---------------------------------------------------------------------------------------
def next_log_probs(model, params, prompt, sequences, steps):
  """log p(next token | prompt, sequence) `[n, v]` for each of `sequences`, each from one
  full forward pass over a fixed-length row (no cache)."""
  rows = [model.layout.reference_batch(prompt, np.asarray(s + [2] + [2] * (steps - len(s)),
                                                          np.int32)) for s in sequences]
  batch = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
  logits = np.asarray(jax.jit(model.compute_logits)(params, batch), np.float64)
  first = len(prompt) if model.layout.family == "decoder" else 0   # the first new token's row
  picked = np.stack([logits[i, first + len(s)] for i, s in enumerate(sequences)])
  picked = picked - picked.max(-1, keepdims=True)
  return picked - np.log(np.exp(picked).sum(-1, keepdims=True))


def reference_t5x(model, params, prompt, k, alpha, steps):
  """t5x's beam search written out: the 2k best continuations of the k live beams; those
  ending in EOS join the finished (score log p / ((5 + L) / 6) ** alpha), the k best
  others stay live; stop when k finished sequences all beat the best live beam's score at
  the longest length. Returns [(tokens, log p)] best first, live beams in empty slots."""
  penalty = lambda length: ((5.0 + length) / 6.0) ** alpha
  live = [([], 0.0)] + [([], decoding.NEG_INF)] * (k - 1)
  finished = []                                   # (score, log p, tokens)
  for step in range(steps):
    log_probs = next_log_probs(model, params, prompt, [s for s, _ in live], steps)
    candidates = [(lp + float(log_probs[b, t]), b * VOCAB + t)
                  for b, (_, lp) in enumerate(live) for t in range(VOCAB)]
    candidates.sort(key=lambda c: (-c[0], c[1]))
    top = [(live[i // VOCAB][0] + [i % VOCAB], lp) for lp, i in candidates[:2 * k]]
    finished += [(lp / penalty(step + 1), lp, seq) for seq, lp in top if seq[-1] == EOS]
    finished = sorted(finished, key=lambda f: -f[0])[:k]
    live = [(seq, lp) for seq, lp in top if seq[-1] != EOS][:k]
    if len(finished) == k and finished[-1][0] > live[0][1] / penalty(steps + 1):
      break
  return [(seq, lp) for _, lp, seq in finished] + live[:k - len(finished)]


@pytest.mark.parametrize("arch", [CD, ND, ED])
def test_beam_search_equals_the_search_written_out_over_full_forward_passes(arch):
  model, params = eos_prone(arch, seed=11)
  rows = prompts(5, 4, 6)
  k, alpha, steps = 3, 0.6, 7
  ours = beams(model, params, rows, k, alpha, steps)
  assert ours.tokens.shape == (4, k, steps) and ours.scores.shape == (4, k)
  for r, prompt in enumerate(rows):
    expected = reference_t5x(model, params, prompt, k, alpha, steps)
    assert [until_eos(t) for t in ours.tokens[r]] == [seq for seq, _ in expected], r
    np.testing.assert_allclose(ours.log_probs[r], [lp for _, lp in expected], atol=2e-4)
  # Best first; a finished sequence's score is its log-probability over the penalty.
  assert np.all(np.diff(ours.scores, axis=1) <= 1e-6)
  lengths = np.array([[len(until_eos(t)) for t in row] for row in ours.tokens])
  ended = np.array([[EOS in row for row in r] for r in ours.tokens])
  assert ended.any()
  np.testing.assert_allclose(ours.scores[ended],
                             ours.log_probs[ended] / ((5.0 + lengths[ended]) / 6.0) ** alpha,
                             rtol=1e-5)


@pytest.mark.parametrize("arch", [CD, ND, ED])
def test_each_beams_log_probability_is_what_score_batch_gives_its_tokens(arch):
  model, params = eos_prone(arch, seed=3)
  rows = prompts(8, 3, 5)
  ours = beams(model, params, rows, 2, 0.0, 6)
  score = jax.jit(model.score_batch)
  for r, prompt in enumerate(rows):
    for j in range(2):
      tokens = np.asarray(until_eos(ours.tokens[r, j]), np.int32)
      expected = float(np.asarray(score(params, model.layout.reference_batch(prompt, tokens)))[0])
      assert ours.log_probs[r, j] == pytest.approx(expected, abs=2e-4)


def test_a_scanned_model_searches_as_the_unscanned_one():
  model, params = eos_prone(ND, seed=2)
  scanned, _ = eos_prone(ND, seed=2, scan_layers=True)
  rows = prompts(1, 3, 5)
  a = beams(model, params, rows, 3, 0.6, 6)
  b = beams(scanned, params, rows, 3, 0.6, 6)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)


def test_one_beam_under_hugging_faces_rules_is_greedy_decoding():
  model, params = eos_prone(ED, seed=4)
  rows = prompts(2, 6, 5)
  one = beams(model, params, rows, 1, 0.0, 8, rules="hf")
  batch = model.layout.generation_batch(list(rows), 6, 5)
  greedy = np.asarray(model.predict_batch(params, batch, max_decode_steps=8))
  assert [until_eos(t) for t in one.tokens[:, 0]] == [until_eos(t) for t in greedy]


def test_bad_beam_options_are_refused_naming_them():
  model, params = eos_prone(ED, seed=1)
  batch = model.layout.generation_batch(list(prompts(0, 1, 3)), 1, 3)
  with pytest.raises(UserError, match="num_decodes"):
    model.beam_search(params, batch, num_decodes=0, max_decode_steps=3)
  with pytest.raises(UserError, match="rules must be one of t5x, hf, found 'tf'"):
    model.beam_search(params, batch, num_decodes=2, max_decode_steps=3, rules="tf")
  with pytest.raises(UserError, match="at least 200 tokens"):
    model.beam_search(params, batch, num_decodes=100, max_decode_steps=3)
  with pytest.raises(UserError, match="max_decode_steps must be >= 1"):
    model.beam_search(params, batch, num_decodes=2, max_decode_steps=0)


# ---------------------------------------------------------------------------------------
# Hugging Face's generate on the exports
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """`exported(arch)`: (model, params, transformers model) of an EOS-prone model exported
  as Hugging Face's T5 (ED) or the remote-code decoder (CD, ND)."""
  helpers.requires("torch", "transformers")
  import transformers
  from arch_objective.convert import hf, hf_decoder
  made = {}

  def get(arch):
    if arch not in made:
      model, params = eos_prone(arch, seed=7)
      out = str(tmp_path_factory.mktemp("beam_hf") / arch)
      if arch == ED:
        hf.export_hf(params, model.config, ED, out, meta={"vocab_size": VOCAB})
        theirs = transformers.AutoModelForSeq2SeqLM.from_pretrained(out)
      else:
        hf_decoder.export_decoder_only(params, model.config, arch, out,
                                       meta={"vocab_size": VOCAB})
        theirs = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
      made[arch] = (model, params, theirs.eval())
    return made[arch]
  return get


def hf_beams(theirs, rows, k, length_penalty, steps, decoder_only):
  import torch
  with torch.no_grad():
    out = theirs.generate(torch.as_tensor(rows, dtype=torch.long), num_beams=k,
                          num_return_sequences=k, length_penalty=length_penalty,
                          early_stopping=False, do_sample=False, max_new_tokens=steps,
                          output_scores=True, return_dict_in_generate=True)
  new = out.sequences.numpy()[:, rows.shape[1]:] if decoder_only else out.sequences.numpy()[:, 1:]
  scores = getattr(out, "sequences_scores", None)       # None: num_beams=1 is greedy search
  return (new.reshape(len(rows), k, -1),
          None if scores is None else scores.numpy().reshape(len(rows), k))


@pytest.mark.parametrize("arch", [ED, CD, ND])
@pytest.mark.parametrize("k,length_penalty", [(1, 0.0), (2, 1.0), (4, 0.0), (4, -0.5)])
@pytest.mark.slow
def test_hugging_faces_rules_return_what_generate_returns(exported, arch, k, length_penalty):
  """alpha under rules="hf" is HF's length_penalty: the same k sequences per prompt, in
  the same order, with the same scores (HF's sequences_scores)."""
  model, params, theirs = exported(arch)
  rows = prompts(13, 12, 6)
  steps = 10
  ours = beams(model, params, rows, k, length_penalty, steps, rules="hf")
  hf_tokens, hf_scores = hf_beams(theirs, rows, k, length_penalty, steps,
                                  decoder_only=arch != ED)
  for r in range(len(rows)):
    assert [until_eos(t) for t in ours.tokens[r]] == [until_eos(t) for t in hf_tokens[r]], r
  if k > 1:      # (num_beams=1 is HF's greedy search: no sequence scores)
    np.testing.assert_allclose(ours.scores, hf_scores, atol=2e-4)
  assert any(EOS in row for row in ours.tokens[:, 0].tolist())           # beams finished


@pytest.mark.slow
def test_t5x_rules_differ_from_generate_only_where_a_lower_ranked_eos_or_the_last_step_decides(
    exported):
  """With alpha = length_penalty = 0 both searches rank by log-probability; each row
  where t5x's best differs from HF's is explained by one of the two rules: t5x's best
  ended in EOS from a continuation ranked k..2k-1 (HF lets only the k best finish), or
  HF's best is a live beam finished at the last step (t5x keeps only EOS endings)."""
  model, params, theirs = exported(ED)
  rows = prompts(17, 24, 6)
  k, steps = 2, 10
  t5x = beams(model, params, rows, k, 0.0, steps)
  hf_tokens, _ = hf_beams(theirs, rows, k, 0.0, steps, decoder_only=False)
  differ = [r for r in range(len(rows))
            if until_eos(t5x.tokens[r, 0]) != until_eos(hf_tokens[r, 0])]
  assert len(differ) < len(rows) // 2
  for r in differ:
    ours, hfs = until_eos(t5x.tokens[r, 0]), until_eos(hf_tokens[r, 0])
    cut_at_last_step = EOS not in hfs and len(hfs) == steps
    assert cut_at_last_step or ours[-1] == EOS, r
