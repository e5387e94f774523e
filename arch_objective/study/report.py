"""The study's report: results.json, the paper-style markdown table and two figures."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _cell(summary) -> str:
  if not summary:
    return "-"
  ci = summary.get("ci")
  interval = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
  return f"{summary['average']:.1f}{interval}"


def markdown(results: dict) -> str:
  cells = results["cells"]
  families = results["heldout_families"]
  lines = [f"# Laptop-scale study (preset `{results['preset']}`)", "",
           "Zero-shot accuracy (%) on the held-out task families: median over prompts, mean "
           "over families, with bootstrap 95% intervals over examples.", "",
           "| model | after pretraining | after MT-F |", "|---|---|---|"]
  for cell in cells.values():
    lines.append(f"| {cell['label']} | {_cell(cell['zero_shot'])} | {_cell(cell['after_mtf'])} |")
  lines.append(f"| random | {results['random_baseline']:.1f} | {results['random_baseline']:.1f} |")
  lines += ["", "Per held-out family after MT-F (median over prompts):", "",
            "| model | " + " | ".join(families) + " |",
            "|---|" + "---|" * len(families)]
  for cell in cells.values():
    per = (cell["after_mtf"] or {}).get("per_family", {})
    lines.append(f"| {cell['label']} | " + " | ".join(
        f"{per[f]:.1f}" if f in per else "-" for f in families) + " |")
  lines += _contrast_lines(results.get("contrasts") or [])
  lines += _family_lines(results.get("families") or {})
  lines += _kappa_lines(results.get("families") or {})
  lines += _held_in_lines(results.get("held_in") or {})
  return "\n".join(lines) + "\n"


def _contrast_lines(contrasts: list) -> list[str]:
  if not contrasts:
    return []
  lines = ["", "The paper's questions as paired contrasts: difference of the two scores "
           "(points), with a paired bootstrap 95% interval over the shared examples "
           "(each resampling draws the same examples for both models and all prompts).", "",
           "| contrast | A | B | A - B | 95% interval | excludes 0 |", "|---|---|---|---|---|---|"]
  for c in contrasts:
    lines.append(f"| {c['label']} | {c['a']}: {c['score_a']:.1f} | {c['b']}: "
                 f"{c['score_b']:.1f} | {c['difference']:+.1f} | "
                 f"[{c['ci'][0]:+.1f}, {c['ci'][1]:+.1f}] | "
                 f"{'yes' if c['excludes_zero'] else 'no'} |")
  return lines


def _per_family_table(families: dict, intro: str, baselines, cell) -> list[str]:
  """A table with one column per family: a row per baseline (key, title) of the families'
  entries, then a row per model whose cells are `cell(stages)` ({stage: {score,
  top_answer_share}} of that model on that family, '-' when it has none)."""
  if not families:
    return []
  names = list(families)
  labels = list(dict.fromkeys(label for entry in families.values()
                              for label in entry["models"]))
  lines = ["", intro, "", "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for key, title in baselines:
    lines.append(f"| {title} | " + " | ".join(
        f"{families[n][key]:.1f}" if families[n][key] is not None else "-" for n in names)
        + " |")
  for label in labels:
    lines.append(f"| {label} | " + " | ".join(
        cell(families[n]["models"].get(label, {})) for n in names) + " |")
  return lines


def _score(stage, share: bool = True) -> str:
  if stage is None:
    return "-"
  text = f"{stage['score']:.1f}"
  if share and stage["top_answer_share"] is not None:
    text += f" ({stage['top_answer_share']:.2f})"
  return text


def _family_lines(families: dict) -> list[str]:
  return _per_family_table(
      families,
      "Per held-out family: the random floor, the majority-class baseline (always the most "
      "frequent gold answer), the ceiling (ED:MLM finetuned on the family's test split, "
      "scored on its validation split; '-' when not run), and each model's score after "
      "MT-F with, in parentheses, the share of its most frequent answer under a prompt, "
      "averaged over prompts (1.00: one answer whatever the input).",
      (("random", "random"), ("majority", "majority class"), ("ceiling", "ceiling")),
      lambda stages: _score(stages.get("after_mtf")))


def _kappa_lines(families: dict) -> list[str]:
  """Each model's Cohen's kappa after MT-F per family (results.json from before kappa was
  recorded has none: no table)."""
  if not any("kappa" in stage for entry in families.values()
             for stages in entry["models"].values() for stage in stages.values() if stage):
    return []

  def cell(stages):
    stage = stages.get("after_mtf")
    if not stage or stage.get("kappa") is None:
      return "-"
    low, high = stage["kappa_ci"]
    return f"{stage['kappa']:+.3f} [{low:+.3f}, {high:+.3f}]"

  return _per_family_table(
      families,
      "Whether the answers after MT-F carry information about the gold answer: Cohen's "
      "kappa, (accuracy - p_e) / (1 - p_e) with p_e the accuracy the model's own answer "
      "frequencies would get by chance (0: no information, as for one answer whatever the "
      "input; 1: all right); median over prompts, with a bootstrap 95% interval over "
      "examples.", (), cell)


def _held_in_lines(families: dict) -> list[str]:
  """MT-F's own classification families: each model's score before -> after MT-F."""
  return _per_family_table(
      families,
      "MT-F's own classification families (held in: MT-F trains on their train split; "
      "scored here on their validation split, as the held-out families are): each model's "
      "score (median over prompts) after pretraining -> after MT-F, with the share of its "
      "most frequent answer after MT-F in parentheses. Whether MT-F taught the tasks it "
      "trains on.",
      (("random", "random"), ("majority", "majority class")),
      lambda stages: (_score(stages.get("zero_shot"), share=False) + " -> "
                      + _score(stages.get("after_mtf"))))


def contrast_chart(results: dict, path: str):
  """The paired differences with their 95% intervals, zero marked."""
  contrasts = results.get("contrasts") or []
  if not contrasts:
    return
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(contrasts) + 1.2))
  ys = list(range(len(contrasts)))[::-1]
  for y, c in zip(ys, contrasts):
    color = "tab:blue" if c["excludes_zero"] else "gray"
    ax.errorbar(c["difference"], y, xerr=[[c["difference"] - c["ci"][0]],
                                          [c["ci"][1] - c["difference"]]],
                fmt="o", color=color, capsize=3)
  ax.axvline(0.0, color="black", linewidth=0.8)
  ax.set_yticks(ys)
  ax.set_yticklabels([c["label"] for c in contrasts], fontsize=8)
  ax.set_xlabel("difference in held-out accuracy (points), paired bootstrap 95% interval")
  ax.set_title("The paper's contrasts at laptop scale")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def bar_chart(results: dict, path: str):
  cells = list(results["cells"].values())
  labels = [c["label"] for c in cells]
  fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cells)), 4))
  width = 0.38
  for offset, key, name in ((-width / 2, "zero_shot", "after pretraining"),
                            (width / 2, "after_mtf", "after MT-F")):
    values = [c[key]["average"] if c[key] else 0.0 for c in cells]
    errors = [[max(0.0, c[key]["average"] - c[key]["ci"][0]) if c[key] and c[key].get("ci")
               else 0.0 for c in cells],
              [max(0.0, c[key]["ci"][1] - c[key]["average"]) if c[key] and c[key].get("ci")
               else 0.0 for c in cells]]
    ax.bar([i + offset for i in range(len(cells))], values, width, yerr=errors, capsize=3,
           label=name)
  ax.axhline(results["random_baseline"], color="gray", linestyle="--", label="random")
  ax.set_xticks(range(len(cells)))
  ax.set_xticklabels(labels, rotation=20)
  ax.set_ylabel("held-out accuracy (%)")
  ax.set_title("Zero-shot generalisation on the held-out families")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def loss_curves(results: dict, path: str):
  fig, (pre, mtf) = plt.subplots(1, 2, figsize=(10, 4))
  for cell in results["cells"].values():
    for ax, key in ((pre, "pretrain_loss"), (mtf, "mtf_loss")):
      curve = cell.get(key) or []
      if curve:
        ax.plot([p[0] for p in curve], [p[1] for p in curve], label=cell["label"])
  pre.set_title("pretraining loss (per token)")
  mtf.set_title("MT-F loss (per target token)")
  for ax in (pre, mtf):
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(results: dict, out_dir: str):
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(markdown(results))
  bar_chart(results, os.path.join(out_dir, "zero_shot.png"))
  contrast_chart(results, os.path.join(out_dir, "contrasts.png"))
  loss_curves(results, os.path.join(out_dir, "loss_curves.png"))
