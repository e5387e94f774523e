"""The decoder-only `trust_remote_code` export: transformers' AutoModelForCausalLM against our
networks (logits, loss, greedy generation), the import round trip, and lm-eval's `hf`
backend on an export."""
import ast
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

import helpers
from arch_objective import build_model, layers, losses, models
from arch_objective.convert import hf_code, hf_decoder, param_tree
from helpers import random_params

# torch, transformers and the remote code (which imports both) take seconds to import: at
# first use, not at collection.
pytestmark = helpers.requires("torch", "transformers")
torch = helpers.lazy_import("torch")
transformers = helpers.lazy_import("transformers")
remote = helpers.lazy_import("arch_objective.convert.hf_code.modeling_arch_objective")

CD, ND = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER
VOCAB = 128
CASES = [(CD, True), (CD, False), (ND, True), (ND, False)]


def tiny(arch, tied=True, **overrides):
  return build_model(arch, "tiny", dtype="float32", logits_via_embedding=tied, **overrides)


def assert_trees_equal(a, b, dtype=None):
  fa, fb = param_tree.flatten(a), param_tree.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.shape == y.shape, k
    if dtype is not None:
      assert y.dtype == dtype, (k, y.dtype)
    assert np.array_equal(x, y), k


def load(out, **kwargs):
  model, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, trust_remote_code=True, output_loading_info=True, **kwargs)
  assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
  return model.eval()


def torch_logits(model, tokens, **kwargs):
  kwargs = {k: torch.as_tensor(np.asarray(v), dtype=torch.long) for k, v in kwargs.items()}
  with torch.no_grad():
    return model(torch.as_tensor(tokens, dtype=torch.long), **kwargs).logits.numpy()


def our_logits(model, params, tokens, real, dca=None):
  """Our logits `[b, l, v]`: `real [b, l]` (1 on tokens) stands in for the targets, which
  only the padding mask reads."""
  batch = {"decoder_input_tokens": np.asarray(tokens, np.int32),
           "decoder_target_tokens": np.asarray(real, np.int32)}
  if dca is not None:
    batch["decoder_causal_attention"] = np.asarray(dca, np.int32)
  return np.asarray(jax.jit(model.compute_logits)(params, batch))


def padded_batch(seed, length=40):
  """Three rows past the 16 exact causal buckets: full, right-padded, left-padded. Each
  row starts with the decoder start token 0 (after the left padding). Returns tokens,
  the padding mask and the ND prefix lengths (counted from the row's first position)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, VOCAB, size=(3, length))
  real = np.ones((3, length), np.int64)
  real[1, 29:] = 0
  real[2, :7] = 0
  tokens[real == 0] = 0
  tokens[0, 0] = tokens[1, 0] = tokens[2, 7] = 0
  prefix_lengths = np.array([12, 21, 7 + 18])
  return tokens, real, prefix_lengths


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """(model, params, export dir, transformers model) of each (arch, tied) case."""
  cache = {}

  def get(arch, tied):
    if (arch, tied) not in cache:
      model = tiny(arch, tied, vocab_size=VOCAB)
      params = random_params(model, seed=len(cache) + 1)
      out = str(tmp_path_factory.mktemp("hf") / f"{arch}_{'tied' if tied else 'untied'}")
      hf_decoder.export_decoder_only(params, model.config, arch, out, meta={"vocab_size": 100})
      cache[arch, tied] = (model, params, out, load(out))
    return cache[arch, tied]
  return get


# ---------------------------------------------------------------------------
# The export's files and config
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch,tied", CASES)
def test_export_files_and_config_read_back(exports, arch, tied):
  model, params, out, _ = exports(arch, tied)
  assert sorted(os.listdir(out)) == ["config.json", "configuration_arch_objective.py",
                                     "model.safetensors", "modeling_arch_objective.py"]
  for name in hf_code.CODE_FILES:
    assert pathlib.Path(out, name).read_text() == (hf_code.CODE_DIR / name).read_text()
  config = json.loads(pathlib.Path(out, "config.json").read_text())
  assert config["model_type"] == "arch_objective_decoder"
  assert config["architectures"] == ["ArchObjectiveForCausalLM"]
  assert config["auto_map"]["AutoModelForCausalLM"] == \
      "modeling_arch_objective.ArchObjectiveForCausalLM"
  assert config["auto_map"]["AutoModelForSeq2SeqLM"] == \
      "modeling_arch_objective.ArchObjectiveForSeq2SeqLM"
  assert config["prepend_start_token"] is True
  assert config["non_causal"] is (arch == ND) and config["logits_via_embedding"] is tied
  assert config["arch_objective"]["arch"] == arch
  assert config["arch_objective"]["meta"] == {"vocab_size": 100}

  auto = transformers.AutoConfig.from_pretrained(out, trust_remote_code=True)
  assert type(auto).__name__ == "ArchObjectiveConfig"
  assert (auto.d_model, auto.num_heads, auto.head_dim, auto.d_ff, auto.num_layers) == \
      (64, 4, 16, 128, 2)
  assert (auto.pad_token_id, auto.eos_token_id, auto.decoder_start_token_id) == (0, 1, 0)
  assert auto.non_causal is (arch == ND) and auto.mlp_activations == ["gelu", "linear"]
  assert auto.prepend_start_token is True

  arch_back, config_back, params_back = hf_decoder.read_decoder_only(out)
  assert arch_back == arch and config_back == model.config
  assert_trees_equal(params, params_back, dtype=np.float32)
  from safetensors.numpy import load_file
  weights = load_file(os.path.join(out, "model.safetensors"))
  assert sorted(weights) == sorted(hf for _, hf, _ in hf_decoder.name_map(model.config))
  assert ("lm_head.weight" in weights) is not tied


def test_code_files_import_only_torch_and_transformers():
  allowed = {"math", "torch", "transformers"}
  for name in hf_code.CODE_FILES:
    tree = ast.parse((hf_code.CODE_DIR / name).read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        roots = {a.name.split(".")[0] for a in node.names}
      elif isinstance(node, ast.ImportFrom):
        if node.level:        # the modeling file's `.configuration_arch_objective`
          assert node.module == hf_code.CONFIG_MODULE, (name, node.module)
          continue
        roots = {node.module.split(".")[0]}
      else:
        continue
      assert roots <= allowed, (name, roots)


def test_code_files_ship_in_the_package():
  import setuptools
  root = pathlib.Path(__file__).resolve().parents[1]
  found = setuptools.find_packages(where=str(root), include=["arch_objective*"])
  assert "arch_objective.convert.hf_code" in found
  assert all((hf_code.CODE_DIR / name).is_file() for name in hf_code.CODE_FILES)


def test_relative_position_buckets_equal_ours():
  rel = np.arange(-700, 700)
  for bidirectional in (False, True):
    for buckets, distance in ((32, 128), (64, 256)):
      ours = np.asarray(layers.relative_position_bucket(
          jax.numpy.asarray(rel, jax.numpy.int32), bidirectional, buckets, distance))
      theirs = remote.relative_position_bucket(torch.as_tensor(rel), bidirectional, buckets,
                                               distance).numpy()
      np.testing.assert_array_equal(theirs, ours)


# ---------------------------------------------------------------------------
# Logits, loss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch,tied", CASES)
def test_logits_equal_ours_with_padding(exports, arch, tied):
  model, params, _, theirs_model = exports(arch, tied)
  tokens, real, prefix_lengths = padded_batch(seed=3)
  if arch == CD:
    ours = our_logits(model, params, tokens, real)
    theirs = torch_logits(theirs_model, tokens, attention_mask=real)
    assert theirs.shape == ours.shape == (3, 40, VOCAB)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
    return
  dca = (np.arange(40)[None, :] < prefix_lengths[:, None]).astype(np.int32)
  ours = our_logits(model, params, tokens, real, dca)
  by_length = torch_logits(theirs_model, tokens, attention_mask=real,
                           prefix_lengths=prefix_lengths)
  by_mask = torch_logits(theirs_model, tokens, attention_mask=real,
                         causal_attention_mask=dca)
  by_feature_name = torch_logits(theirs_model, tokens, attention_mask=real,
                                 decoder_causal_attention=dca)
  for theirs in (by_length, by_mask, by_feature_name):
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)
  # Without a prefix the ND reads causally: the CD network with the same weights.
  causal = our_logits(models.DecoderOnlyModel(model.config), params, tokens, real)
  np.testing.assert_allclose(torch_logits(theirs_model, tokens, attention_mask=real), causal,
                             atol=1e-4, rtol=0)
  assert np.abs(causal - ours)[real > 0].max() > 1e-2    # the prefix changes the logits


def test_packed_rows_attend_within_their_segment(exports):
  model, params, _, theirs_model = exports(ND, False)
  tokens, _, _ = padded_batch(seed=4, length=24)
  segments = np.repeat([[1] * 10 + [2] * 14], 3, axis=0)
  tokens[:, [0, 10]] = 0
  dca = np.zeros_like(segments)
  dca[:, 0:4] = dca[:, 10:16] = 1
  ours = np.asarray(jax.jit(model.compute_logits)(params, {
      "decoder_input_tokens": tokens.astype(np.int32),
      "decoder_target_tokens": np.ones_like(tokens, np.int32),
      "decoder_segment_ids": segments.astype(np.int32),
      "decoder_causal_attention": dca.astype(np.int32)}))
  theirs = torch_logits(theirs_model, tokens, decoder_segment_ids=segments,
                        causal_attention_mask=dca)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


def test_base_model_gives_the_hidden_state_of_our_tied_logits(exports):
  model, params, out, _ = exports(CD, True)
  base = transformers.AutoModel.from_pretrained(out, trust_remote_code=True).eval()
  assert type(base).__name__ == "ArchObjectiveModel"
  tokens, real, _ = padded_batch(seed=5)
  with torch.no_grad():
    hidden = base(torch.as_tensor(tokens), attention_mask=torch.as_tensor(real))
  hidden = hidden.last_hidden_state.numpy().astype(np.float64)
  embedding = np.asarray(params["decoder"]["token_embedder"]["embedding"], np.float64)
  np.testing.assert_allclose(hidden @ embedding.T / np.sqrt(64),
                             our_logits(model, params, tokens, real), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", [CD, ND])
def test_loss_with_labels_is_our_mean_token_cross_entropy(exports, arch):
  model, params, _, theirs_model = exports(arch, False)
  tokens, real, prefix_lengths = padded_batch(seed=6)
  labels = np.where(real > 0, tokens, -100)
  kwargs = {"attention_mask": real, "labels": labels}
  dca = None
  if arch == ND:
    kwargs["prefix_lengths"] = prefix_lengths
    dca = (np.arange(40)[None, :] < prefix_lengths[:, None]).astype(np.int32)
  kwargs = {k: torch.as_tensor(v) for k, v in kwargs.items()}
  with torch.no_grad():
    loss = float(theirs_model(torch.as_tensor(tokens), **kwargs).loss)
  logits = our_logits(model, params, tokens, real, dca)
  weights = (labels[:, 1:] != -100).astype(np.float32)
  total, _, count = losses.compute_weighted_cross_entropy(
      logits[:, :-1], np.maximum(labels[:, 1:], 0), weights)
  assert abs(loss - float(total) / float(count)) < 1e-5


# ---------------------------------------------------------------------------
# The start token supplied by the export (prepend_start_token)
# ---------------------------------------------------------------------------
def plain_batch(seed, length=30):
  """Rows of plain ids, without the start token: full, right-padded, left-padded, and a
  left-padded row that already starts with 0. Returns tokens, the padding mask and the ND
  prefix lengths in positions of these rows (from index 0, left padding included)."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(2, VOCAB, size=(4, length))
  real = np.ones((4, length), np.int64)
  real[1, 20:] = 0
  real[2, :6] = 0
  real[3, :4] = 0
  tokens[real == 0] = 0
  tokens[3, 4] = 0
  return tokens, real, np.array([9, 12, 6 + 10, 4 + 11])


def with_start_token(tokens, real, prefix_lengths=None):
  """Our rows of `plain_batch`: one position longer at the front, position j + 1 holding
  position j; the start token 0 just before each row's first token unless it starts
  with 0 (then the new front position is padding). Returns tokens, mask and (with
  `prefix_lengths`) decoder_causal_attention: the start token and the prefix."""
  b, length = tokens.shape
  ours = np.zeros((b, length + 1), np.int64)
  ours[:, 1:] = tokens
  mask = np.zeros_like(ours)
  mask[:, 1:] = real
  for r in range(b):
    first = int(np.argmax(real[r]))
    if tokens[r, first] != 0:
      mask[r, first] = 1                     # ours[r, first] is 0: the start token
  if prefix_lengths is None:
    return ours, mask
  dca = (np.arange(length + 1)[None, :] < prefix_lengths[:, None] + 1).astype(np.int32)
  return ours, mask, dca


@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_plain_ids_score_as_our_rows_with_the_start_token(exports, arch):
  model, params, _, theirs_model = exports(arch, False)
  tokens, real, prefix_lengths = plain_batch(seed=11)
  ours_tokens, ours_mask, dca = with_start_token(tokens, real, prefix_lengths)
  kwargs = {"attention_mask": real}
  if arch == ND:
    kwargs["prefix_lengths"] = prefix_lengths
  theirs = torch_logits(theirs_model, tokens, **kwargs)
  ours = our_logits(model, params, ours_tokens, ours_mask, dca if arch == ND else None)[:, 1:]
  assert theirs.shape == (4, 30, VOCAB)
  np.testing.assert_allclose(theirs[real > 0], ours[real > 0], atol=1e-4, rtol=0)
  if arch == ND:        # the prefix as a mask over the given positions: the same reading
    mask = (np.arange(30)[None, :] < prefix_lengths[:, None]).astype(np.int32)
    by_mask = torch_logits(theirs_model, tokens, attention_mask=real, causal_attention_mask=mask)
    np.testing.assert_allclose(by_mask[real > 0], ours[real > 0], atol=1e-4, rtol=0)

  # Unpadded rows need no mask; prepend_start_token=False reads the rows as given.
  full = tokens[[0]]
  ours_full = our_logits(model, params, np.pad(full, ((0, 0), (1, 0))), np.ones((1, 31)),
                         np.ones((1, 31)) if arch == ND else None)[:, 1:]
  np.testing.assert_allclose(
      torch_logits(theirs_model, full, **({"prefix_lengths": [30]} if arch == ND else {})),
      ours_full, atol=1e-4, rtol=0)
  with torch.no_grad():
    as_given = theirs_model(torch.as_tensor(full), prepend_start_token=False).logits.numpy()
  causal = models.DecoderOnlyModel(model.config)
  np.testing.assert_allclose(as_given, our_logits(causal, params, full, np.ones_like(full)),
                             atol=1e-4, rtol=0)


def test_an_export_without_the_flag_reads_rows_as_given(tmp_path, exports):
  model, params, out, _ = exports(CD, False)
  old = tmp_path / "old"
  shutil.copytree(out, old)
  config = json.loads((old / "config.json").read_text())
  del config["prepend_start_token"]
  (old / "config.json").write_text(json.dumps(config))
  assert hf_decoder.read_decoder_only(str(old))[1] == model.config
  theirs_model = load(str(old))
  assert theirs_model.config.prepend_start_token is False
  tokens, real, _ = plain_batch(seed=12)
  np.testing.assert_allclose(torch_logits(theirs_model, tokens, attention_mask=real)[real > 0],
                             our_logits(model, params, tokens, real)[real > 0],
                             atol=1e-4, rtol=0)
  config["prepend_start_token"] = "yes"
  (old / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="'prepend_start_token' must be true or false"):
    hf_decoder.read_decoder_only(str(old))


@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_seq2seq_reading_scores_targets_after_the_inputs_as_ours(exports, arch):
  model, params, out, _ = exports(arch, False)
  seq2seq = transformers.AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True)
  assert type(seq2seq).__name__ == "ArchObjectiveForSeq2SeqLM"
  rng = np.random.default_rng(13)
  contexts = [rng.integers(2, VOCAB, n) for n in (7, 3)] + [np.array([0])]  # [0]: empty
  targets = [rng.integers(2, VOCAB, n) for n in (4, 6, 2)]
  inputs = np.zeros((3, 7), np.int64)
  mask = np.zeros_like(inputs)
  labels = np.full((3, 6), -100)
  for r, (c, t) in enumerate(zip(contexts, targets)):
    if r == 1:                                        # left padding
      inputs[r, 7 - len(c):], mask[r, 7 - len(c):] = c, 1
    else:
      inputs[r, :len(c)], mask[r, :len(c)] = c, 1
    labels[r, :len(t)] = t
  with torch.no_grad():
    out_ = seq2seq(torch.as_tensor(inputs), attention_mask=torch.as_tensor(mask),
                   labels=torch.as_tensor(labels))
  theirs = out_.logits.numpy()
  assert theirs.shape == (3, 6, VOCAB)
  total, count = 0.0, 0
  for r, (c, t) in enumerate(zip(contexts, targets)):
    head = [0] + [int(x) for x in c if x != 0]
    row = np.array([head + list(t[:-1])])
    dca = (np.arange(row.shape[1]) < len(head)).astype(np.int32)[None] if arch == ND else None
    ours = our_logits(model, params, row, np.ones_like(row), dca)[0, len(head) - 1:]
    np.testing.assert_allclose(theirs[r, :len(t)], ours, atol=1e-4, rtol=0)
    log_probs = ours - np.log(np.exp(ours.astype(np.float64)).sum(-1, keepdims=True))
    total -= log_probs[np.arange(len(t)), t].sum()
    count += len(t)
  assert abs(float(out_.loss) - total / count) < 1e-5

  prompt, prompt_mask = torch.as_tensor(inputs[:2]), torch.as_tensor(mask[:2])
  causal = load(out)
  options = dict(attention_mask=prompt_mask, max_new_tokens=4, do_sample=False)
  generated = seq2seq.generate(prompt, **options)
  assert generated.shape == (2, 5) and (generated[:, 0] == 0).all()
  assert generated[:, 1:].tolist() == causal.generate(prompt, **options)[:, 7:].tolist()


# ---------------------------------------------------------------------------
# Greedy generation
# ---------------------------------------------------------------------------
def our_greedy(model, params, prompt, real, steps, prefix=False):
  """Our greedy continuation by argmax over full forward passes (no cache): `prompt
  [b, p]` with padding mask `real`; with `prefix` the ND's prefix is the whole prompt."""
  b, p = prompt.shape
  length = p + steps
  tokens = np.zeros((b, length), np.int32)
  tokens[:, :p] = prompt
  mask = np.zeros((b, length), np.int32)
  mask[:, :p] = real
  dca = (np.arange(length)[None, :] < p).repeat(b, 0).astype(np.int32) if prefix else None
  forward = jax.jit(model.compute_logits)
  for t in range(p, length):
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": mask}
    if dca is not None:
      batch["decoder_causal_attention"] = dca
    tokens[:, t] = np.asarray(forward(params, batch))[:, t - 1].argmax(-1)
    mask[:, t] = 1
  return tokens[:, p:]


def until_eos(rows):
  """Each row up to and including its first EOS (1), as generate stops there."""
  out = []
  for row in np.asarray(rows).tolist():
    out.append(row[:row.index(1) + 1] if 1 in row else row)
  return out


@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_greedy_generate_equals_our_argmax_continuation(exports, arch):
  model, params, _, theirs_model = exports(arch, False)
  rng = np.random.default_rng(7)
  prompt = rng.integers(2, VOCAB, size=(2, 9))
  real = np.ones_like(prompt)
  real[1, :3] = 0                                   # a left-padded prompt
  prompt[real == 0] = 0
  prompt[0, 0] = prompt[1, 3] = 0
  ours = our_greedy(model, params, prompt, real, 5, prefix=arch == ND)
  for use_cache in (True, False):
    generated = theirs_model.generate(torch.as_tensor(prompt), attention_mask=torch.as_tensor(real),
                                      max_new_tokens=5, do_sample=False, use_cache=use_cache)
    assert until_eos(generated[:, 9:].numpy()) == until_eos(ours), use_cache
  if arch == ND:   # an explicit empty prefix reads the prompt causally: the CD's tokens
    causal = our_greedy(models.DecoderOnlyModel(model.config), params, prompt, real, 5)
    generated = theirs_model.generate(torch.as_tensor(prompt), attention_mask=torch.as_tensor(real),
                                      max_new_tokens=5, do_sample=False,
                                      prefix_lengths=torch.zeros(2, dtype=torch.long))
    assert until_eos(generated[:, 9:].numpy()) == until_eos(causal)


# ---------------------------------------------------------------------------
# Import round trip and errors
# ---------------------------------------------------------------------------
def test_sharded_and_bfloat16_exports_round_trip(tmp_path, exports):
  model, params, _, _ = exports(ND, False)
  sharded = hf_decoder.export_decoder_only(params, model.config, ND, str(tmp_path / "sharded"),
                                           max_shard_bytes=64 * 1024)
  assert "model.safetensors.index.json" in os.listdir(sharded)
  assert len([f for f in os.listdir(sharded) if f.startswith("model-")]) > 1
  assert_trees_equal(params, hf_decoder.read_decoder_only(sharded)[2])
  tokens, real, prefix_lengths = padded_batch(seed=8)
  np.testing.assert_array_equal(
      torch_logits(load(sharded), tokens, attention_mask=real, prefix_lengths=prefix_lengths),
      torch_logits(exports(ND, False)[3], tokens, attention_mask=real,
                   prefix_lengths=prefix_lengths))

  half = hf_decoder.export_decoder_only(params, model.config, ND, str(tmp_path / "bf16"),
                                        dtype="bfloat16")
  assert json.loads(pathlib.Path(half, "config.json").read_text())["dtype"] == "bfloat16"
  cast = jax.tree_util.tree_map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), params)
  assert_trees_equal(cast, hf_decoder.read_decoder_only(half)[2], dtype=jax.numpy.bfloat16)
  theirs = load(half, dtype="auto")
  assert {p.dtype for p in theirs.parameters()} == {torch.bfloat16}
  assert torch_logits(theirs, tokens, attention_mask=real).dtype == np.float32


def test_export_and_import_reject_bad_input(tmp_path, exports):
  model, params, out, _ = exports(CD, True)
  ed = build_model(models.ENCODER_DECODER, "tiny", dtype="float32", vocab_size=VOCAB)
  with pytest.raises(ValueError, match="not a decoder-only model"):
    hf_decoder.export_decoder_only(params, ed.config, models.ENCODER_DECODER,
                                   str(tmp_path / "a"))
  with pytest.raises(ValueError, match="do not fit"):
    hf_decoder.export_decoder_only(params, tiny(CD, False, vocab_size=VOCAB).config, CD,
                                   str(tmp_path / "b"))
  with pytest.raises(ValueError, match="already holds a config.json"):
    hf_decoder.export_decoder_only(params, model.config, CD, out)

  copy = tmp_path / "edited"
  shutil.copytree(out, copy)
  config = json.loads((copy / "config.json").read_text())
  config["d_ff"] = 256
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"arch_objective.config.mlp_dim = 128 disagrees"):
    hf_decoder.read_decoder_only(str(copy))
  del config["arch_objective"]
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="wrong shape.*wi_0"):
    hf_decoder.read_decoder_only(str(copy))
  config.update(d_ff=128, mlp_activations=["gelu_exact", "linear"])
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match=r"config.json: mlp_activations .*gelu_exact"):
    hf_decoder.read_decoder_only(str(copy))
  config.update(mlp_activations=["gelu", "linear"], model_type="t5")
  (copy / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError, match="model_type 't5' is not 'arch_objective_decoder'"):
    hf_decoder.read_decoder_only(str(copy))

  from safetensors.numpy import load_file
  weights = load_file(os.path.join(out, "model.safetensors"))
  weights.pop("model.layers.1.mlp.wo.weight")
  config_json = json.loads(pathlib.Path(out, "config.json").read_text())
  with pytest.raises(ValueError, match=r"1 missing .*model.layers.1.mlp.wo.weight"):
    hf_decoder.import_decoder_only(config_json, weights, out)

  theirs = exports(CD, True)[3]
  tokens, real, _ = padded_batch(seed=9)
  with pytest.raises(ValueError, match="causal decoder"):
    torch_logits(theirs, tokens, prefix_lengths=np.full(3, 4))


# ---------------------------------------------------------------------------
# A trained model, and lm-eval's hf backend on its export
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, c4_sample_path, t5_vocab_path):
  """A tiny CD (the T5 vocabulary) after 6 steps of full language modelling on C4."""
  from arch_objective.training import data, optimizers, sources, train
  model = tiny(CD)
  dataset = data.DatasetConfig(task="local_full_lm", batch_size=4, length=32,
                               source=sources.LocalCorpus(c4_sample_path),
                               vocabulary=t5_vocab_path)
  result = train.train(model_dir=str(tmp_path_factory.mktemp("trained")), model=model,
                       dataset=dataset, train_steps=6, save_every=100, progress=False,
                       async_checkpoints=False, learning_rate_schedule=optimizers.constant(0.01))
  assert [h["step"] for h in result.history] == [1, 2, 3, 4, 5, 6]
  return model, jax.tree_util.tree_map(np.asarray, result.state.params)


def text_rows(vocab_path, texts, length):
  """`[0] + pieces` of each text, right-padded to `length`, and the padding mask."""
  from arch_objective.data import vocabularies
  vocab = vocabularies.SentencePieceVocabulary(vocab_path)
  tokens = np.zeros((len(texts), length), np.int64)
  real = np.zeros_like(tokens)
  for i, text in enumerate(texts):
    row = [0] + vocab.encode(text)[:length - 1]
    tokens[i, :len(row)], real[i, :len(row)] = row, 1
  return tokens, real


@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_trained_model_gives_our_logits(tmp_path, trained, t5_vocab_path, arch):
  model, params = trained
  if arch == ND:     # CD and ND share their parameters (spec §7.3)
    model = models.DecoderOnlyModel(model.config, inputs_bidirectional_attention=True)
  out = hf_decoder.export_decoder_only(params, model.config, arch, str(tmp_path / "hf"))
  tokens, real = text_rows(t5_vocab_path, ["The weather in the mountains was cold.",
                                          "A short one."], 24)
  prefix_lengths = np.array([6, 3])
  kwargs, dca = {"attention_mask": real}, None
  if arch == ND:
    kwargs["prefix_lengths"] = prefix_lengths
    dca = (np.arange(24)[None, :] < prefix_lengths[:, None]).astype(np.int32)
  ours = our_logits(model, params, tokens, real, dca)
  theirs = torch_logits(load(out), tokens, **kwargs)
  assert theirs.shape == ours.shape == (2, 24, 32128)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_lm_eval_hf_backend_scores_like_our_model(offline, trained, t5_vocab_path):
  lm_eval = pytest.importorskip("lm_eval")
  from lm_eval.tasks import TaskManager
  model, params = trained
  out = hf_decoder.export_decoder_only(params, model.config, CD, str(offline / "hf"))
  spiece = offline / "spiece" / "spiece.model"
  spiece.parent.mkdir()
  shutil.copyfile(t5_vocab_path, spiece)
  tokenizer_dir = str(offline / "tokenizer")
  tokenizer = transformers.T5Tokenizer.from_pretrained(str(spiece.parent), extra_ids=100)
  tokenizer.save_pretrained(tokenizer_dir)

  tasks = helpers.write_tasks(offline / "tasks")   # toy_mc: yes/no over short premises
  results = lm_eval.simple_evaluate(
      model="hf", model_args=f"pretrained={out},trust_remote_code=True,tokenizer={tokenizer_dir},"
                             f"dtype=float32,add_bos_token=False,prefix_token_id=0,device=cpu",
      tasks=["toy_mc"], limit=2, bootstrap_iters=0, log_samples=True,
      task_manager=TaskManager(include_path=str(tasks), include_defaults=False))
  samples = results["samples"]["toy_mc"]
  pairs = [tuple(a) for s in samples for a in s["arguments"]]
  scores = [tuple(r) for s in samples for r in s["filtered_resps"]]
  assert len(pairs) == 4 and results["results"]["toy_mc"]["sample_len"] == 2

  # lm-eval's rows are context ++ continuation, pieces without EOS or a start token; the
  # export supplies the start token, so they score as our rows [0] + context ++ continuation.
  from arch_objective.data import vocabularies
  vocab = vocabularies.SentencePieceVocabulary(t5_vocab_path)
  rows, spans = [], []
  for context, continuation in pairs:
    whole, head = vocab.encode(context + continuation), vocab.encode(context)
    assert tokenizer.encode(context + continuation, add_special_tokens=False) == whole
    rows.append([0] + whole)
    spans.append((1 + len(head), 1 + len(whole)))
  length = max(len(r) for r in rows)
  tokens = np.zeros((len(rows), length), np.int64)
  real = np.zeros_like(tokens)
  for i, row in enumerate(rows):
    tokens[i, :len(row)], real[i, :len(row)] = row, 1
  logits = our_logits(model, params, tokens, real).astype(np.float64)
  top = logits.max(-1, keepdims=True)
  log_probs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
  for i, (start, end) in enumerate(spans):
    positions = np.arange(start - 1, end - 1)
    targets = tokens[i, start:end]
    ours = log_probs[i, positions, targets].sum()
    greedy = bool((logits[i, positions].argmax(-1) == targets).all())
    assert abs(scores[i][0] - ours) < 1e-4, (pairs[i], scores[i], ours)
    assert scores[i][1] == greedy


@pytest.mark.parametrize("arch", [CD, ND])
def test_greedy_generate_from_plain_prompts_equals_ours(exports, arch):
  """Prompts without the start token (left-padded, one that already has it): the export
  supplies it on the first pass and the cached steps follow; the ND's prefix is the
  start token and the prompt, as in our decoding."""
  model, params, _, theirs_model = exports(arch, False)
  tokens, real, _ = plain_batch(seed=14, length=12)
  tokens, real = tokens[[0, 2, 3]], real[[0, 2, 3]]
  ours_prompt, ours_real = with_start_token(tokens, real)
  ours = our_greedy(model, params, ours_prompt, ours_real, 6, prefix=arch == ND)
  for use_cache in (True, False):
    generated = theirs_model.generate(torch.as_tensor(tokens), attention_mask=torch.as_tensor(real),
                                      max_new_tokens=6, do_sample=False, use_cache=use_cache)
    assert until_eos(generated[:, 12:].numpy()) == until_eos(ours), use_cache

