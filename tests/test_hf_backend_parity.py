"""lm-eval's own `hf` backend on a decoder-only export scores as arch-objective does.

A tiny random CD and ND (the T5 vocabulary) are exported with their tokenizer and run
through `lm_eval.simple_evaluate(model="hf", ...)` with the model_args the export
recommends (`hf_decoder.LM_EVAL_MODEL_ARGS`: backend=seq2seq, so that the ND's prefix is
the start token plus the context; the CD also with `LM_EVAL_CAUSAL_MODEL_ARGS`, the
causal backend) on small local tasks: multiple choice (one empty context among them),
rolling log-likelihood over several windows, and greedy generation (CD, causal). Every
request's log-likelihood must equal our scorer's on the same token ids
(`harness.score_pairs`: rows `[0] + context + continuation`, the ND's prefix on the start
token and the context) in float32, and every argmax over the choices must agree.
"""
import json
import pathlib

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")      # light: lm_eval.tasks is imported at first use

from arch_objective import build_model, models  # noqa: E402
from arch_objective.convert import hf_decoder  # noqa: E402
from arch_objective.evaluation import harness  # noqa: E402
import helpers  # noqa: E402
from helpers import random_params  # noqa: E402

# torch and transformers take seconds to import: at first use, not at collection.
pytestmark = helpers.requires("torch", "transformers")
torch = helpers.lazy_import("torch")
transformers = helpers.lazy_import("transformers")

CD, ND = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER
MAX_LENGTH = 16          # lm-eval's rows and rolling windows; ours: row_length
MAX_GEN_TOKS = 6
TOLERANCE = 1e-4

MC_DOCS = [
    {"question": "Was the river cold in the morning?", "label": 0},
    {"question": "A teacher walked to the market.", "label": 2},
    {"question": "", "label": 1},                       # empty context: prefix_token_id
    {"question": "Birds fly south when", "label": 1},
    {"question": "Is a stone heavy?", "label": 0},
]
CHOICES = ["yes", "no", "a small red boat"]
ROLLING_DOCS = [
    {"text": "The committee met on Tuesday to discuss the new budget, which had been "
             "delayed for several weeks because of disagreements about funding."},
    {"text": "Short text."},
]
GEN_DOCS = [{"prompt": "Once upon a time there was"}, {"prompt": "The capital of France is"}]


def _tasks(folder: pathlib.Path) -> pathlib.Path:
  folder.mkdir()
  for name, docs in (("mc", MC_DOCS), ("rolling", ROLLING_DOCS), ("gen", GEN_DOCS)):
    (folder / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))

  def data(name):
    return (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    validation: {folder / (name + '.jsonl')}\nvalidation_split: validation\n")
  (folder / "parity_mc.yaml").write_text("task: parity_mc\n" + data("mc") + f"""\
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_target: label
doc_to_choice: {json.dumps(CHOICES)}
metric_list:
  - metric: acc
""")
  (folder / "parity_rolling.yaml").write_text("task: parity_rolling\n" + data("rolling") + """\
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
""")
  (folder / "parity_gen.yaml").write_text("task: parity_gen\n" + data("gen") + f"""\
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: ""
generation_kwargs:
  until: ["."]
  do_sample: false
  max_gen_toks: {MAX_GEN_TOKS}
metric_list:
  - metric: exact_match
""")
  return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory, t5_vocab_path):
  """(tokenizer, vocab, tasks folder, {arch: (model, params, export dir)})."""
  from arch_objective.data import vocabularies
  root = tmp_path_factory.mktemp("parity")
  spiece = root / "spiece" / "spiece.model"
  spiece.parent.mkdir()
  spiece.write_bytes(pathlib.Path(t5_vocab_path).read_bytes())
  tokenizer = transformers.T5Tokenizer.from_pretrained(str(spiece.parent), extra_ids=100)
  exports = {}
  for seed, arch in enumerate((CD, ND), start=1):
    model = build_model(arch, "tiny", dtype="float32", logits_via_embedding=False,
                        vocab_size=len(tokenizer))
    params = random_params(model, seed=seed)
    out = hf_decoder.export_decoder_only(params, model.config, arch, str(root / arch))
    tokenizer.save_pretrained(out)      # as `convert hf-out` ships it
    exports[arch] = (model, params, out)
  vocab = vocabularies.SentencePieceVocabulary(t5_vocab_path)
  return tokenizer, vocab, _tasks(root / "tasks"), exports


def run_hf(export, model_args, tasks_dir, tasks):
  """lm-eval's `hf` backend on `export` with `model_args` (rows and windows of
  MAX_LENGTH tokens instead of their 1280, so that rolling texts span several windows)."""
  from lm_eval.tasks import TaskManager
  assert "max_length=1280" in model_args
  model_args = model_args.replace("max_length=1280", f"max_length={MAX_LENGTH}")
  results = lm_eval.simple_evaluate(
      model="hf", model_args=f"pretrained={export},{model_args},device=cpu,batch_size=8",
      tasks=tasks, num_fewshot=0, bootstrap_iters=0, log_samples=True,
      task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))
  return results["samples"]


def encode_pair(tokenizer, context, continuation, backend):
  """lm-eval's (context ids, continuation ids) of a loglikelihood request (`_encode_pair`,
  add_bos_token=False, prefix_token_id=0), as our pair: its empty context `[0]` is our
  start token, so ours is `[]`."""
  encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
  if context == "":
    return [], encode(continuation)
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  if backend == "seq2seq":
    return encode(context), encode(continuation)
  whole, head = encode(context + continuation), encode(context)
  return head, whole[len(head):]


def check_multiple_choice(samples, tokenizer, model, params, backend):
  pairs, theirs = [], []
  for sample in samples:
    for (context, continuation), (ll, greedy) in zip(sample["arguments"],
                                                     sample["filtered_resps"]):
      context_ids, continuation_ids = encode_pair(tokenizer, context, continuation, backend)
      assert len(context_ids) + len(continuation_ids) <= MAX_LENGTH   # nothing truncated
      pairs.append((context_ids, continuation_ids))
      theirs.append((float(ll), bool(greedy)))
  assert len(pairs) == len(MC_DOCS) * len(CHOICES)
  ours = harness.score_pairs(model, params, pairs)
  diffs = np.array([abs(t[0] - o[0]) for t, o in zip(theirs, ours)])
  assert diffs.max() < TOLERANCE, (diffs.max(), theirs, ours)
  assert [t[1] for t in theirs] == [o[1] for o in ours]
  k = len(CHOICES)
  argmax = lambda scores: [int(np.argmax([s[0] for s in scores[i:i + k]]))
                           for i in range(0, len(scores), k)]
  assert argmax(theirs) == argmax(ours)
  return diffs.max()


def check_rolling(samples, tokenizer, model, params):
  windows = 0
  for sample in samples:
    (text,) = sample["arguments"][0]
    tokens = tokenizer.encode(text, add_special_tokens=False)
    pairs = harness.rolling_windows(tokens, MAX_LENGTH)
    windows += len(pairs)
    ours = sum(s for s, _ in harness.score_pairs(model, params, pairs))
    theirs = sample["filtered_resps"][0]
    theirs = float(theirs[0] if isinstance(theirs, (list, tuple)) else theirs)
    assert abs(theirs - ours) < TOLERANCE, (text, theirs, ours)
  assert windows > len(samples)          # later windows condition on the text before them


@pytest.mark.slow
def test_causal_decoder_scores_as_ours_under_the_causal_backend(setup, offline):
  tokenizer, vocab, tasks_dir, exports = setup
  model, params, out = exports[CD]
  samples = run_hf(out, hf_decoder.LM_EVAL_CAUSAL_MODEL_ARGS, tasks_dir,
                   ["parity_mc", "parity_rolling", "parity_gen"])
  check_multiple_choice(samples["parity_mc"], tokenizer, model, params, "causal")
  check_rolling(samples["parity_rolling"], tokenizer, model, params)

  # generate_until: lm-eval's left-truncated prompt, our greedy tokens, cut at "." / EOS.
  room = MAX_LENGTH - MAX_GEN_TOKS
  for sample in samples["parity_gen"]:
    prompt = sample["arguments"][0][0]
    ids = tokenizer.encode(prompt, add_special_tokens=False)[-room:]
    (tokens,) = harness.generate_tokens(model, params, [ids], MAX_GEN_TOKS)
    ours = harness.cut_at_stop(vocab.decode(tokens), [".", "</s>"])
    assert sample["filtered_resps"][0] == ours, (prompt, sample["filtered_resps"], ours)


@pytest.mark.parametrize("arch", [ND, CD])
@pytest.mark.slow
def test_decoder_only_scores_as_ours_under_the_seq2seq_backend(setup, offline, arch):
  tokenizer, _, tasks_dir, exports = setup
  model, params, out = exports[arch]
  tasks = ["parity_mc", "parity_rolling"] if arch == ND else ["parity_mc"]
  samples = run_hf(out, hf_decoder.LM_EVAL_MODEL_ARGS, tasks_dir, tasks)
  check_multiple_choice(samples["parity_mc"], tokenizer, model, params, "seq2seq")
  if arch == ND:
    check_rolling(samples["parity_rolling"], tokenizer, model, params)


def test_export_loads_with_the_auto_classes(setup):
  tokenizer, _, _, exports = setup
  _, _, out = exports[ND]
  auto = transformers.AutoTokenizer.from_pretrained(out)
  assert auto.encode("Birds fly south", add_special_tokens=False) == \
      tokenizer.encode("Birds fly south", add_special_tokens=False)
  causal = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
  seq2seq = transformers.AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True)
  assert type(causal).__name__ == "ArchObjectiveForCausalLM"
  assert type(seq2seq).__name__ == "ArchObjectiveForSeq2SeqLM"
  assert causal.config.prepend_start_token is True


def test_the_readmes_transformers_snippet_runs_as_printed(setup, tmp_path, monkeypatch):
  """The convert guide's Python block for decoder-only exports (docs/guides/convert.md,
  moved there from the README), run unattended as printed (`/tmp/nd_hf` is the ND export):
  logits for every prompt token, a continuation of the prompt (greedy decoding against ours
  is tested in test_hf_remote.py)."""
  root = pathlib.Path(__file__).resolve().parents[1]
  guide = (root / "docs" / "guides" / "convert.md").read_text()
  section = guide.split("## Decoder-only models in transformers", 1)[1]
  snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
  assert '"/tmp/nd_hf"' in snippet
  snippet = snippet.replace('"/tmp/nd_hf"', repr(str(setup[3][ND][2])))
  monkeypatch.chdir(tmp_path)
  names = {}
  exec(compile(snippet, "docs/guides/convert.md", "exec"), names)     # noqa: S102
  prompt = names["batch"]["input_ids"][0].tolist()
  assert names["logits"].shape == (1, len(prompt), names["model"].config.vocab_size)
  assert names["tokens"][0, :len(prompt)].tolist() == prompt
