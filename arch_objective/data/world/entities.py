"""The entities of the synthetic world (people, towns, places, animals, things) and the
facts about them, base and derived.

A fact is a triple `Fact(subject, relation, value)`: the subject is an entity id
(`person:3`, `town:0`, `place:12`, `animal:5`, `thing:3`); the value is an entity id or
a literal (`"baker"`, `"34"`, `"the north"`). `closure` derives the facts that follow from
others by the world's rules, the same rules for the whole world and for the few facts a
passage states:

  works_at(P, W) & kind(W, k)          -> profession(P, PROFESSION_OF[k])
  works_at(P, W) & located_in(W, T)    -> works_in(P, T)
  lives_in(P, T) & region(T, R)        -> home_region(P, R)
  age(P, n)                            -> age_decade(P, DECADE(n))
  pet(P, A) & species(A, S)            -> keeps(P, S)
  friend(P, Q) -> friend(Q, P)         sibling(P, Q) -> sibling(Q, P)

Generation is deterministic given a `random.Random`; nothing iterates over a set.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Iterable, NamedTuple, Optional

from arch_objective.errors import UserError

FEMALE_NAMES = (
    "Ada", "Alma", "Anna", "Beth", "Clara", "Cora", "Dina", "Edith", "Elsa", "Emma", "Fay",
    "Flora", "Greta", "Hanna", "Hazel", "Ida", "Iris", "Ivy", "Jane", "June", "Kate", "Lena",
    "Lily", "Lucy", "Mabel", "Mara", "Maud", "Mia", "Nell", "Nina", "Nora", "Olive", "Pearl",
    "Peggy", "Rosa", "Ruby", "Ruth", "Sara", "Stella", "Tess", "Tilda", "Vera", "Viola",
    "Wendy", "Zoe")
MALE_NAMES = (
    "Abel", "Alan", "Arlo", "Ben", "Bruno", "Carl", "Cyril", "Dan", "Dennis", "Eli", "Emil",
    "Felix", "Frank", "Gus", "Hal", "Hugo", "Ivan", "Jack", "Jonah", "Karl", "Leo", "Luke",
    "Max", "Milo", "Ned", "Nils", "Oscar", "Otto", "Owen", "Paul", "Ralph", "Rex", "Rufus",
    "Sam", "Seth", "Silas", "Theo", "Tom", "Victor", "Walt", "Will", "Yuri", "Zack")
SURNAMES = (
    "Abbot", "Ashby", "Baker", "Barlow", "Bell", "Birch", "Blake", "Bramble", "Brook",
    "Carver", "Cobb", "Cooper", "Crane", "Dale", "Dawes", "Drake", "Ellis", "Farrow", "Fenn",
    "Finch", "Fisher", "Fletcher", "Ford", "Frost", "Gale", "Garner", "Glover", "Gray",
    "Hale", "Harper", "Hayes", "Heath", "Holt", "Hume", "Irwin", "Jarvis", "Keane", "Kemp",
    "Lane", "Lark", "Lowe", "Lynch", "Marsh", "Mason", "Moss", "Nash", "Noble", "Oakes",
    "Orr", "Page", "Parr", "Pike", "Pratt", "Quill", "Reed", "Rhodes", "Rowe", "Sage",
    "Salt", "Shaw", "Slade", "Snow", "Stone", "Swift", "Thorne", "Toft", "Vane", "Wade",
    "Ward", "Webb", "West", "Wilde", "Wood", "Wren", "Yates", "York")
TOWN_HEADS = ("Ash", "Brook", "Elm", "Fern", "Glen", "Hollow", "Iron", "Kings", "Lark", "Marsh",
              "Mill", "North", "Oak", "Pine", "Red", "Silver", "Stone", "Thorn", "West", "Wolf")
TOWN_TAILS = ("bury", "dale", "field", "ford", "ham", "haven", "mouth", "stead", "ton", "wick")
REGIONS = ("the north", "the south", "the east", "the west")
PRODUCTS = ("cheese", "wool", "apples", "glass", "boats", "pottery", "honey", "cider", "lace",
            "salt", "timber", "clocks")
TOWN_SIZES = ("village", "town", "city")
TRAITS = ("patient", "cheerful", "stubborn", "shy", "generous", "curious", "careful", "brave",
          "honest", "forgetful", "clever", "quiet")
COLOURS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
ANIMAL_COLOURS = ("black", "white", "grey", "brown", "golden", "spotted")
PET_NAMES = ("Biscuit", "Bramble", "Buttons", "Clover", "Comet", "Dot", "Fudge", "Ginger",
             "Hopper", "Juniper", "Lucky", "Maple", "Misty", "Muffin", "Nutmeg", "Pebble",
             "Pepper", "Pip", "Pickle", "Pudding", "Rusty", "Sage", "Scout", "Shadow",
             "Smudge", "Socks", "Sooty", "Sparky", "Sunny", "Toffee", "Tumble", "Whiskers")
# species -> what it does when restless (past tense).
SPECIES = {"dog": "barked", "cat": "meowed", "horse": "neighed", "goat": "bleated",
           "parrot": "squawked", "rabbit": "thumped its feet", "donkey": "brayed",
           "goose": "honked"}
# material noun -> adjective.
MATERIALS = {"wood": "wooden", "iron": "iron", "copper": "copper", "clay": "clay",
             "glass": "glass", "brass": "brass", "willow": "willow", "leather": "leather"}
# thing kind -> the materials it can be made of.
THINGS = {"bicycle": ("iron", "copper"), "boat": ("wood",), "guitar": ("wood",),
          "lamp": ("brass", "glass", "copper"), "table": ("wood", "iron"),
          "violin": ("wood",), "clock": ("brass", "wood"), "chair": ("wood", "willow", "iron"),
          "teapot": ("clay", "copper", "glass"), "drum": ("wood", "leather"),
          "basket": ("willow",), "vase": ("clay", "glass")}


class Kind(NamedTuple):
  """A kind of workplace: who works there, the word its names end with, and whether
  customers review it."""
  profession: str
  suffix: str
  reviewed: bool


KINDS = {
    "bakery": Kind("baker", "Bakery", True),
    "school": Kind("teacher", "School", False),
    "library": Kind("librarian", "Library", False),
    "garage": Kind("mechanic", "Garage", True),
    "farm": Kind("farmer", "Farm", False),
    "clinic": Kind("doctor", "Clinic", True),
    "pharmacy": Kind("pharmacist", "Pharmacy", True),
    "cafe": Kind("waiter", "Cafe", True),
    "bookshop": Kind("bookseller", "Bookshop", True),
    "workshop": Kind("carpenter", "Workshop", False),
    "post office": Kind("postal clerk", "Post Office", False),
    "fire station": Kind("firefighter", "Fire Station", False),
}
PROFESSION_OF = {kind: k.profession for kind, k in KINDS.items()}
PROFESSIONS = tuple(PROFESSION_OF.values())
PLACE_ADJECTIVES = ("Golden", "Blue", "Old", "Green", "Red", "Silver", "Little", "Bright",
                    "Quiet", "Happy", "Stone", "Copper", "Royal", "Sunny", "Windy", "Lucky")
PLACE_NOUNS = ("Wheat", "Door", "Mill", "Lantern", "Oak", "Bridge", "Hill", "River", "Star",
               "Crown", "Bell", "Fox", "Owl", "Rose", "Anchor", "Meadow", "Willow", "Kettle")

# Relations.
PROFESSION, WORKS_AT, LIVES_IN, AGE, TRAIT, PET, OWNS, FRIEND, SIBLING, GENDER = (
    "profession", "works_at", "lives_in", "age", "trait", "pet", "owns", "friend", "sibling",
    "gender")
WORKS_IN, HOME_REGION, AGE_DECADE, KEEPS = "works_in", "home_region", "age_decade", "keeps"
REGION, KNOWN_FOR, SIZE = "region", "known_for", "size"
KIND, LOCATED_IN, QUALITY = "kind", "located_in", "quality"
SPECIES_OF, COLOUR, OWNER, MATERIAL = "species", "colour", "owner", "material"
DECADES = {1: "teens", 2: "twenties", 3: "thirties", 4: "forties", 5: "fifties",
           6: "sixties", 7: "seventies"}


class Fact(NamedTuple):
  subject: str
  relation: str
  value: str


def decade(age: int) -> str:
  """The decade word of an age: 34 -> 'thirties'."""
  return DECADES[age // 10]


@dataclasses.dataclass(frozen=True)
class Person:
  id: str
  first: str
  last: str
  gender: str          # 'female' | 'male'
  age: int
  town: str            # where they live
  workplace: str
  trait: str
  thing: str
  pet: Optional[str]
  friends: tuple[str, ...]
  sibling: Optional[str]

  @property
  def name(self) -> str:
    return f"{self.first} {self.last}"

  @property
  def pronouns(self) -> tuple[str, str, str]:
    """(subject, object, possessive): ('she', 'her', 'her') or ('he', 'him', 'his')."""
    return ("she", "her", "her") if self.gender == "female" else ("he", "him", "his")


@dataclasses.dataclass(frozen=True)
class Town:
  id: str
  name: str
  region: str
  known_for: str
  size: str


@dataclasses.dataclass(frozen=True)
class Place:
  id: str
  name: str            # without the article: 'Golden Wheat Bakery'
  kind: str
  town: str
  quality: Optional[str]  # 'good' | 'poor' for reviewed kinds, else None


@dataclasses.dataclass(frozen=True)
class Animal:
  id: str
  name: str
  species: str
  colour: str
  owner: str


@dataclasses.dataclass(frozen=True)
class Thing:
  id: str
  kind: str
  colour: str
  material: str
  owner: str


@dataclasses.dataclass(frozen=True)
class Entities:
  people: tuple[Person, ...]
  towns: tuple[Town, ...]
  places: tuple[Place, ...]
  animals: tuple[Animal, ...]
  things: tuple[Thing, ...]


def _town_names(rng: random.Random, n: int) -> list[str]:
  names = [h + t for h in TOWN_HEADS for t in TOWN_TAILS]
  if n > len(names):
    raise UserError(f"num_towns={n} exceeds the {len(names)} town names the world can make.")
  return rng.sample(names, n)


def build_entities(rng: random.Random, num_people: int, num_towns: int,
                   places_per_town: int) -> Entities:
  """People, towns and places, with the people's animals and things.

  Every town has a bakery and a school; the other places are kinds drawn at random,
  distinct within a town. About one person in five has a sibling (same surname), six in
  ten keep a pet, and everyone has one to three friends and one thing.
  """
  if num_towns < 1 or num_people < 4:
    raise UserError(f"a world needs num_towns >= 1 and num_people >= 4, found "
                    f"num_towns={num_towns}, num_people={num_people}.")
  if not 2 <= places_per_town <= len(KINDS):
    raise UserError(f"places_per_town must be in [2, {len(KINDS)}], found {places_per_town}.")
  max_people = (len(FEMALE_NAMES) + len(MALE_NAMES)) * len(SURNAMES) // 2
  if num_people > max_people:
    raise UserError(f"num_people={num_people} exceeds the {max_people} distinct names the "
                    f"world can make.")
  towns = []
  for i, name in enumerate(_town_names(rng, num_towns)):
    towns.append(Town(f"town:{i}", name, rng.choice(REGIONS), rng.choice(PRODUCTS),
                      rng.choice(TOWN_SIZES)))
  places, used_names = [], set()
  other_kinds = [k for k in KINDS if k not in ("bakery", "school")]
  for town in towns:
    kinds = ["bakery", "school"] + rng.sample(other_kinds, places_per_town - 2)
    for kind in kinds:
      while True:
        name = f"{rng.choice(PLACE_ADJECTIVES)} {rng.choice(PLACE_NOUNS)} {KINDS[kind].suffix}"
        if name not in used_names:
          break
      used_names.add(name)
      quality = rng.choice(("good", "poor")) if KINDS[kind].reviewed else None
      places.append(Place(f"place:{len(places)}", name, kind, town.id, quality))
  places_in = {t.id: [p for p in places if p.town == t.id] for t in towns}

  # Names: sibling pairs share a surname.
  names: list[tuple[str, str, str]] = []   # (first, last, gender)
  sibling_of: dict[int, int] = {}
  used = set()

  def new_name(last: Optional[str] = None, avoid_first: str = "") -> tuple[str, str, str]:
    while True:
      gender = rng.choice(("female", "male"))
      first = rng.choice(FEMALE_NAMES if gender == "female" else MALE_NAMES)
      surname = last or rng.choice(SURNAMES)
      if (first, surname) not in used and first != avoid_first:
        used.add((first, surname))
        return first, surname, gender

  while len(names) < num_people:
    names.append(new_name())
    if len(names) < num_people and rng.random() < 0.1:
      names.append(new_name(last=names[-1][1], avoid_first=names[-1][0]))
      sibling_of[len(names) - 1], sibling_of[len(names) - 2] = len(names) - 2, len(names) - 1

  homes = [rng.choice(towns).id for _ in range(num_people)]
  for i, j in sibling_of.items():   # siblings often share a home town
    if i > j and rng.random() < 0.5:
      homes[i] = homes[j]
  friends: list[list[int]] = [[] for _ in range(num_people)]
  for i in range(num_people):
    wanted = rng.randint(1, 3)
    for _ in range(50):   # tries: a small world may not have `wanted` people to befriend
      if len(friends[i]) >= wanted:
        break
      j = rng.randrange(num_people)
      if j != i and j not in friends[i] and sibling_of.get(i) != j:
        friends[i].append(j)
        friends[j].append(i)
    if not friends[i]:    # everyone has a friend (num_people >= 4 leaves a non-sibling)
      j = next(j for j in range(num_people) if j != i and sibling_of.get(i) != j)
      friends[i].append(j)
      friends[j].append(i)

  people, animals, things = [], [], []
  for i, (first, last, gender) in enumerate(names):
    pid = f"person:{i}"
    home = homes[i]
    work_town = home if rng.random() < 0.8 else rng.choice(towns).id
    workplace = rng.choice(places_in[work_town]).id
    pet = None
    if rng.random() < 0.6:
      pet = f"animal:{len(animals)}"
      animals.append(Animal(pet, rng.choice(PET_NAMES), rng.choice(list(SPECIES)),
                            rng.choice(ANIMAL_COLOURS), pid))
    kind = rng.choice(list(THINGS))
    thing = Thing(f"thing:{len(things)}", kind, rng.choice(COLOURS), rng.choice(THINGS[kind]),
                  pid)
    things.append(thing)
    sibling = f"person:{sibling_of[i]}" if i in sibling_of else None
    people.append(Person(pid, first, last, gender, rng.randint(19, 78), home, workplace,
                         rng.choice(TRAITS), thing.id, pet,
                         tuple(f"person:{j}" for j in sorted(friends[i])), sibling))
  return Entities(tuple(people), tuple(towns), tuple(places), tuple(animals), tuple(things))


def base_facts(entities: Entities) -> list[Fact]:
  """Every fact the generator decided, in a fixed order."""
  facts = []
  for t in entities.towns:
    facts += [Fact(t.id, REGION, t.region), Fact(t.id, KNOWN_FOR, t.known_for),
              Fact(t.id, SIZE, t.size)]
  for p in entities.places:
    facts += [Fact(p.id, KIND, p.kind), Fact(p.id, LOCATED_IN, p.town)]
    if p.quality:
      facts.append(Fact(p.id, QUALITY, p.quality))
  for a in entities.animals:
    facts += [Fact(a.id, SPECIES_OF, a.species), Fact(a.id, COLOUR, a.colour),
              Fact(a.id, OWNER, a.owner)]
  for th in entities.things:
    facts += [Fact(th.id, KIND, th.kind), Fact(th.id, COLOUR, th.colour),
              Fact(th.id, MATERIAL, th.material), Fact(th.id, OWNER, th.owner)]
  for p in entities.people:
    facts += [Fact(p.id, GENDER, p.gender), Fact(p.id, AGE, str(p.age)),
              Fact(p.id, LIVES_IN, p.town), Fact(p.id, WORKS_AT, p.workplace),
              Fact(p.id, TRAIT, p.trait), Fact(p.id, OWNS, p.thing)]
    if p.pet:
      facts.append(Fact(p.id, PET, p.pet))
    if p.sibling:
      facts.append(Fact(p.id, SIBLING, p.sibling))
    facts += [Fact(p.id, FRIEND, q) for q in p.friends]
  return facts


def closure(facts: Iterable[Fact]) -> list[Fact]:
  """`facts` plus everything the world's rules derive from them (module docstring),
  in a fixed order: the given facts first, then the derived ones."""
  facts = list(dict.fromkeys(facts))
  by_key: dict[tuple[str, str], list[str]] = {}
  for f in facts:
    by_key.setdefault((f.subject, f.relation), []).append(f.value)

  def values(subject: str, relation: str) -> list[str]:
    return by_key.get((subject, relation), [])

  derived = []
  for f in facts:
    s, r, v = f
    if r == WORKS_AT:
      derived += [Fact(s, PROFESSION, PROFESSION_OF[k]) for k in values(v, KIND)]
      derived += [Fact(s, WORKS_IN, t) for t in values(v, LOCATED_IN)]
    elif r == LIVES_IN:
      derived += [Fact(s, HOME_REGION, g) for g in values(v, REGION)]
    elif r == AGE:
      derived.append(Fact(s, AGE_DECADE, decade(int(v))))
    elif r == PET:
      derived += [Fact(s, KEEPS, sp) for sp in values(v, SPECIES_OF)]
    elif r in (FRIEND, SIBLING):
      derived.append(Fact(v, r, s))
  return list(dict.fromkeys(facts + derived))
