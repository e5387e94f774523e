"""Examples of the synthetic world's task families, each built from the world's facts
and history so that its gold answer follows from the world.

Every generator takes the world and a `random.Random` and returns one example: a dict
of the fields its family's templates read (`world_prompts`), plus the structured facts
it was built from (`fact`, `premise_facts`, `chain`, ...) so that tests can recompute
the gold answer from the world without reading the text. Facts travel as
`[subject, relation, value]` lists, so examples are JSON-serialisable.

Training families: attribute QA (closed-book), extractive QA, paraphrase detection,
topic classification, review sentiment, summarisation. Held-out families: NLI,
coreference, cause and effect, story endings.
"""
from __future__ import annotations

import random
from typing import Callable

from arch_objective.errors import UserError
from arch_objective.data.world import entities as we
from arch_objective.data.world import events as wv
from arch_objective.data.world.facts import Facts
from arch_objective.data.world import prompts as wp
from arch_objective.data.world import text as wt


Example = dict

QUESTIONS = {
    we.PROFESSION: ("What does {s} do for a living?", "What is the job of {s}?",
                    "What is the profession of {s}?"),
    we.WORKS_AT: ("Where does {s} work?", "At which place is {s} employed?"),
    we.LIVES_IN: ("Where does {s} live?", "In which town does {s} live?"),
    we.AGE: ("How old is {s}?", "What is the age of {s}?"),
    we.TRAIT: ("What is {s} like as a person?", "Which word describes the character of {s}?"),
    we.KEEPS: ("What kind of animal does {s} keep?", "Which animal does {s} have as a pet?"),
    we.WORKS_IN: ("In which town does {s} work?", "Which town does {s} go to for work?"),
    we.SIBLING: ("Who is the {kin} of {s}?",),
    we.FRIEND: ("Who is a friend of {s}?",),
    we.PET: ("What is the name of the {species} that {s} keeps?",
             "What is {s}'s {species} called?"),
    we.COLOUR: ("What colour is the {what} of {owner}?", "What colour is {owner}'s {what}?"),
    we.MATERIAL: ("What is {owner}'s {what} made of?",),
    we.REGION: ("In which part of the country is {s}?",),
    we.KNOWN_FOR: ("What is {s} known for?", "What is {s} famous for?"),
    we.LOCATED_IN: ("In which town is {s}?", "Where is {s}?"),
}
ATTRIBUTE_QA_RELATIONS = (we.PROFESSION, we.WORKS_AT, we.LIVES_IN, we.AGE, we.TRAIT, we.KEEPS,
                          we.WORKS_IN, we.SIBLING, we.PET, we.COLOUR, we.MATERIAL, we.REGION,
                          we.KNOWN_FOR, we.LOCATED_IN)
EXTRACTIVE_QA_RELATIONS = (we.PROFESSION, we.WORKS_AT, we.LIVES_IN, we.AGE, we.TRAIT, we.PET,
                           we.SIBLING, we.FRIEND)
# Relations whose values exclude each other, for contradictions.
CONTRADICTABLE = frozenset({we.PROFESSION, we.WORKS_AT, we.LIVES_IN, we.AGE, we.AGE_DECADE,
                            we.WORKS_IN, we.HOME_REGION, we.COLOUR, we.MATERIAL,
                            we.SPECIES_OF})
HYPOTHESIS_RELATIONS = CONTRADICTABLE | {we.TRAIT, we.KEEPS, we.FRIEND, we.REGION, we.SIZE,
                                         we.LOCATED_IN}
NEUTRAL_RELATIONS = (we.PROFESSION, we.LIVES_IN, we.WORKS_AT, we.AGE, we.TRAIT, we.KEEPS,
                     we.WORKS_IN, we.HOME_REGION, we.AGE_DECADE)


def question(world: Facts, fact: we.Fact, rng: random.Random) -> tuple[str, str]:
  """(question, answer) asking for the value of `fact`."""
  entity = world.entity[fact.subject]
  fields = {"s": world.surface(fact.subject)}
  if fact.relation == we.SIBLING:
    fields["kin"] = "sister" if world.entity[fact.value].gender == "female" else "brother"
  elif fact.relation == we.PET:
    fields["species"] = world.entity[fact.value].species
  elif fact.relation in (we.COLOUR, we.MATERIAL):
    fields["owner"] = world.surface(entity.owner)
    fields["what"] = "pet" if isinstance(entity, we.Animal) else entity.kind
  return rng.choice(QUESTIONS[fact.relation]).format(**fields), world.surface(fact.value)


def alternatives(world: Facts, fact: we.Fact) -> list[str]:
  """Values other than `fact.value` that the relation could take for the subject."""
  entity = world.entity[fact.subject]
  if fact.relation == we.AGE:
    options = [str(a) for a in range(19, 79)]
  elif fact.relation == we.AGE_DECADE:
    options = list(we.DECADES.values())
  elif fact.relation == we.COLOUR:
    options = list(we.ANIMAL_COLOURS if isinstance(entity, we.Animal) else we.COLOURS)
  elif fact.relation == we.MATERIAL:
    options = list(we.MATERIALS)
  elif fact.relation in (we.SPECIES_OF, we.KEEPS):
    options = list(we.SPECIES)
  elif fact.relation in STATIC_VALUES:
    options = list(STATIC_VALUES[fact.relation])
  elif fact.relation in (we.LIVES_IN, we.WORKS_IN, we.LOCATED_IN):
    options = [t.id for t in world.entities.towns]
  elif fact.relation == we.WORKS_AT:
    options = [p.id for p in world.entities.places]
  else:
    options = list(world.domain(fact.relation))
  return [o for o in options if o != fact.value]


STATIC_VALUES = {we.PROFESSION: we.PROFESSIONS, we.TRAIT: we.TRAITS, we.KNOWN_FOR: we.PRODUCTS,
                 we.REGION: we.REGIONS, we.HOME_REGION: we.REGIONS, we.SIZE: we.TOWN_SIZES}


# ---------------------------------------------------------------------------
# Training families.
# ---------------------------------------------------------------------------


def attribute_qa(world: Facts, rng: random.Random) -> Example:
  """A closed-book question about one fact; the answer is its value."""
  relation = rng.choice([r for r in ATTRIBUTE_QA_RELATIONS if world.facts_of(r)])
  fact = rng.choice(world.facts_of(relation))
  text, answer = question(world, fact, rng)
  subject = world.entity[fact.subject]
  about = subject.owner if isinstance(subject, (we.Animal, we.Thing)) else fact.subject
  return {"subject": world.surface(about), "question": text, "answer": answer,
          "fact": list(fact)}


def extractive_qa(world: Facts, rng: random.Random) -> Example:
  """A biography and a question whose answer is a span of it."""
  while True:
    person = rng.choice(world.entities.people)
    facts = wt.person_facts(world, person)
    chosen = rng.sample(facts, min(len(facts), rng.randint(3, 6)))
    friends = [f for f in chosen if f.relation == we.FRIEND]
    askable = [f for f in chosen if f.relation in EXTRACTIVE_QA_RELATIONS
               and (f.relation != we.FRIEND or len(friends) == 1)]
    if not askable:
      continue
    fact = rng.choice(askable)
    context = wt.biography(world, person, rng, chosen)
    text, answer = question(world, fact, rng)
    if answer in context:
      return {"context": context, "question": text, "answer": answer, "fact": list(fact)}


def paraphrase(world: Facts, rng: random.Random) -> Example:
  """Two sentences: the same fact phrased twice (label 1), or a fact and another fact
  of the same relation, its value or subject changed (label 0)."""
  label = rng.randrange(2)
  while True:
    relation = rng.choice([r for r in wt.PARAPHRASABLE if world.facts_of(r)])
    fact = rng.choice(world.facts_of(relation))
    other = fact
    if not label and rng.random() < 0.3:   # another subject, when one lacks the value
      for _ in range(20):
        subject = rng.choice(world.facts_of(relation)).subject
        if subject != fact.subject and not world.holds((subject, relation, fact.value)):
          other = we.Fact(subject, relation, fact.value)
          break
    if not label and other == fact:
      options = alternatives(world, fact)
      if not options:
        continue
      other = we.Fact(fact.subject, relation, rng.choice(options))
    break
  phrasings = wt.fact_sentences(world, fact)
  i, j = rng.sample(range(len(phrasings)), 2)
  second = wt.fact_sentences(world, other)
  return {"sentence1": phrasings[i], "sentence2": second[j % len(second)], "label": label,
          "fact1": list(fact), "fact2": list(other)}


def topic(world: Facts, rng: random.Random) -> Example:
  """A report of a chain; the label is the topic of its first event."""
  chain = rng.choice(world.chains)
  text = (wt.news_report if rng.random() < 0.6 else wt.narrative)(world, chain, rng)
  return {"text": text, "label": wv.TOPICS.index(chain.topic), "chain": chain.id}


def sentiment(world: Facts, rng: random.Random) -> Example:
  """A review of a place; positive (1) when the place is good."""
  place = rng.choice(world.reviewed_places)
  text = wt.review(world, place, rng.choice(world.entities.people), rng)
  return {"review": text, "place": place.name, "label": int(place.quality == "good"),
          "place_id": place.id}


def summary_of(world: Facts, chain: wv.Chain) -> str:
  """The one-sentence summary of a chain: its first and its last event (the actor named
  in full at the first mention)."""
  first = wv.clause(chain.events[0], wv.slots(chain, world.entity, "full"))
  named = world.entity[chain.actor].name in first
  last = wv.clause(chain.events[-1], wv.slots(chain, world.entity, "first" if named else "full"))
  return f"{wt.cap(first)}, and in the end {last}."


def summarization(world: Facts, rng: random.Random) -> Example:
  """A story of a chain and its summary."""
  chain = rng.choice(world.chains)
  return {"document": wt.narrative(world, chain, rng), "summary": summary_of(world, chain),
          "chain": chain.id}


# ---------------------------------------------------------------------------
# Held-out families.
# ---------------------------------------------------------------------------


def _bundles(world: Facts, person: we.Person) -> dict[str, tuple[list[we.Fact], tuple[str, ...]]]:
  """Groups of facts a premise states together, each with phrasings ({s}: subject,
  {sp}: its possessive)."""
  place = world.entity[person.workplace]
  town = world.entity[person.town]
  out = {
      "work": ([we.Fact(person.id, we.WORKS_AT, place.id),
                we.Fact(place.id, we.LOCATED_IN, place.town),
                we.Fact(place.id, we.KIND, place.kind)],
               (f"{{s}} works at the {place.name} in {world.surface(place.town)}.",
                f"{{s}} has a job at the {place.name}, which is in "
                f"{world.surface(place.town)}.")),
      "home": ([we.Fact(person.id, we.LIVES_IN, town.id), we.Fact(town.id, we.REGION, town.region),
                we.Fact(town.id, we.SIZE, town.size)],
               (f"{{s}} lives in {town.name}, {wt.article(town.size)} in {town.region} of "
                f"the country.",
                f"{{sp}} home is in {town.name}, {wt.article(town.size)} in {town.region} of "
                f"the country.")),
      "age": ([we.Fact(person.id, we.AGE, str(person.age))],
              (f"{{s}} is {person.age} years old.", f"{{s}} turned {person.age} this year.")),
      "trait": ([we.Fact(person.id, we.TRAIT, person.trait)],
                (f"{{s}} is known for being {person.trait}.",)),
      "friend": ([we.Fact(person.id, we.FRIEND, person.friends[0])],
                 (f"{{s}} is a good friend of {world.surface(person.friends[0])}.",)),
  }
  thing = world.entity[person.thing]
  out["thing"] = ([we.Fact(person.id, we.OWNS, thing.id),
                   we.Fact(thing.id, we.COLOUR, thing.colour),
                   we.Fact(thing.id, we.MATERIAL, thing.material)],
                  (f"{{s}} owns {wt.article(thing.colour)} {we.MATERIALS[thing.material]} "
                   f"{thing.kind}.",))
  if person.pet:
    pet = world.entity[person.pet]
    out["pet"] = ([we.Fact(person.id, we.PET, pet.id),
                   we.Fact(pet.id, we.SPECIES_OF, pet.species),
                   we.Fact(pet.id, we.COLOUR, pet.colour)],
                  (f"{{s}} keeps {wt.article(pet.colour)} {pet.species} called {pet.name}.",
                   f"{{sp}} pet is {wt.article(pet.colour)} {pet.species} named {pet.name}."))
  return out


def nli_label(premise_facts: list[we.Fact], hypothesis: we.Fact) -> int:
  """0 entailment (the premise's facts give the hypothesis), 2 contradiction (they give
  another value of a relation with one value), 1 neutral (neither)."""
  known = we.closure(premise_facts)
  if hypothesis in known:
    return 0
  if hypothesis.relation in CONTRADICTABLE and any(
      f.subject == hypothesis.subject and f.relation == hypothesis.relation for f in known):
    return 2
  return 1


def nli(world: Facts, rng: random.Random) -> Example:
  """A premise stating a few facts about a person; a hypothesis that follows from them
  (restated, or in three of ten through a rule), contradicts them, or is about something
  they leave open."""
  label = rng.randrange(len(wp.NLI_LABELS))
  while True:
    person = rng.choice(world.entities.people)
    bundles = _bundles(world, person)
    chosen = rng.sample(sorted(bundles), rng.randint(2, 3))
    premise_facts = [f for name in chosen for f in bundles[name][0]]
    known = we.closure(premise_facts)
    own = {person.id, person.thing, person.pet}
    if label == 0:
      candidates = [f for f in known if f.relation in HYPOTHESIS_RELATIONS
                    and (f.subject in own or f.value == person.id)]
      derived = [f for f in candidates if f not in premise_facts]
      # Mostly a premise fact said in other words; some through a rule (works at the
      # bakery -> is a baker), which needs the world's rules, not only the premise.
      hypothesis = rng.choice(derived if derived and rng.random() < 0.3 else candidates)
    elif label == 2:
      candidates = [f for f in known if f.relation in CONTRADICTABLE and f.subject in own
                    and alternatives(world, f)]
      if not candidates:
        continue
      fact = rng.choice(candidates)
      hypothesis = we.Fact(fact.subject, fact.relation, rng.choice(alternatives(world, fact)))
    else:
      open_relations = [r for r in NEUTRAL_RELATIONS
                        if not any(f.subject == person.id and f.relation == r for f in known)]
      if not open_relations:
        continue
      relation = rng.choice(open_relations)
      true = world.values(person.id, relation)
      if not true:   # a person without a pet
        value = rng.choice(list(we.SPECIES))
      else:
        others = alternatives(world, we.Fact(person.id, relation, true[0]))
        value = rng.choice(others) if others and rng.random() < 0.5 else true[0]
      hypothesis = we.Fact(person.id, relation, value)
    if nli_label(premise_facts, hypothesis) != label:
      raise AssertionError(f"nli generator: {hypothesis} is not label {label}.")
    sentences = []
    for k, name in enumerate(chosen):
      subject, possessive = ((person.name, person.name + "'s") if k == 0 else
                             (person.pronouns[0], person.pronouns[2]))
      phrasing = rng.choice(bundles[name][1])
      sentences.append(wt.cap(phrasing.format(s=subject, sp=wt.cap(possessive))))
    return {"premise": " ".join(sentences),
            "hypothesis": wt.fact_sentence(world, hypothesis, rng)[:-1],
            "label": label, "premise_facts": [list(f) for f in premise_facts],
            "hypothesis_fact": list(hypothesis)}


# relation -> sentence frames; {X}, {Y} two people of one gender, {pron} the pronoun to
# resolve, {poss} a possessive pronoun, {v} the value that holds for one of them only.
COREFERENCE_FRAMES = {
    we.PROFESSION: ("{X} and {Y} had lunch together, and {pron} talked about {poss} work as {av}.",
                    "{X} met {Y} at the market, where {pron} said that being {av} is hard work."),
    we.LIVES_IN: ("{X} met {Y} at the fair, and afterwards {pron} went home to {v}.",
                  "{X} and {Y} took the same train, and {pron} got off at {v}, {poss} home town."),
    we.KEEPS: ("{X} and {Y} walked by the river while {pron} talked about feeding {poss} {v}.",
               "{X} visited {Y}, and {pron} complained that {poss} {v} is always hungry."),
    we.WORKS_AT: ("{X} waved at {Y} outside {v}, where {pron} works.",
                  "{X} and {Y} shared a table at lunch before {pron} went back to work at {v}."),
}


def coreference(world: Facts, rng: random.Random) -> Example:
  """A sentence about two people and a pronoun that refers to the one of whom a world
  fact (profession, home, pet, workplace) holds. Mostly the two share a gender, so that
  only the fact resolves the pronoun (as in WSC); about one pair in four differs, and
  the pronoun's gender agrees with the fact (as in Winogender)."""
  people = world.entities.people
  while True:
    x, y = rng.sample(people, 2)
    relation = rng.choice(list(COREFERENCE_FRAMES))
    if x.gender != y.gender and rng.random() < 0.7:
      continue
    holder = rng.choice((x, y))
    other = y if holder is x else x
    values = world.values(holder.id, relation)
    if not values or world.holds(we.Fact(other.id, relation, values[0])):
      continue
    value = values[0]
    surface = world.surface(value)
    frame = rng.choice(COREFERENCE_FRAMES[relation])
    pron, _, poss = holder.pronouns
    fields = {"X": x.name, "Y": y.name, "poss": poss, "v": surface, "av": wt.article(surface)}
    return {"text": frame.format(pron=pron, **fields),
            "masked": frame.format(pron="_", **fields), "pronoun": pron,
            "option1": x.name, "option2": y.name, "label": 0 if holder is x else 1,
            "candidates": [x.id, y.id], "fact": [holder.id, relation, value]}


def cause_effect(world: Facts, rng: random.Random) -> Example:
  """An event of a chain; its recorded cause or effect against an event that is neither
  a cause nor an effect of it, directly or not (COPA's format)."""
  while True:
    chain = rng.choice(world.chains)
    if len(chain.events) >= 2:
      break
  k = rng.randrange(len(chain.events))
  if k == 0:
    kind = "effect"
  elif k == len(chain.events) - 1:
    kind = "cause"
  else:
    kind = rng.choice(("cause", "effect"))
  premise = chain.events[k]
  right = chain.events[k + 1] if kind == "effect" else chain.events[k - 1]
  wrong = rng.choice([e for e in wv.EVENTS if wv.fits(e, chain) and not wv.linked(e, premise)])
  values = wv.slots(chain, world.entity, "full")
  label = rng.randrange(2)
  options = [right, wrong] if label == 0 else [wrong, right]
  clauses = [wv.clause(e, values) for e in options]
  premise_clause = wt.cap(wv.clause(premise, values))
  return {"premise": premise_clause + ".", "premise_clause": premise_clause, "question": kind,
          "connective": "because" if kind == "cause" else "so",
          "choice1": wt.sentence(clauses[0]), "choice2": wt.sentence(clauses[1]),
          "choice1_clause": clauses[0], "choice2_clause": clauses[1], "label": label,
          "chain": chain.id, "position": k, "events": options}


def story_ending(world: Facts, rng: random.Random) -> Example:
  """The start of a chain's story; the ending that follows by the rules against the one
  that contradicts them."""
  while True:
    chain = rng.choice(world.chains)
    if len(chain.events) >= 3:
      break
  k = rng.randint(2, len(chain.events) - 1)
  story = wt.narrative(world, chain, rng, upto=k)
  values = wv.slots(chain, world.entity, rng.choice(("first", "full")))
  right = wt.sentence(wv.clause(chain.events[k], values))
  wrong = wt.sentence(wv.clause(chain.events[k], values, negated=True))
  label = rng.randrange(2)
  endings = (right, wrong) if label == 0 else (wrong, right)
  return {"story": story, "ending1": endings[0], "ending2": endings[1], "label": label,
          "chain": chain.id, "position": k, "negated": [label != 0, label == 0]}


TRAINING_GENERATORS: dict[str, Callable[[Facts, random.Random], Example]] = {
    "world_attribute_qa": attribute_qa,
    "world_paraphrase": paraphrase,
    "world_topic": topic,
    "world_sentiment": sentiment,
    "world_summarization": summarization,
    "world_extractive_qa": extractive_qa,
}
HELDOUT_GENERATORS: dict[str, Callable[[Facts, random.Random], Example]] = {
    "world_nli": nli,
    "world_coreference": coreference,
    "world_cause_effect": cause_effect,
    "world_story_ending": story_ending,
}
if set(TRAINING_GENERATORS) != set(wp.TRAINING_PROMPTS) or (
    set(HELDOUT_GENERATORS) != set(wp.HELDOUT_PROMPTS)):
  raise UserError("world_tasks and world_prompts disagree on the family names.")
