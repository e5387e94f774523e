"""The T0 held-out evaluation suite (T0-Eval) and the T0 training mixture (`d4_train`).

T0-Eval (spec §4.1): 11 datasets, 116 prompts, validation splits; every answer choice
is scored; accuracy per prompt, the median over prompts per dataset, the mean over the
11 datasets. Random baseline 41.67.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

_NLI15 = ("GPT_3_style", "MNLI_crowdsource", "always_sometimes_never",
          "based_on_the_previous_passage", "can_we_infer", "claim_true_false_inconclusive",
          "consider_always_sometimes_never", "does_it_follow_that", "does_this_imply",
          "guaranteed_true", "guaranteed_possible_impossible", "justified_in_saying",
          "must_be_true", "should_assume", "take_the_following_as_truth")


@dataclasses.dataclass(frozen=True)
class EvalDataset:
  """A held-out dataset: its promptsource templates, where its data lives, its prompts."""
  name: str                      # the name results use, e.g. 'super_glue/rte', 'anli/r1'
  dataset: str                   # promptsource dataset of the templates
  subset: Optional[str]          # promptsource subset of the templates
  prompts: tuple[str, ...]       # sanitised template names
  random: float                  # accuracy of a uniform random guess
  split: str = "validation"

  @property
  def data_key(self) -> str:     # the key of `datasets.load_examples` / mapping files
    return self.name


T0_EVAL: tuple[EvalDataset, ...] = (
    EvalDataset("super_glue/copa", "super_glue", "copa", (
        "C1_or_C2_premise_so_because_", "best_option", "cause_effect", "choose", "exercise",
        "i_am_hesitating", "more_likely", "plausible_alternatives", "_As_a_result_C1_or_C2_",
        "_What_could_happen_next_C1_or_C2_", "_which_may_be_caused_by", "_why_C1_or_C2"), 0.5),
    EvalDataset("hellaswag", "hellaswag", None, (
        "Predict_ending_with_hint", "Randomized_prompts_template", "complete_first_then",
        "if_begins_how_continues"), 0.25),
    EvalDataset("story_cloze/2016", "story_cloze", "2016", (
        "Answer_Given_options", "Choose_Story_Ending", "Movie_What_Happens_Next",
        "Novel_Correct_Ending", "Story_Continuation_and_Options"), 0.5),
    EvalDataset("anli/r1", "anli", None, _NLI15, 1 / 3),
    EvalDataset("anli/r2", "anli", None, _NLI15, 1 / 3),
    EvalDataset("anli/r3", "anli", None, _NLI15, 1 / 3),
    EvalDataset("super_glue/cb", "super_glue", "cb", _NLI15, 1 / 3),
    EvalDataset("super_glue/rte", "super_glue", "rte", (
        "GPT_3_style", "MNLI_crowdsource", "based_on_the_previous_passage", "can_we_infer",
        "does_it_follow_that", "does_this_imply", "guaranteed_true", "justified_in_saying",
        "must_be_true", "should_assume"), 0.5),
    EvalDataset("super_glue/wsc.fixed", "super_glue", "wsc.fixed", (
        "GPT_3_Style", "I_think_they_mean", "Who_or_what_is_are", "by_p_they_mean",
        "does_p_stand_for", "does_the_pronoun_refer_to", "in_other_words", "p_is_are_r",
        "replaced_with", "the_pronoun_refers_to"), 0.5),
    EvalDataset("winogrande/winogrande_xl", "winogrande", "winogrande_xl", (
        "Replace", "does_underscore_refer_to", "fill_in_the_blank", "stand_for",
        "underscore_refer_to"), 0.5),
    EvalDataset("super_glue/wic", "super_glue", "wic", (
        "GPT_3_prompt", "GPT_3_prompt_with_label", "affirmation_true_or_false",
        "grammar_homework", "polysemous", "question_context", "question_context_meaning",
        "question_context_meaning_with_label", "same_sense", "similar_sense"), 0.5),
)
T0_EVAL_BY_NAME = {d.name: d for d in T0_EVAL}
RANDOM_BASELINE = 100 * sum(d.random for d in T0_EVAL) / len(T0_EVAL)  # 41.67

# The T0 training mixture `d4_train` (spec §3.2): (dataset, subset) with templates.
D4_TRAIN: tuple[tuple[str, Optional[str]], ...] = (
    ("glue", "mrpc"), ("glue", "qqp"), ("paws", "labeled_final"),
    ("kilt_tasks", "hotpotqa"), ("wiki_qa", None),
    ("adversarial_qa", "dbidaf"), ("adversarial_qa", "dbert"), ("adversarial_qa", "droberta"),
    ("duorc", "SelfRC"), ("duorc", "ParaphraseRC"), ("ropes", None), ("quoref", None),
    ("cos_e", "v1.11"), ("cosmos_qa", None), ("dream", None), ("qasc", None), ("quail", None),
    ("quarel", None), ("quartz", None), ("sciq", None), ("social_i_qa", None),
    ("wiki_hop", "original"), ("wiqa", None),
    ("amazon_polarity", None), ("app_reviews", None), ("imdb", None), ("rotten_tomatoes", None),
    ("yelp_review_full", None),
    ("common_gen", None), ("wiki_bio", None),
    ("cnn_dailymail", "3.0.0"), ("gigaword", None), ("multi_news", None), ("samsum", None),
    ("xsum", None),
    ("ag_news", None), ("dbpedia_14", None), ("trec", None),
)
# promptsource's TASK_BLACKLIST for d4_train (prompt-name prefixes).
D4_TRAIN_EXCLUDED_PROMPTS = {("gigaword", None): ("summarize_",)}
MIXTURE_CAP = 500_000

# The paper's T0-Eval numbers (spec §6), for a side-by-side.
PAPER_T0_EVAL = {
    "CD:FLM (168B)": 42.4, "ND:PLM (168B)": 41.8, "ED:PLM (168B)": 41.7,
    "CD:FLM + CD:MTF": 51.4, "ND:PLM + ND:MTF": 54.0, "ED:PLM + ED:MTF": 45.8,
    "CD:MLM + CD:MTF": 50.3, "ND:MLM + ND:MTF": 55.2, "ED:MLM + ED:MTF": 60.6,
    "T0 (11B)": 62.5, "Random": 41.7,
}
