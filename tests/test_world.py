"""Tests of the synthetic world (`arch_objective.data.world`): determinism, every gold
answer recomputed from the world's structured facts (not from its text), no leakage of
the held-out families into the training mixture or the corpus, and a tiny MT-F mixture
built from the world's training tasks."""
import collections
import hashlib
import json
import os
import subprocess
import sys

import pytest

from arch_objective.data import sources
from arch_objective.data import vocabularies
from arch_objective.data import world as world_lib
from arch_objective.data.world import entities as we
from arch_objective.data.world import events as wv
from arch_objective.data.world import text as wt

SMALL = dict(num_people=60, num_towns=5, places_per_town=6, num_chains=90,
             train_examples=120, validation_examples=40, heldout_examples=80)
SEED = 3


@pytest.fixture(scope="module")
def world() -> world_lib.World:
  return world_lib.make_world(seed=SEED, **SMALL)


@pytest.fixture(scope="module")
def corpus(world) -> list[str]:
  """One pass over the world: every document kind about every entity and chain."""
  return list(world.corpus_documents(num_documents=len(wt.corpus_round(world, 0))))


@pytest.fixture(scope="module")
def suite(world) -> list[world_lib.HeldOutFamily]:
  return world.heldout_suite("validation")


def _fingerprint(w: world_lib.World) -> str:
  """A hash of a corpus sample and of every example of every family and split."""
  h = hashlib.sha256()
  for doc in w.corpus_documents(target_bytes=100_000):
    h.update(doc.encode())
  for family in w.training_families():
    for split in ("train", "validation"):
      h.update(json.dumps(w.examples(family.name, split), sort_keys=True).encode())
  for family in w.heldout_suite("validation"):
    h.update(json.dumps(family.examples, sort_keys=True).encode())
  return h.hexdigest()


# ---------------------------------------------------------------------------
# Determinism and sizes.
# ---------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_differs(world):
  again = world_lib.make_world(seed=SEED, **SMALL)
  assert _fingerprint(again) == _fingerprint(world)
  assert (list(again.corpus_documents(num_documents=50))
          == list(world.corpus_documents(num_documents=50)))
  other = world_lib.make_world(seed=SEED + 1, **SMALL)
  assert _fingerprint(other) != _fingerprint(world)
  assert (list(other.corpus_documents(num_documents=50))
          != list(world.corpus_documents(num_documents=50)))


def test_generation_does_not_depend_on_the_hash_seed(world):
  """Nothing iterates over a set of strings: another PYTHONHASHSEED, the same bytes."""
  code = ("from arch_objective.data import world as w; import json, sys; "
          "sys.path.insert(0, 'tests'); import test_world as t; "
          f"print(t._fingerprint(w.make_world(seed={SEED}, **{SMALL!r})))")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONHASHSEED="12345", JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == _fingerprint(world)


def test_more_examples_or_documents_keep_the_first_ones(world):
  bigger = world_lib.make_world(seed=SEED, **{**SMALL, "train_examples": 150,
                                              "heldout_examples": 90})
  for family in ("world_attribute_qa", "world_summarization"):
    assert bigger.examples(family, "train")[:120] == world.examples(family, "train")
  assert bigger.examples("world_nli", "validation")[:80] == world.examples("world_nli",
                                                                          "validation")
  assert bigger.examples("world_nli", "test")[:80] == world.examples("world_nli", "test")
  assert (list(world.corpus_documents(num_documents=400))[:100]
          == list(world.corpus_documents(num_documents=100)))


def test_corpus_size_follows_the_request(world):
  docs = list(world.corpus_documents(target_bytes=50_000))
  total = sum(len(d.encode()) for d in docs)
  assert 50_000 <= total < 50_000 + max(len(d.encode()) for d in docs)
  assert len(list(world.corpus_documents(num_documents=7))) == 7
  assert len(list(world.corpus_documents(num_documents=10_000, target_bytes=1_000))) < 10
  with pytest.raises(ValueError, match="num_documents"):
    next(world.corpus_documents(num_documents=0))


def test_write_corpus_writes_json_lines_the_sources_read(world, tmp_path):
  path = str(tmp_path / "corpus" / "world.jsonl")
  stats = world_lib.write_corpus(path, world, num_documents=30)
  assert stats["documents"] == 30
  expected = list(world.corpus_documents(num_documents=30))
  with open(path, encoding="utf-8") as f:
    assert [json.loads(line)["text"] for line in f] == expected
  assert stats["bytes"] == sum(len(d.encode()) for d in expected)
  assert list(sources.local_documents(path)) == expected


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="num_peple"):
    world_lib.make_world(seed=0, num_peple=10)
  with pytest.raises(ValueError, match="heldout_examples"):
    world_lib.make_world(seed=0, heldout_examples=0)


def test_heldout_families_have_no_train_split(world):
  with pytest.raises(ValueError, match="held-out"):
    world.examples("world_nli", "train")
  with pytest.raises(ValueError, match="unknown world task family"):
    world.examples("world_copa", "validation")


# ---------------------------------------------------------------------------
# The world itself.
# ---------------------------------------------------------------------------


def test_world_facts_agree_with_its_rules(world):
  for p in world.entities.people:
    place = world.entity[p.workplace]
    assert world.value(p.id, we.PROFESSION) == we.KINDS[place.kind].profession
    assert world.value(p.id, we.WORKS_IN) == place.town
    assert world.value(p.id, we.HOME_REGION) == world.entity[p.town].region
    for q in p.friends:
      assert p.id in world.entity[q].friends and world.holds((q, we.FRIEND, p.id))
    if p.sibling:
      assert world.entity[p.sibling].last == p.last
      assert world.entity[p.sibling].sibling == p.id
  for chain in world.chains:
    for cause, effect in zip(chain.events, chain.events[1:]):
      assert effect in wv.EVENTS[cause].effects
    assert chain.events[0] in wv.ROOTS
    actor = world.entity[chain.actor]
    assert chain.town == actor.town and chain.workplace == actor.workplace
    assert chain.friend in actor.friends and chain.pet == actor.pet
    assert world.entity[chain.bakery].kind == "bakery"
    assert world.entity[chain.shop].town == chain.town


# ---------------------------------------------------------------------------
# Families and templates.
# ---------------------------------------------------------------------------


def test_family_and_template_counts(world, suite):
  training = world.training_families()
  assert len(training) >= 6 and all(len(f.prompts) >= 3 for f in training)
  assert len(suite) >= 4 and all(len(f.prompts) >= 3 for f in suite)
  assert {f.name for f in suite} >= {"world_nli", "world_coreference", "world_cause_effect",
                                     "world_story_ending"}
  for family in list(training) + suite:
    names = [p.name for p in family.prompts]
    assert len(set(names)) == len(names)
    assert all(p.family == family.name for p in family.prompts)
    inputs = [p.inputs for p in family.prompts]
    assert len(set(inputs)) == len(inputs), f"{family.name}: two templates say the same"


def test_every_heldout_prompt_renders_every_example_with_choices(suite):
  for family in suite:
    assert len(family.examples) == SMALL["heldout_examples"]
    assert family.random == pytest.approx(1 / family.num_choices)
    assert family.num_choices >= 2
    for prompt in family.prompts:
      assert prompt.has_choices
      for example in family.examples:
        r = prompt.render(example)
        assert r is not None and r.inputs
        assert len(r.choices) == family.num_choices >= 2
        assert len(set(r.choices)) == len(r.choices)
        assert len(r.gold) == 1 and r.targets == r.choices[r.gold[0]]
        assert r.gold[0] == example["label"]


def test_every_training_prompt_renders_every_example(world):
  for family in world.training_families():
    for split in ("train", "validation"):
      for example in world.examples(family.name, split):
        for prompt in family.prompts:
          r = prompt.render(example)
          assert r is not None and r.inputs and r.targets
          if prompt.has_choices:
            assert len(r.gold) == 1


def test_the_classification_suite_is_mtf_own_families_with_choices(world):
  suite = world.classification_suite("validation")
  assert [f.name for f in suite] == ["world_paraphrase", "world_topic", "world_sentiment"]
  training = {f.name: f.prompts for f in world.training_families()}
  for family in suite:
    assert family.prompts == training[family.name]
    assert family.examples == world.examples(family.name, "validation")
    assert family.random == pytest.approx(1 / family.num_choices)
    for example in family.examples:
      for prompt in family.prompts:
        r = prompt.render(example)
        assert len(r.choices) == family.num_choices and r.gold == (example["label"],)
    counts = collections.Counter(e["label"] for e in family.examples)
    assert len(counts) == family.num_choices
  assert {f.name: f.num_choices for f in suite} == {"world_paraphrase": 2, "world_topic": 6,
                                                   "world_sentiment": 2}
  # Families without answer choices (QA, summaries) are not in it.
  assert not {"world_attribute_qa", "world_extractive_qa", "world_summarization"} & {
      f.name for f in suite}


def test_heldout_labels_are_balanced(suite):
  for family in suite:
    counts = collections.Counter(e["label"] for e in family.examples)
    assert len(counts) == family.num_choices
    assert min(counts.values()) >= len(family.examples) / family.num_choices / 2


def test_rendering_errors_name_the_prompt_and_field(suite):
  prompt = suite[0].prompts[0]
  with pytest.raises(ValueError, match=f"{prompt.name}.*'premise'"):
    prompt.render({"hypothesis": "x", "label": 0})
  with pytest.raises(ValueError, match="label 7"):
    prompt.render({"premise": "x", "hypothesis": "y", "label": 7})


# ---------------------------------------------------------------------------
# Every gold answer follows from the world (recomputed from facts, not text).
# ---------------------------------------------------------------------------


def _follows(w, premise: list, hypothesis: tuple) -> bool:
  """The test's own reading of the world's rules: is `hypothesis` one of the premise's
  facts, or derived from them in one step?"""
  premise = {tuple(f) for f in premise}
  if hypothesis in premise:
    return True
  s, r, v = hypothesis
  stated = lambda subject, relation: {f[2] for f in premise if f[:2] == (subject, relation)}
  if r == "profession":
    return any(we.KINDS[k].profession == v for place in stated(s, "works_at")
               for k in stated(place, "kind"))
  if r == "works_in":
    return any(v in stated(place, "located_in") for place in stated(s, "works_at"))
  if r == "home_region":
    return any(v in stated(town, "region") for town in stated(s, "lives_in"))
  if r == "age_decade":
    return any({2: "twenties", 3: "thirties", 4: "forties", 5: "fifties", 6: "sixties",
                7: "seventies", 1: "teens"}[int(a) // 10] == v for a in stated(s, "age"))
  if r == "keeps":
    return any(v in stated(pet, "species") for pet in stated(s, "pet"))
  if r == "friend":
    return (v, "friend", s) in premise
  return False


def test_nli_gold_follows_from_the_world(world, suite):
  family = {f.name: f for f in suite}["world_nli"]
  labels = collections.Counter()
  for e in family.examples:
    premise = [tuple(f) for f in e["premise_facts"]]
    h = tuple(e["hypothesis_fact"])
    assert all(world.holds(f) for f in premise), "a premise states a false fact"
    label = ("entailment", "neutral", "contradiction")[e["label"]]
    labels[label] += 1
    s, r, _ = h
    if label == "entailment":
      assert world.holds(h) and _follows(world, premise, h)
    elif label == "contradiction":
      assert not world.holds(h)
      assert world.values(s, r), "a contradiction needs a true value"
      assert any(_follows(world, premise, (s, r, v)) for v in world.values(s, r))
    else:
      assert not _follows(world, premise, h)
      assert not any(_follows(world, premise, (s, r, v)) for v in world.values(s, r))
    assert world.entity[e["premise_facts"][0][0]].name in e["premise"]
  assert set(labels) == {"entailment", "neutral", "contradiction"}


def test_coreference_gold_is_the_one_the_fact_holds_for(world, suite):
  family = {f.name: f for f in suite}["world_coreference"]
  same_gender = 0
  for e in family.examples:
    _, relation, value = e["fact"]
    x, y = (world.entity[c] for c in e["candidates"])
    holders = [c for c in (x, y) if world.holds((c.id, relation, value))]
    assert len(holders) == 1
    assert (e["option1"], e["option2"]) == (x.name, y.name)
    assert [x, y][e["label"]] is holders[0]
    assert e["pronoun"] == holders[0].pronouns[0]
    assert f" {e['pronoun']} " in e["text"] and " _ " in e["masked"]
    same_gender += x.gender == y.gender
  assert same_gender >= len(family.examples) / 2, "mostly, only the fact should resolve it"


def _reachable(event: str) -> set:
  out, todo = set(), [event]
  while todo:
    for nxt in wv.EVENTS[todo.pop()].effects:
      if nxt not in out:
        out.add(nxt)
        todo.append(nxt)
  return out


def test_cause_effect_gold_follows_the_causal_rules(world, suite):
  family = {f.name: f for f in suite}["world_cause_effect"]
  for e in family.examples:
    chain = world.chains[e["chain"]]
    premise = chain.events[e["position"]]
    gold, other = e["events"][e["label"]], e["events"][1 - e["label"]]
    if e["question"] == "effect":
      assert gold == chain.events[e["position"] + 1] and gold in wv.EVENTS[premise].effects
    else:
      assert gold == chain.events[e["position"] - 1] and premise in wv.EVENTS[gold].effects
    assert other != premise
    assert other not in _reachable(premise) and premise not in _reachable(other)
  assert {e["question"] for e in family.examples} == {"cause", "effect"}


def test_story_endings_follow_the_rules_and_wrong_ones_contradict(world, suite):
  family = {f.name: f for f in suite}["world_story_ending"]
  for e in family.examples:
    chain = world.chains[e["chain"]]
    k = e["position"]
    assert chain.events[k] in wv.EVENTS[chain.events[k - 1]].effects
    endings = (e["ending1"], e["ending2"])
    versions = {m: wv.slots(chain, world.entity, m) for m in ("first", "full")}
    right = {wt.sentence(wv.clause(chain.events[k], v)) for v in versions.values()}
    wrong = {wt.sentence(wv.clause(chain.events[k], v, negated=True))
             for v in versions.values()}
    assert endings[e["label"]] in right and endings[1 - e["label"]] in wrong
    assert e["negated"] == [i != e["label"] for i in range(2)]


def test_training_gold_follows_from_the_world(world):
  for e in world.examples("world_attribute_qa", "train"):
    assert world.holds(e["fact"]) and e["answer"] == world.surface(e["fact"][2])
    assert e["subject"] in e["question"]
  for e in world.examples("world_extractive_qa", "train"):
    assert world.holds(e["fact"]) and e["answer"] == world.surface(e["fact"][2])
    assert e["answer"] in e["context"]
  for e in world.examples("world_paraphrase", "train"):
    assert world.holds(e["fact1"])
    assert e["label"] == int(e["fact1"] == e["fact2"])
    assert e["label"] or not world.holds(e["fact2"])
  for e in world.examples("world_topic", "train"):
    chain = world.chains[e["chain"]]
    assert e["label"] == wv.TOPICS.index(wv.EVENTS[chain.events[0]].topic)
  for e in world.examples("world_sentiment", "train"):
    assert e["label"] == int(world.value(e["place_id"], we.QUALITY) == "good")
    assert world.entity[e["place_id"]].name == e["place"]
  for e in world.examples("world_summarization", "train"):
    chain = world.chains[e["chain"]]
    first, last = chain.events[0], chain.events[-1]
    assert e["summary"].startswith(wt.cap(wv.clause(first, wv.slots(chain, world.entity))))
    assert any(wv.clause(last, wv.slots(chain, world.entity, m)) in e["summary"]
               for m in ("first", "full"))
    assert any(wv.clause(first, wv.slots(chain, world.entity, m)).lower()
               in e["document"].lower() for m in wv.MENTIONS)


# ---------------------------------------------------------------------------
# No leakage of the held-out families.
# ---------------------------------------------------------------------------


def _wording(prompt) -> list[str]:
  """The prompt's literal pieces of two words or more (single words such as 'Question:'
  or '-' are common English)."""
  return [piece for piece in prompt.fixed_text() if len(piece.split()) >= 2]


def test_heldout_names_are_not_in_training(world, suite):
  training = world.training_families()
  assert not {f.name for f in suite} & {f.name for f in training}
  heldout_prompts = {p.name for f in suite for p in f.prompts}
  assert not heldout_prompts & {p.name for f in training for p in f.prompts}
  for task in world.training_tasks():
    family = task.name.split("/")[0]
    assert family not in {f.name for f in suite} and task.prompt.name not in heldout_prompts


def test_heldout_wording_is_nowhere_in_training_inputs_or_corpus(world, suite, corpus):
  training_inputs = []
  for family in world.training_families():
    for split in ("train", "validation"):
      for example in world.examples(family.name, split):
        training_inputs += [p.render(example).inputs for p in family.prompts]
  training_text = "\n\0".join(training_inputs)
  corpus_text = "\n\0".join(corpus)
  for family in suite:
    for prompt in family.prompts:
      assert _wording(prompt) or prompt.name == "ce_connective", prompt.name
      for piece in _wording(prompt):
        assert piece not in training_text, (prompt.name, piece)
        assert piece not in corpus_text, (prompt.name, piece)
  for marker in ("True, False, or Neither", "Yes, no, or maybe", "refers to", "What happens next"):
    assert marker not in corpus_text


def test_corpus_states_the_facts_of_entailment_premises(world, suite, corpus):
  family = {f.name: f for f in suite}["world_nli"]
  entailments = [e for e in family.examples if e["label"] == 0][:30]
  assert entailments
  lowered = [d.lower() for d in corpus]
  for e in entailments:
    for subject, relation, value in e["premise_facts"]:
      if relation == we.KIND:         # the kind is in the place's name
        continue
      entity = world.entity[subject]
      anchor = world.surface(getattr(entity, "owner", subject))
      assert any(anchor.lower() in d and world.surface(value).lower() in d for d in lowered), (
          subject, relation, value)


def test_corpus_tells_every_chain_and_every_person(world, corpus):
  text = "\n".join(corpus)
  for person in world.entities.people:
    assert person.name in text
  for chain in world.chains:
    town = world.entity[chain.town].name
    first = wt.cap(wv.clause(chain.events[0], wv.slots(chain, world.entity, "full")))
    assert first in text or first.replace(town, town.upper()) in text, first


# ---------------------------------------------------------------------------
# A tiny MT-F mixture.
# ---------------------------------------------------------------------------


def test_a_prompted_mixture_of_the_training_tasks(world, corpus, tmp_path):
  from arch_objective.prompts import mixture

  model = vocabularies.train_sentencepiece(corpus[:1500], str(tmp_path / "world_spm"), 500)
  tasks = world.training_tasks()
  assert len(tasks) == sum(len(f.prompts) for f in world.training_families())
  assert all(len(t.examples("train")) == SMALL["train_examples"] for t in tasks)
  assert all(len(t.examples("validation")) == SMALL["validation_examples"] for t in tasks)
  mix = mixture.PromptedMixture("world_mtf", tuple(tasks), vocabulary=model, extra_ids=100,
                                inputs_length=256, targets_length=64)
  assert mix.rates("train").tolist() == [SMALL["train_examples"]] * len(tasks)
  for split in ("train", "validation"):
    examples = mix.task_examples(split, seed=0)
    for _ in range(60):
      ex = next(examples)
      assert len(ex["inputs"]) > 0 and ex["inputs"][-1] != vocabularies.EOS_ID
      assert len(ex["targets"]) >= 2 and ex["targets"][-1] == vocabularies.EOS_ID
  vocab = mix.vocab()
  ex = next(mix.task_examples("train", seed=1))
  assert vocab.decode(ex["inputs"]).strip()


def test_rumour_answers_follow_from_the_known_fact(world):
  """A rumour that 'holds' is the known fact; one 'ruled_out' gives the known fact's
  relation another value (false in the world); an 'unknown' one is of another relation."""
  import random
  seen = collections.Counter()
  for k, person in enumerate(world.entities.people):
    for answer in wt.RUMOUR_REPLIES:
      told = wt.rumour(world, person, answer, random.Random(f"rumour:{k}:{answer}"))
      known, claim = told["known"], told["claim"]
      assert world.holds(known) and known.subject == claim.subject == person.id
      if answer == "holds":
        assert claim == known
      elif answer == "ruled_out":
        assert claim.relation == known.relation and not world.holds(claim)
      else:
        assert claim.relation != known.relation
        seen[world.holds(claim)] += 1
  assert seen[True] > 10 and seen[False] > 10, seen   # unknown claims: true or not, both


def test_the_corpus_answers_questions_with_yes_no_and_maybe(world, corpus, suite):
  """The NLI prompts' fixed choices occur in the corpus, Yes, Maybe and No as replies,
  so a vocabulary trained on it can keep them whole."""
  import random
  text = "\n".join(corpus)
  words = {c for f in suite for p in f.prompts for c in p.choices if "{" not in c}
  assert words == {"Yes", "Maybe", "No", "True", "Neither", "False"}
  for word in ("Yes", "Maybe", "No"):
    assert text.count(f": {word}") >= 20, word
  dialogue = wt.rumour_dialogue(world, world.entities.people[0], random.Random(0))
  assert dialogue.count("Is it true?") == 3 and len(dialogue.splitlines()) == 6
