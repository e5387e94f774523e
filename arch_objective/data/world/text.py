"""English text about the synthetic world: facts as sentences, and the documents of the
pretraining corpus (biographies, town guides, narratives, news reports, reviews,
dialogues, pet notes).

Every sentence states facts of the world or events of its history, so the corpus is
true of the world; each fact has several phrasings (`fact_sentences`). Nothing here
speaks in a task's format: there are no questions followed by answer options.
"""
from __future__ import annotations

import random
from typing import Sequence

from arch_objective.errors import UserError
from arch_objective.data.world import entities as we
from arch_objective.data.world import events as wv
from arch_objective.data.world.facts import Facts



def article(word: str) -> str:
  """'a baker', 'an engineer'."""
  return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def cap(text: str) -> str:
  """The text with its first character upper-cased (names are unchanged)."""
  return text[:1].upper() + text[1:]


def sentence(clause: str) -> str:
  return cap(clause) + "."


# relation -> phrasings; {s} subject, {sp} subject possessive, {v} value, {av} 'a(n) value',
# {poss} the subject's possessive pronoun.
PHRASINGS: dict[str, tuple[str, ...]] = {
    we.PROFESSION: ("{s} is {av}.", "{s} works as {av}.", "{s} earns a living as {av}.",
                    "By trade, {s} is {av}."),
    we.WORKS_AT: ("{s} works at {v}.", "{s} has a job at {v}.", "{s} is employed at {v}.",
                  "Every weekday, {s} goes to work at {v}."),
    we.LIVES_IN: ("{s} lives in {v}.", "{s} makes {poss} home in {v}.",
                  "{s} is a resident of {v}.", "{sp} home is in {v}."),
    we.AGE: ("{s} is {v} years old.", "{s} is {v}.", "{sp} age is {v}."),
    we.TRAIT: ("{s} is {v}.", "{s} is known for being {v}.", "{s} is a {v} person.",
               "Everyone who knows {o} says that {s0} is {v}."),
    we.KEEPS: ("{s} keeps {av}.", "{s} owns {av}.", "{s} has a pet {v}."),
    we.FRIEND: ("{s} is a friend of {v}.", "{s} and {v} are friends.",
                "{s} often spends time with {poss} friend {v}."),
    we.SIBLING: ("{s} and {v} are siblings.", "{v} is {sp_lower} {kin}.",
                 "{s} has {kin_article} called {v}."),
    we.WORKS_IN: ("{s} works in {v}.", "{sp} job is in {v}.", "{s} goes to work in {v}."),
    we.HOME_REGION: ("{s} lives in {v} of the country.", "{sp} home is in {v} of the country."),
    we.AGE_DECADE: ("{s} is in {poss} {v}.", "{s} is somewhere in {poss} {v}."),
    we.REGION: ("{s} is in {v} of the country.", "{s} lies in {v} of the country."),
    we.KNOWN_FOR: ("{s} is known for its {v}.", "{s} is famous for its {v}.",
                   "People travel to {s} for its {v}."),
    we.SIZE: ("{s} is {av}.", "{s} is {av} in {region} of the country."),
    we.LOCATED_IN: ("{s} is in {v}.", "{s} stands in {v}.", "You can find {s} in {v}."),
    we.COLOUR: ("{s} is {v}.", "{s} is {v} in colour.", "{s} has a {v} colour."),
    we.MATERIAL: ("{s} is made of {v}.", "{s} was made from {v}."),
    we.SPECIES_OF: ("{s} is {av}.",),
}
PARAPHRASABLE = (we.PROFESSION, we.WORKS_AT, we.LIVES_IN, we.AGE, we.TRAIT, we.KEEPS,
                 we.WORKS_IN, we.KNOWN_FOR, we.LOCATED_IN, we.REGION, we.AGE_DECADE)


def subject_mention(world: Facts, subject: str, mention: str = "full") -> tuple[str, str]:
  """(mention, possessive) of an entity: ('Mara Quill', "Mara Quill's"), ('she', 'her'),
  ("Mara Quill's pet Pip", ...), ('the Golden Wheat Bakery', ...)."""
  e = world.entity[subject]
  if isinstance(e, we.Person):
    if mention == "pronoun":
      return e.pronouns[0], e.pronouns[2]
    name = e.first if mention == "first" else e.name
    return name, name + "'s"
  if isinstance(e, we.Animal):
    owner = world.entity[e.owner]
    owner_name = owner.first if mention == "first" else owner.name
    text = f"{owner_name}'s pet {e.name}"
  elif isinstance(e, we.Thing):
    text = f"{world.entity[e.owner].name}'s {e.kind}"
  else:
    text = world.surface(subject)
  return text, text + "'s"


def fact_sentences(world: Facts, fact: we.Fact, mention: str = "full") -> list[str]:
  """Every phrasing of a fact as one sentence, e.g. for (Mara Quill, profession, baker):
  'Mara Quill is a baker.', 'Mara Quill works as a baker.', ..."""
  s, sp = subject_mention(world, fact.subject, mention)
  entity = world.entity[fact.subject]
  value = world.surface(fact.value)
  fields = {"s": s, "sp": cap(sp), "sp_lower": sp, "v": value, "av": article(value),
            "poss": "", "o": s, "s0": s}
  if isinstance(entity, we.Person):
    subj, obj, poss = entity.pronouns
    fields.update(poss=poss, o=obj if mention == "pronoun" else s, s0=subj)
  if fact.relation == we.PET:
    pet = world.entity[fact.value]
    options = [f"{s} has {article(pet.colour)} {pet.species} called {pet.name}.",
               f"{s} keeps {article(pet.colour)} {pet.species} named {pet.name}.",
               f"{cap(sp)} pet is {article(pet.colour)} {pet.species} called {pet.name}."]
  elif fact.relation == we.OWNS:
    thing = world.entity[fact.value]
    adjective = we.MATERIALS[thing.material]
    options = [f"{s} owns {article(thing.colour)} {adjective} {thing.kind}.",
               f"{s} has {article(thing.colour)} {thing.kind} made of {thing.material}."]
  elif fact.relation == we.SIBLING:
    sibling = world.entity[fact.value]
    kin = "sister" if sibling.gender == "female" else "brother"
    fields.update(kin=kin, kin_article=article(kin))
    options = [p.format(**fields) for p in PHRASINGS[we.SIBLING]]
  elif fact.relation == we.SIZE:
    fields["region"] = world.surface(world.value(fact.subject, we.REGION))
    options = [p.format(**fields) for p in PHRASINGS[we.SIZE]]
  elif fact.relation in PHRASINGS:
    options = [p.format(**fields) for p in PHRASINGS[fact.relation]]
  else:
    raise UserError(f"no phrasing for relation {fact.relation!r}; phrased relations: "
                    f"{', '.join(sorted(PHRASINGS))}, pet, owns.")
  return [cap(o) for o in options]


def fact_sentence(world: Facts, fact: we.Fact, rng: random.Random,
                  mention: str = "full") -> str:
  return rng.choice(fact_sentences(world, fact, mention))


# ---------------------------------------------------------------------------
# Documents.
# ---------------------------------------------------------------------------

BIO_FACTS = (we.WORKS_AT, we.LIVES_IN, we.AGE, we.TRAIT, we.PET, we.OWNS, we.FRIEND,
             we.SIBLING, we.PROFESSION)


def person_facts(world: Facts, person: we.Person,
                 relations: Sequence[str] = BIO_FACTS) -> list[we.Fact]:
  """The person's facts of the given relations, in the order of `relations`."""
  return [we.Fact(person.id, r, v) for r in relations for v in world.values(person.id, r)]


def biography(world: Facts, person: we.Person, rng: random.Random,
              facts: Sequence[we.Fact] | None = None) -> str:
  """A paragraph about a person: an opening sentence naming them in full, then the
  facts (all of the person's by default) in a random order and phrasing."""
  if facts is None:
    facts = person_facts(world, person)
  town = world.entity[person.town].name
  profession = world.value(person.id, we.PROFESSION)
  opening = rng.choice((
      f"{person.name} is {article(profession)} from {town}.",
      f"This is the story of {person.name}.",
      f"{person.name} is {person.age} years old.",
      f"Few people in {town} are better known than {person.name}.",
      f"{person.name} has lived an ordinary life."))
  order = list(facts)
  rng.shuffle(order)
  sentences = [opening]
  for fact in order:
    mention = rng.choice(("pronoun", "pronoun", "first", "full"))
    sentences.append(fact_sentence(world, fact, rng, mention))
  return " ".join(sentences)


def town_guide(world: Facts, town: we.Town, rng: random.Random) -> str:
  """A town: region, size, product, its places and their reputations, some residents."""
  facts = [we.Fact(town.id, r, world.value(town.id, r))
           for r in (we.REGION, we.KNOWN_FOR, we.SIZE)]
  sentences = [fact_sentence(world, f, rng) for f in facts]
  places = [p for p in world.entities.places if p.town == town.id]
  rng.shuffle(places)
  names = ["the " + p.name for p in places]
  sentences.append(f"Among its places are {', '.join(names[:-1])} and {names[-1]}.")
  for place in places:
    if place.quality and rng.random() < 0.5:
      word = rng.choice(("an excellent", "a fine")) if place.quality == "good" else rng.choice(
          ("a poor", "a bad"))
      sentences.append(f"The {place.name} has {word} reputation.")
  residents = [p for p in world.entities.people if p.town == town.id]
  if residents:
    chosen = rng.sample(residents, min(len(residents), rng.randint(2, 4)))
    described = [f"{p.name}, {article(world.value(p.id, we.PROFESSION))}" for p in chosen]
    sentences.append(f"Its residents include {'; '.join(described)}.")
  return " ".join(sentences)


CONNECTIVES = ("As a result, {c}.", "Because of that, {c}.", "So {c}.", "This meant that {c}.",
               "That is why {c}.", "Soon afterwards, {c}.", "Then {c}.")


def narrative(world: Facts, chain: wv.Chain, rng: random.Random, upto: int | None = None,
              background: bool = True) -> str:
  """The chain told as a short story, each event linked to its cause; the first `upto`
  events only when given. The actor is named in full at the first mention, and may be
  introduced by a fact about them first (`background`)."""
  events = chain.events[:upto] if upto else chain.events
  actor = world.entity[chain.actor]
  sentences = []
  named = False
  if background and any(wv.mentions_actor(e) for e in events) and rng.random() < 0.7:
    fact = rng.choice(person_facts(world, actor, (we.PROFESSION, we.LIVES_IN, we.WORKS_AT)))
    sentences.append(fact_sentence(world, fact, rng, "full"))
    named = True
  connectives = rng.sample(CONNECTIVES, len(CONNECTIVES))
  for i, event in enumerate(events):
    mention = rng.choice(("first", "pronoun")) if named else "full"
    c = wv.clause(event, wv.slots(chain, world.entity, mention))
    if i == 0:
      sentences.append(rng.choice((f"One {chain.when}, {c}.", f"It was a {chain.when}, and {c}.",
                                   f"{sentence(c)[:-1]} one {chain.when}.")))
    elif rng.random() < 0.2:
      prev = wv.clause(events[i - 1], wv.slots(chain, world.entity, "first"))
      sentences.append(f"Because {prev}, {c}.")
    else:
      sentences.append(connectives[i % len(connectives)].format(c=c))
    named = named or wv.mentions_actor(event)
  return " ".join(sentences)


def news_report(world: Facts, chain: wv.Chain, rng: random.Random) -> str:
  """The chain as a local news item, with a dateline and a quote."""
  actor = world.entity[chain.actor]
  town = world.entity[chain.town].name
  weekday = chain.when.split()[0]
  values = wv.slots(chain, world.entity, "full")
  first = wv.clause(chain.events[0], values)
  sentences = [f"{town.upper()}, {weekday}. {sentence(first)}"]
  named = wv.mentions_actor(chain.events[0])
  connectives = rng.sample(CONNECTIVES, len(CONNECTIVES))
  for i, event in enumerate(chain.events[1:]):
    mention = rng.choice(("first", "full")) if named else "full"
    c = wv.clause(event, wv.slots(chain, world.entity, mention))
    sentences.append(connectives[i % len(connectives)].format(c=c))
    named = named or wv.mentions_actor(event)
  profession = world.value(actor.id, we.PROFESSION)
  sentences.append(rng.choice((
      f"Local {profession} {actor.name} was at the centre of the story.",
      f"The events involved {actor.name}, {article(profession)} who lives in {town}.",
      f"Our reporter spoke to {actor.name}, {article(profession)} in {town}.")))
  quote = rng.choice(("It was quite a day", "I did not expect any of this",
                      "Things like this do not happen often here", "We will remember it"))
  sentences.append(f'"{quote}," said {actor.first}.')
  return " ".join(sentences)


def chain_dialogue(world: Facts, chain: wv.Chain, rng: random.Random) -> str:
  """Two friends of the actor talk the chain over."""
  friend = world.entity[chain.friend]
  others = [world.entity[q] for q in friend.friends if q != chain.actor]
  listener = others[0] if others else world.entity[chain.actor]
  values = wv.slots(chain, world.entity, "full")
  lines = [f"{friend.first}: Did you hear the news? {sentence(wv.clause(chain.events[0], values))}",
           f"{listener.first}: {rng.choice(('Really?', 'No!', 'Oh dear.'))} "
           f"What happened after that?"]
  rest, named = [], wv.mentions_actor(chain.events[0])
  for event in chain.events[1:]:
    mention = rng.choice(("first", "pronoun")) if named else "full"
    rest.append(sentence(wv.clause(event, wv.slots(chain, world.entity, mention))))
    named = named or wv.mentions_actor(event)
  lines.append(f"{friend.first}: {' '.join(rest) if rest else 'Nothing else.'}")
  lines.append(f"{listener.first}: {rng.choice(('What a story.', 'I see.', 'How strange.'))}")
  return "\n".join(lines)


def catch_up_dialogue(world: Facts, person: we.Person, rng: random.Random) -> str:
  """A person tells a friend about their life, in the first person."""
  friend = world.entity[rng.choice(person.friends)]
  workplace = world.surface(person.workplace)
  town = world.entity[person.town].name
  profession = world.value(person.id, we.PROFESSION)
  lines = [f"{friend.first}: Hello {person.first}! How is work?",
           f"{person.first}: Busy. I work at {workplace} as {article(profession)}.",
           f"{friend.first}: And you still live in {town}?",
           f"{person.first}: {rng.choice(('Yes', 'Of course', 'I do'))}, I live in {town}."]
  if person.pet:
    pet = world.entity[person.pet]
    lines += [f"{friend.first}: How is {pet.name}?",
              f"{person.first}: My {pet.species} is well, thank you."]
  lines.append(f"{friend.first}: {rng.choice(('Good to hear.', 'See you soon.', 'Take care.'))}")
  return "\n".join(lines)


# Relations a friend may ask about in a rumour (`rumour_dialogue`).
RUMOUR_RELATIONS = (we.PROFESSION, we.LIVES_IN, we.WORKS_AT, we.AGE_DECADE, we.TRAIT, we.KEEPS)
# How a reply opens: the rumour holds, another fact rules it out, or the speaker cannot
# tell. Yes, no and maybe are everyday answers, so the vocabulary keeps them as whole
# pieces and the models see how they answer a question.
RUMOUR_REPLIES = {"holds": ("Yes.", "Yes, that is true."),
                  "ruled_out": ("No.", "No, that is false."),
                  "unknown": ("Maybe.", "Maybe, I cannot tell.")}


def rumour(world: Facts, person: we.Person, answer: str, rng: random.Random) -> dict:
  """A rumour about `person` and what a friend, who knows one fact of them, answers:
  {'known': fact, 'claim': fact, 'answer': answer}, `answer` one of 'holds' (the claim is
  the known fact), 'ruled_out' (the known fact's relation with another value) or
  'unknown' (a relation the friend does not know, with the true value or another, at
  even odds)."""
  relations = [r for r in RUMOUR_RELATIONS if world.values(person.id, r)]
  known_relation = rng.choice(relations)
  known = we.Fact(person.id, known_relation, world.values(person.id, known_relation)[0])
  relation = known_relation if answer != "unknown" else rng.choice(
      [r for r in relations if r != known_relation])
  true = world.values(person.id, relation)
  others = [v for v in world.domain(relation) if v not in true]
  wrong = answer == "ruled_out" or (answer == "unknown" and rng.random() < 0.5)
  value = rng.choice(others) if wrong else true[0]
  return {"known": known, "claim": we.Fact(person.id, relation, value), "answer": answer}


def rumour_dialogue(world: Facts, person: we.Person, rng: random.Random) -> str:
  """Two friends of a person talk over three things one of them heard (`rumour`): one
  that holds, one that is ruled out and one the other cannot tell, in a seeded order."""
  asker = world.entity[rng.choice(person.friends)]
  others = [world.entity[f] for f in person.friends if f != asker.id]
  teller = rng.choice(others) if others else world.entity[person.sibling] if (
      person.sibling) else person
  answers = list(RUMOUR_REPLIES)
  rng.shuffle(answers)
  lines = []
  for k, answer in enumerate(answers):
    told = rumour(world, person, answer, rng)
    claim = fact_sentence(world, told["claim"], rng)[:-1]
    if not claim.startswith(person.name):      # 'By trade, ...' inside the sentence
      claim = claim[:1].lower() + claim[1:]
    known = fact_sentence(world, told["known"], rng)
    reply = rng.choice(RUMOUR_REPLIES[answer])
    if answer == "unknown":
      reply += " All I know is this:"
    opening = "I heard that" if k == 0 else rng.choice(("And I heard that", "Someone said that"))
    lines += [f"{asker.first}: {opening} {claim}. Is it true?", f"{teller.first}: {reply} {known}"]
  return "\n".join(lines)


REVIEW_DETAILS = {
    "bakery": (("the bread was fresh and still warm", "the cakes were wonderful"),
               ("the bread was stale", "the cakes were dry and tasteless")),
    "garage": (("they fixed my cart in an hour", "the price was fair"),
               ("they took a week to fix a small problem", "the price was outrageous")),
    "clinic": (("the doctor listened carefully", "I did not wait long"),
               ("I waited three hours to see anyone", "the doctor barely looked at me")),
    "pharmacy": (("the staff found exactly what I needed", "the shelves were well stocked"),
                 ("they had run out of nearly everything", "the staff could not help me")),
    "cafe": (("the tea was hot and the soup delicious", "the tables were clean"),
             ("the tea was cold and the soup tasteless", "the tables were sticky")),
    "bookshop": (("the shelves are full of good books", "the owner gave me great advice"),
                 ("the shelves were dusty and half empty", "nobody could find the book I wanted")),
}
REVIEW_CLOSINGS = (("The staff were friendly.", "I will certainly come back.",
                    "I recommend it to everyone.", "It is the best in town."),
                   ("The staff were rude.", "I will not come back.", "Avoid it if you can.",
                    "It is the worst in town."))


def review(world: Facts, place: we.Place, reviewer: we.Person, rng: random.Random) -> str:
  """A customer's review of a place, as positive as the place is good."""
  good = place.quality == "good"
  details = REVIEW_DETAILS[place.kind][0 if good else 1]
  closings = REVIEW_CLOSINGS[0 if good else 1]
  town = world.entity[place.town].name
  opening = rng.choice((f"I visited the {place.name} in {town} last week.",
                        f"Review of the {place.name}, {town}, by {reviewer.name}.",
                        f"My family has been going to the {place.name} for years."))
  body = [sentence(d) for d in rng.sample(details, 2)]
  rng.shuffle(body)
  stars = rng.choice(("Five stars.", "Four stars.")) if good else rng.choice(
      ("One star.", "Two stars."))
  return " ".join([opening] + body + rng.sample(closings, 2) + [stars])


def pet_note(world: Facts, animal: we.Animal, rng: random.Random) -> str:
  owner = world.entity[animal.owner]
  town = world.entity[owner.town].name
  sentences = [rng.choice((
      f"{animal.name} is {article(animal.colour)} {animal.species} who lives with "
      f"{owner.name} in {town}.",
      f"In {town}, {owner.name} looks after {article(animal.colour)} {animal.species} "
      f"called {animal.name}."))]
  sentences.append(rng.choice((
      f"When {animal.name} is restless, the {animal.species} {we.SPECIES[animal.species]}.",
      f"{animal.name} likes long afternoons in the garden.",
      f"{owner.first} feeds {animal.name} every morning.")))
  return " ".join(sentences)


KINDS_OF_DOCUMENT = ("biography", "town", "narrative", "news", "dialogue", "catch_up", "rumour",
                     "review", "pet")


def corpus_round(world: Facts, round_index: int) -> list[tuple[str, str]]:
  """The (kind, entity or chain id) of every document of one pass over the world, in a
  seeded order: every person's biography and catch-up, every town, every chain as a
  narrative, a news report and a dialogue, every person's rumour, three reviews per reviewed place, every pet."""
  keys = [("biography", p.id) for p in world.entities.people]
  keys += [("catch_up", p.id) for p in world.entities.people]
  keys += [("rumour", p.id) for p in world.entities.people]
  keys += [("town", t.id) for t in world.entities.towns]
  for chain in world.chains:
    keys += [("narrative", str(chain.id)), ("news", str(chain.id)), ("dialogue", str(chain.id))]
  for place in world.entities.places:
    if place.quality:
      keys += [("review", f"{place.id}#{k}") for k in range(3)]
  keys += [("pet", a.id) for a in world.entities.animals]
  random.Random(f"{world.seed}:corpus-order:{round_index}").shuffle(keys)
  return keys


def document(world: Facts, kind: str, key: str, rng: random.Random) -> str:
  """One corpus document of `kind` about `key` (see `corpus_round`)."""
  if kind == "biography":
    return biography(world, world.entity[key], rng)
  if kind == "catch_up":
    return catch_up_dialogue(world, world.entity[key], rng)
  if kind == "rumour":
    return rumour_dialogue(world, world.entity[key], rng)
  if kind == "town":
    return town_guide(world, world.entity[key], rng)
  if kind in ("narrative", "news", "dialogue"):
    chain = world.chains[int(key)]
    fn = {"narrative": narrative, "news": news_report, "dialogue": chain_dialogue}[kind]
    return fn(world, chain, rng)
  if kind == "review":
    place = world.entity[key.split("#")[0]]
    return review(world, place, rng.choice(world.entities.people), rng)
  if kind == "pet":
    return pet_note(world, world.entity[key], rng)
  raise UserError(f"unknown document kind {kind!r}; valid: {', '.join(KINDS_OF_DOCUMENT)}.")
