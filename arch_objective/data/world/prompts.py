"""Prompt templates of the synthetic world's task families, training and held-out.

A `WorldPrompt` is a Python format string over an example's fields (no jinja), with
either a target format string (free-form answers) or answer choices whose gold index
is the example's `label`. It has the interface of `prompts.templates.Prompt`: `.name`,
`.has_choices`, `.render(example) -> Rendered | None`.

  >>> p = WorldPrompt("nli_can_we_infer", "world_nli",
  ...                 'Suppose {premise} Can we infer that "{hypothesis}"? Yes, no, or maybe?',
  ...                 choices=("Yes", "Maybe", "No"))
  >>> p.render({"premise": "Ada is 30.", "hypothesis": "Ada is in her thirties",
  ...           "label": 0}).targets
  'Yes'

The held-out families (`HELDOUT_PROMPTS`) mirror T0-Eval: NLI, coreference, cause and
effect, story endings. Their names and literal wording appear in no training template
and nowhere in the corpus (tests/test_world.py checks).
"""
from __future__ import annotations

import dataclasses
import string
from typing import Any, Mapping, Optional

from arch_objective.errors import UserError
from arch_objective.prompts.templates import Rendered


@dataclasses.dataclass(frozen=True)
class WorldPrompt:
  """One template of one family of world tasks."""
  name: str
  family: str
  inputs: str                              # format string over the example's fields
  target: str = ""                         # format string of a free-form target
  choices: tuple[str, ...] = ()            # format strings; example["label"] is the gold

  def __post_init__(self):
    if bool(self.target) == bool(self.choices):
      raise UserError(f"world prompt {self.family}/{self.name}: give a target or answer "
                      f"choices, not {'both' if self.target else 'neither'}.")

  @property
  def has_choices(self) -> bool:
    return bool(self.choices)

  def fields(self) -> tuple[str, ...]:
    """The example fields the template reads."""
    parts = [self.inputs, self.target, *self.choices]
    names = [f for part in parts for _, f, _, _ in string.Formatter().parse(part) if f]
    if self.choices:
      names.append("label")
    return tuple(dict.fromkeys(names))

  def fixed_text(self) -> tuple[str, ...]:
    """The literal wording of the inputs template, piece by piece (fields removed)."""
    pieces = (literal.strip() for literal, _, _, _ in string.Formatter().parse(self.inputs))
    return tuple(p for p in pieces if p)

  def render(self, example: Mapping[str, Any]) -> Optional[Rendered]:
    """The rendered example; None when its target is empty.

    Raises ValueError naming the prompt and the missing field when the example lacks a
    field the template reads, or when `label` is not an index of the choices.
    """
    try:
      inputs = self.inputs.format_map(example).strip()
      if self.choices:
        choices = tuple(c.format_map(example).strip() for c in self.choices)
        label = example["label"]
      else:
        choices, label = (), None
        targets = self.target.format_map(example).strip()
    except KeyError as e:
      raise UserError(f"world prompt {self.family}/{self.name}: the example has no field "
                      f"{e}; it has {sorted(example)}.") from None
    if self.choices:
      if not isinstance(label, int) or not 0 <= label < len(choices):
        raise UserError(f"world prompt {self.family}/{self.name}: label {label!r} is not an "
                        f"index of its {len(choices)} choices.")
      targets = choices[label]
    if not targets:
      return None
    gold = tuple(i for i, c in enumerate(choices) if c == targets)
    return Rendered(inputs=inputs, targets=targets, choices=choices, gold=gold)


def _family(family: str, *specs: tuple) -> tuple[WorldPrompt, ...]:
  """Prompts from (name, inputs, target) or (name, inputs, choices) tuples."""
  out = []
  for name, inputs, answer in specs:
    if isinstance(answer, tuple):
      out.append(WorldPrompt(name, family, inputs, choices=answer))
    else:
      out.append(WorldPrompt(name, family, inputs, target=answer))
  return tuple(out)


TOPIC_CHOICES = ("weather", "health", "business", "sports", "safety", "animals")

TRAINING_PROMPTS: dict[str, tuple[WorldPrompt, ...]] = {
    "world_attribute_qa": _family(
        "world_attribute_qa",
        ("aqa_plain", "{question}", "{answer}"),
        ("aqa_q_a", "Q: {question}\nA:", "{answer}"),
        ("aqa_quiz", "Here is a quiz question about {subject}.\n{question}", "{answer}"),
        ("aqa_short_answer", "Reply with a word or a name. {question}", "{answer}")),
    "world_paraphrase": _family(
        "world_paraphrase",
        ("para_same_meaning", "Sentence one: {sentence1}\nSentence two: {sentence2}\n"
         "Do these two sentences mean the same thing? Yes or no?", ("No", "Yes")),
        ("para_rewrite", "{sentence1}\nSomeone rewrote this as: {sentence2}\n"
         "Did the rewrite keep the meaning?", ("no", "yes")),
        ("para_is_paraphrase", 'Is "{sentence2}" a paraphrase of "{sentence1}"?',
         ("No", "Yes"))),
    "world_topic": _family(
        "world_topic",
        ("topic_section", "{text}\nWhich section of the local paper does this story belong in: "
         "weather, health, business, sports, safety or animals?", TOPIC_CHOICES),
        ("topic_label", "Article: {text}\nTopic:", tuple(t.title() for t in TOPIC_CHOICES)),
        ("topic_mainly_about", "What is the following report mainly about?\n{text}",
         ("the weather", "health", "business", "sports", "safety", "animals"))),
    "world_sentiment": _family(
        "world_sentiment",
        ("sent_positive_negative", "{review}\nIs this review positive or negative?",
         ("negative", "positive")),
        ("sent_did_they_like", "Here is what a customer wrote about the {place}: {review}\n"
         "Did the customer like it?", ("No", "Yes")),
        ("sent_feeling", "{review}\nThe writer of this review feels", ("unhappy", "happy"))),
    "world_summarization": _family(
        "world_summarization",
        ("sum_one_sentence", "{document}\n\nSum up the story above in one sentence.",
         "{summary}"),
        ("sum_tldr", "{document}\nTL;DR:", "{summary}"),
        ("sum_main_point", "Write the main point of this report.\n\n{document}", "{summary}")),
    "world_extractive_qa": _family(
        "world_extractive_qa",
        ("xqa_context_question", "{context}\n\nQ: {question}\nA:", "{answer}"),
        ("xqa_read_then_answer", "Read the text and reply with words from it.\n\n"
         "Text: {context}\nAsked: {question}", "{answer}"),
        ("xqa_find_in_passage", "{question}\nThe reply is somewhere in this passage: {context}",
         "{answer}")),
}

NLI_LABELS = ("entailment", "neutral", "contradiction")   # the `label` of NLI examples
_YES_MAYBE_NO = ("Yes", "Maybe", "No")

HELDOUT_PROMPTS: dict[str, tuple[WorldPrompt, ...]] = {
    "world_nli": _family(
        "world_nli",
        ("nli_true_false_neither", "{premise}\nQuestion: {hypothesis}. True, False, or Neither?",
         ("True", "Neither", "False")),
        ("nli_can_we_infer", 'Suppose {premise} Can we infer that "{hypothesis}"? '
         "Yes, no, or maybe?", _YES_MAYBE_NO),
        ("nli_must_be_true", 'Given that {premise} Therefore, it must be true that '
         '"{hypothesis}"? Yes, no, or maybe?', _YES_MAYBE_NO),
        ("nli_based_on_passage", '{premise} Based on the previous passage, is it true that '
         '"{hypothesis}"? Yes, no, or maybe?', _YES_MAYBE_NO),
        ("nli_guaranteed", 'Given {premise} Is it guaranteed true that "{hypothesis}"? '
         "Yes, no, or maybe?", _YES_MAYBE_NO)),
    "world_coreference": _family(
        "world_coreference",
        ("coref_who_is", '{text}\nIn the passage above, who is "{pronoun}": {option1} or '
         "{option2}?", ("{option1}", "{option2}")),
        ("coref_refers_to", '{text} Here, the pronoun "{pronoun}" refers to',
         ("{option1}", "{option2}")),
        ("coref_blank", "{masked}\nWho should fill the blank, {option1} or {option2}?",
         ("{option1}", "{option2}")),
        ("coref_stands_for", '{text}\nWhom does "{pronoun}" stand for in that sentence?',
         ("{option1}", "{option2}"))),
    "world_cause_effect": _family(
        "world_cause_effect",
        ("ce_connective", "{premise_clause} {connective}",
         ("{choice1_clause}", "{choice2_clause}")),
        ("ce_more_plausible", "{premise}\nWhat is the more plausible {question}?\n"
         "- {choice1}\n- {choice2}", ("{choice1}", "{choice2}")),
        ("ce_pick_option", "Pick the more likely {question} of this situation. Situation: "
         "{premise} Option one: {choice1} Option two: {choice2}", ("{choice1}", "{choice2}")),
        ("ce_which_sentence", '{premise} Which sentence gives the {question}: "{choice1}" or '
         '"{choice2}"?', ("{choice1}", "{choice2}"))),
    "world_story_ending": _family(
        "world_story_ending",
        ("story_best_ending", "{story}\nWhich of these is the best ending for the story?\n"
         "- {ending1}\n- {ending2}", ("{ending1}", "{ending2}")),
        ("story_what_happens_next", "{story} What happens next?", ("{ending1}", "{ending2}")),
        ("story_choose_ending", "Read the beginning of a story and choose how it ends.\n"
         "Beginning: {story}\nEnding A: {ending1}\nEnding B: {ending2}",
         ("{ending1}", "{ending2}")),
        ("story_novel", 'I am writing a story. So far: {story}\nThe ending will be either '
         '"{ending1}" or "{ending2}". Which one fits?', ("{ending1}", "{ending2}"))),
}
# A uniform random guess's accuracy per held-out family.
HELDOUT_RANDOM = {"world_nli": 1 / 3, "world_coreference": 0.5, "world_cause_effect": 0.5,
                  "world_story_ending": 0.5}
