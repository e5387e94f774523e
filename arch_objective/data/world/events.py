"""Events of the synthetic world and the causal rules between them.

`EVENTS` is the one table of event types: each has a topic, an English clause with
slots, the clause that contradicts it (for wrong story endings), and the event types it
causes directly (`effects`). The rules form a forest rooted at `ROOTS`; e.g.

  rain -> streets_wet -> slipped -> saw_doctor -> stayed_home
  storm -> power_cut -> ovens_stopped -> no_bread
  fire -> smoke -> alarm -> evacuated

The world's history is a list of `Chain`s: a root event and a walk down its effects,
all happening to one actor (a person), in the actor's home town, on one day. Slots:
{P} the actor (name or pronoun), {Pposs} the actor's possessive, {poss} the actor's
possessive pronoun, {T} home town, {W} the actor's workplace, {B} the bakery of {T},
{S} a shop of {T} (`SHOP_KINDS`), {F} a friend of the actor, {A} the actor's pet ({species},
{sound}), {O} the actor's thing.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Mapping, NamedTuple

from arch_objective.errors import UserError
from arch_objective.data.world import entities as we


class EventType(NamedTuple):
  topic: str
  text: str
  negation: str
  effects: tuple[str, ...]


TOPICS = ("weather", "health", "business", "sports", "safety", "animals")

EVENTS: dict[str, EventType] = {
    # weather
    "rain": EventType("weather", "heavy rain fell on {T}", "",
                      ("streets_wet", "got_soaked")),
    "streets_wet": EventType("weather", "the streets of {T} were wet and slippery",
                             "the streets of {T} stayed completely dry", ("slipped",)),
    "got_soaked": EventType("weather",
                            "{P} walked home in the rain without an umbrella and got soaked",
                            "{P} reached home perfectly dry", ("caught_cold",)),
    "storm": EventType("weather", "a strong storm hit {T}", "",
                       ("power_cut", "tree_fell")),
    "power_cut": EventType("weather", "the power went out across {T}",
                           "every light in {T} kept shining", ("ovens_stopped",)),
    "tree_fell": EventType("weather", "a tree fell across the main road of {T}",
                           "every tree in {T} stood firm", ("road_blocked",)),
    "road_blocked": EventType("weather", "the road out of {T} was blocked",
                              "traffic moved freely on the road out of {T}",
                              ("arrived_late",)),
    "drought": EventType("weather", "no rain fell on {T} for two months", "",
                         ("crops_failed",)),
    "snow": EventType("weather", "deep snow covered {T}", "", ("school_closed",)),
    "school_closed": EventType("weather", "the school in {T} closed for the day",
                               "the school in {T} stayed open as usual",
                               ("children_played",)),
    "children_played": EventType("weather",
                                 "the children of {T} played in the snow all afternoon",
                                 "the children of {T} sat in their classrooms all afternoon",
                                 ()),
    # health
    "fell_ill": EventType("health", "{P} fell ill with a fever", "", ("saw_doctor",)),
    "ate_old_fish": EventType("health", "{P} ate some old fish", "", ("stomach_ache",)),
    "stomach_ache": EventType("health", "{P} had a terrible stomach ache",
                              "{P} felt perfectly fine after dinner", ("saw_doctor",)),
    "caught_cold": EventType("health", "{P} caught a bad cold", "{P} felt healthier than ever",
                             ("saw_doctor",)),
    "slipped": EventType("health", "{P} slipped on a wet street and hurt {poss} ankle",
                         "{P} walked home without a single stumble", ("saw_doctor",)),
    "saw_doctor": EventType("health", "{P} went to see a doctor",
                            "{P} felt no need to see a doctor", ("stayed_home",)),
    "stayed_home": EventType("health", "{P} stayed home from work for a week",
                             "{P} went to work the next morning as usual", ()),
    # business
    "ovens_stopped": EventType("business", "the ovens at {B} stopped working",
                               "the ovens at {B} worked all day", ("no_bread",)),
    "no_bread": EventType("business", "nobody could buy bread at {B}",
                          "everyone bought fresh bread at {B}", ()),
    "arrived_late": EventType("business", "{P} arrived late at {W}", "{P} arrived early at {W}",
                              ()),
    "crops_failed": EventType("business", "the crops around {T} failed",
                              "the farms around {T} had a record harvest", ("prices_rose",)),
    "prices_rose": EventType("business", "the price of bread in {T} went up",
                             "the price of bread in {T} fell", ()),
    "lost_job": EventType("business", "{P} lost {poss} job at {W}", "", ("short_of_money",)),
    "short_of_money": EventType("business", "{P} was short of money",
                                "{P} had more money than ever", ("sold_thing",)),
    "sold_thing": EventType("business", "{P} sold {poss} {O}", "{P} kept {poss} {O}", ()),
    "promoted": EventType("business", "{P} was promoted at {W}", "", ("pay_rise",)),
    "pay_rise": EventType("business", "{P} earned more money",
                          "{P} earned less money than before", ("bought_gift",)),
    "bought_gift": EventType("business", "{P} bought a present for {F}",
                             "{P} forgot all about {F}", ("friend_happy",)),
    "friend_happy": EventType("business", "{F} was delighted", "{F} was bitterly disappointed",
                              ()),
    "sale": EventType("business", "{S} held a big sale", "", ("crowd",)),
    "crowd": EventType("business", "a crowd of customers filled {S}",
                       "not a single customer came to {S}", ("sold_out",)),
    "sold_out": EventType("business", "{S} sold everything by noon", "{S} sold nothing all day",
                          ()),
    # sports
    "trained": EventType("sports", "{P} trained hard every morning", "", ("got_stronger",)),
    "got_stronger": EventType("sports", "{P} became much stronger", "{P} grew weaker",
                              ("won_race",)),
    "won_race": EventType("sports", "{P} won the race in {T}",
                          "{P} finished last in the race in {T}", ("got_medal",)),
    "got_medal": EventType("sports", "{P} received a gold medal",
                           "{P} went home without a medal", ()),
    # safety
    "fire": EventType("safety", "a fire broke out at {W}", "", ("smoke",)),
    "smoke": EventType("safety", "thick smoke filled {W}", "the air inside {W} stayed clear",
                       ("alarm",)),
    "alarm": EventType("safety", "the fire alarm at {W} rang",
                       "the fire alarm at {W} stayed silent", ("evacuated",)),
    "evacuated": EventType("safety", "everyone left {W} quickly",
                           "everyone stayed inside {W}", ()),
    "candle": EventType("safety", "{P} left a candle burning in the kitchen", "",
                        ("kitchen_fire",)),
    "kitchen_fire": EventType("safety", "a fire started in {Pposs} kitchen",
                              "{Pposs} kitchen stayed safe", ("home_smoke",)),
    "home_smoke": EventType("safety", "smoke filled {Pposs} house",
                            "the air in {Pposs} house stayed clear", ("home_alarm",)),
    "home_alarm": EventType("safety", "the smoke alarm in {Pposs} house rang",
                            "the smoke alarm in {Pposs} house stayed silent",
                            ("neighbours_came",)),
    "neighbours_came": EventType("safety", "{Pposs} neighbours rushed over to help",
                                 "{Pposs} neighbours noticed nothing", ()),
    # animals
    "gate_open": EventType("animals", "{P} left the garden gate open", "", ("pet_ran_away",)),
    "pet_ran_away": EventType("animals", "{A}, {Pposs} {species}, ran away",
                              "{A}, {Pposs} {species}, stayed safely in the garden",
                              ("searched",)),
    "searched": EventType("animals", "{P} searched the streets of {T} for {A}",
                          "{P} never looked for {A}", ("found_pet",)),
    "found_pet": EventType("animals", "{P} found {A} hiding in a barn near {T}",
                           "{A} was never seen again", ()),
    "forgot_feed": EventType("animals", "{P} forgot to feed {A}", "", ("pet_noisy",)),
    "pet_noisy": EventType("animals", "{A} {sound} all night", "{A} slept quietly all night",
                           ("neighbours_awake",)),
    "neighbours_awake": EventType("animals", "{Pposs} neighbours could not sleep",
                                  "{Pposs} neighbours slept soundly", ()),
}
ROOTS = ("rain", "storm", "drought", "snow", "fell_ill", "ate_old_fish", "lost_job", "promoted",
         "sale", "trained", "fire", "candle", "gate_open", "forgot_feed")
SHOP_KINDS = ("bakery", "pharmacy", "cafe", "bookshop")   # what {S} can be; every town has a bakery
PET_EVENTS = frozenset({"gate_open", "pet_ran_away", "searched", "found_pet", "forgot_feed",
                        "pet_noisy", "neighbours_awake"})
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


def _check_table() -> None:
  for name, event in EVENTS.items():
    unknown = [e for e in event.effects if e not in EVENTS]
    if unknown or event.topic not in TOPICS:
      raise UserError(f"event {name!r}: unknown effects {unknown} or topic {event.topic!r}.")
    if name not in ROOTS and not event.negation:
      raise UserError(f"event {name!r} is an effect and needs a negation.")


_check_table()


@functools.lru_cache(maxsize=None)
def descendants(event: str) -> frozenset[str]:
  """Every event type `event` leads to, directly or not."""
  out: set[str] = set()
  for e in EVENTS[event].effects:
    out |= {e} | descendants(e)
  return frozenset(out)


def linked(a: str, b: str) -> bool:
  """Whether one of two event types leads to the other (or they are the same)."""
  return a == b or b in descendants(a) or a in descendants(b)


@dataclasses.dataclass(frozen=True)
class Chain:
  """A causal chain that happened: `events[i]` caused `events[i + 1]`."""
  id: int
  events: tuple[str, ...]
  actor: str                   # person id
  town: str                    # the actor's home town
  workplace: str               # the actor's workplace
  bakery: str                  # the bakery of the town
  shop: str                    # a shop of the town (`SHOP_KINDS`)
  friend: str                  # person id
  pet: str | None              # animal id
  thing: str
  when: str                    # 'Tuesday in March'

  @property
  def topic(self) -> str:
    return EVENTS[self.events[0]].topic


def build_chains(rng: random.Random, entities: we.Entities, num_chains: int,
                 max_length: int = 5) -> tuple[Chain, ...]:
  """`num_chains` chains: a random root, a random actor able to live it, then a walk
  down random effects until an event has none or `max_length` is reached."""
  with_pet = [p for p in entities.people if p.pet]
  roots = [r for r in ROOTS if with_pet or r not in PET_EVENTS]
  shops = {}
  for place in entities.places:
    if place.kind in SHOP_KINDS:
      shops.setdefault(place.town, []).append(place.id)
  bakeries = {p.town: p.id for p in entities.places if p.kind == "bakery"}
  chains = []
  for i in range(num_chains):
    root = rng.choice(roots)
    actor = rng.choice(with_pet if root in PET_EVENTS else entities.people)
    events = [root]
    while EVENTS[events[-1]].effects and len(events) < max_length:
      events.append(rng.choice(EVENTS[events[-1]].effects))
    chains.append(Chain(
        i, tuple(events), actor.id, actor.town, actor.workplace, bakeries[actor.town],
        rng.choice(shops[actor.town]), rng.choice(actor.friends), actor.pet, actor.thing,
        f"{rng.choice(WEEKDAYS)} in {rng.choice(MONTHS)}"))
  return tuple(chains)


MENTIONS = ("full", "first", "pronoun")


def slots(chain: Chain, entity: Mapping[str, object], mention: str = "full") -> dict[str, str]:
  """The values of the event slots for `chain`, naming the actor by `mention`."""
  if mention not in MENTIONS:
    raise UserError(f"unknown mention {mention!r}; valid: {', '.join(MENTIONS)}.")
  actor = entity[chain.actor]
  subject, _, poss = actor.pronouns
  name = {"full": actor.name, "first": actor.first, "pronoun": subject}[mention]
  out = {"P": name, "Pposs": poss if mention == "pronoun" else f"{name}'s", "poss": poss,
         "T": entity[chain.town].name, "W": "the " + entity[chain.workplace].name,
         "B": "the " + entity[chain.bakery].name, "S": "the " + entity[chain.shop].name,
         "F": entity[chain.friend].name, "O": entity[chain.thing].kind}
  if chain.pet:
    pet = entity[chain.pet]
    out.update(A=pet.name, species=pet.species, sound=we.SPECIES[pet.species])
  return out


def clause(event: str, values: Mapping[str, str], negated: bool = False) -> str:
  """The event (or its negation) as a clause: 'heavy rain fell on Millford'."""
  text = EVENTS[event].negation if negated else EVENTS[event].text
  if not text:
    raise UserError(f"event {event!r} has no negation (roots have none).")
  return text.format(**values)


def mentions_actor(event: str) -> bool:
  """Whether the event's clause names or refers to the actor."""
  text = EVENTS[event].text
  return any(slot in text for slot in ("{P}", "{Pposs}", "{poss}"))


def fits(event: str, chain: Chain) -> bool:
  """Whether the chain's slots can fill the event (pet events need a pet)."""
  return chain.pet is not None or event not in PET_EVENTS
