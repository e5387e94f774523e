"""The study across model widths: does a contrast grow with size?

`run_scale(preset, out_dir, widths)` runs (or resumes) the study once per width, in
`out_dir/width_<W>`, with `emb_dim = W`, `head_dim = W / num_heads` and `mlp_dim` in the
preset's ratio to `emb_dim`; everything else (the world, the vocabulary size, the token
budget, the steps and rates, the examples scored) is the preset's, so the widths differ
only in the models. Every width scores the same examples, so one contrast can be read
across widths. It then writes:

  scale.json  per width: the parameter counts, each model's average before and after
              MT-F (with its bootstrap interval) and each paired contrast with its
              interval; per contrast, its change from the narrowest width to the widest,
              with a paired interval over the same examples for all four evaluations
  scale.md    the same as tables: models by width, contrasts by width
  scale.png   each contrast against width, with its paired 95% interval, zero marked

A width's study is an ordinary study folder (`results.md`, figures, runs), resumable on
its own with `arch-objective study --gin.StudyConfig.emb_dim=W ...`.

`compare_studies(before, after)` (`arch-objective compare-studies`) compares any two
finished studies of the same world, say the `medium` and `full` presets: each model's
change and each contrast's (and, where both scored them, each model's score on MT-F's own
classification families), paired over the examples both scored (a study that scored
300 examples per family pairs with one that scored 150 on the first 150; the gold
answers are checked to be the same).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from arch_objective.errors import UserError, integer_at_least


def width_bindings(config, width: int) -> list[str]:
  """The gin bindings that set a study `config` (a StudyConfig) to `width`: the embedding
  width, the head size that keeps `num_heads` heads, and the MLP width in the preset's
  ratio to the embedding.

    >>> from arch_objective.study.run import StudyConfig
    >>> width_bindings(StudyConfig(emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256), 64)
    ['StudyConfig.emb_dim = 64', 'StudyConfig.head_dim = 16', 'StudyConfig.mlp_dim = 128']
  """
  if not integer_at_least(width, 1) or width % config.num_heads:
    raise UserError(f"a study width must be a positive multiple of StudyConfig.num_heads "
                    f"({config.num_heads}), found {width!r}.")
  mlp = int(round(width * config.mlp_dim / config.emb_dim))
  return [f"StudyConfig.emb_dim = {width}", f"StudyConfig.head_dim = {width // config.num_heads}",
          f"StudyConfig.mlp_dim = {mlp}"]


def parse_widths(text: str) -> list[int]:
  """'64,128,256' -> [64, 128, 256] (at least two distinct positive widths, any order;
  returned ascending)."""
  try:
    widths = [int(w) for w in text.split(",") if w.strip()]
  except ValueError:
    raise UserError(f"--widths takes comma-separated integers such as 64,128,256; "
                    f"found {text!r}.") from None
  if len(widths) < 2 or len(set(widths)) != len(widths) or min(widths) <= 0:
    raise UserError(f"--widths takes two or more distinct positive widths such as "
                    f"64,128,256; found {text!r}.")
  return sorted(widths)


def _parameters(out_dir: str, config) -> dict[str, int]:
  """Parameters of a decoder-only model and of the encoder-decoder at this width."""
  from arch_objective import models
  from arch_objective.data import vocabularies
  vocab = vocabularies.SentencePieceVocabulary(os.path.join(out_dir, "world", "spm.model"))
  overrides = config.model_overrides(vocabularies.padded_vocab_size(vocab.vocab_size))
  return {key: models.count_params(models.build_model(arch, "tiny", **overrides))
          for key, arch in (("decoder_only", models.CAUSAL_DECODER),
                            ("encoder_decoder", models.ENCODER_DECODER))}


def run_scale(preset: str, out_dir: str, widths: Sequence[int], *,
              nc_a: Optional[bool] = None, bindings: Sequence[str] = (),
              log: Optional[Callable[[str], None]] = None) -> dict:
  """Run (or resume) the study `preset` at each of `widths` under `out_dir`; returns the
  summary also written to `scale.json` (and `scale.md`, `scale.png`)."""
  from arch_objective.study import run as study
  log = log or logging.getLogger(__name__).info
  if not widths or len(set(widths)) != len(widths):
    raise UserError(f"run_scale needs one or more distinct widths, found {list(widths)!r}.")
  widths = sorted(widths)
  base = study.load_preset(preset, bindings)
  per_width = [width_bindings(base, w) for w in widths]   # every width checked first
  out_dir = os.path.abspath(out_dir)
  rows = []
  for width, extra in zip(widths, per_width):
    folder = os.path.join(out_dir, f"width_{width}")
    log(f"width {width}: the study in {folder}")
    results = study.run_study(preset, folder, nc_a=nc_a, bindings=[*bindings, *extra],
                              log=lambda m, w=width: log(f"width {w}: {m}"))
    config = study.load_preset(preset, [*bindings, *extra])
    rows.append({
        "width": width, "folder": os.path.basename(folder),
        "parameters": _parameters(folder, config),
        "models": {name: {"label": cell["label"],
                          **{stage: ({"average": cell[stage]["average"],
                                      "ci": cell[stage].get("ci")} if cell[stage] else None)
                             for stage in ("zero_shot", "after_mtf")}}
                   for name, cell in results["cells"].items()},
        "contrasts": [{k: c[k] for k in ("label", "difference", "ci", "excludes_zero")}
                      for c in results["contrasts"]],
    })
  summary = {"preset": preset, "bindings": list(bindings), "widths": widths, "rows": rows,
             "random_baseline": results["random_baseline"],
             "changes": changes(os.path.join(out_dir, rows[0]["folder"]),
                                os.path.join(out_dir, rows[-1]["folder"]), base,
                                cells=set(rows[0]["models"]) & set(rows[-1]["models"]))
             if len(rows) > 1 else []}
  write_all(summary, out_dir)
  log(f"wrote {os.path.join(out_dir, 'scale.json')}, scale.md, scale.png")
  return summary


def _evaluation(folder: str, cell: str, stage: str, kind: str = "") -> Optional[dict]:
  """A study's per-example answers for `cell` at `stage` ('zero_shot' or 'after_mtf'):
  on the held-out families, or with `kind="_held_in"` on MT-F's own classification
  families."""
  from arch_objective.study import run as study
  results = study._read(os.path.join(
      folder, "eval", f"{cell}{'' if stage == 'zero_shot' else '_mtf'}{kind}.json"))
  return (results or {}).get("per_example")


def _paired(evaluations: list, weights: list, names: list, config) -> dict:
  """`paired_combination` over the examples the evaluations share (see
  `contrasts.shared_examples`)."""
  from arch_objective.evaluation import contrasts
  tables = contrasts.shared_examples([e["correct"] for e in evaluations],
                                     [e["gold"] for e in evaluations], names)
  result = contrasts.paired_combination(tables, weights, resamples=config.contrast_resamples,
                                        seed=config.seed, names=names)
  result["examples"] = {d: len(next(iter(p.values()))) for d, p in tables[0].items()}
  return result


def changes(narrow: str, wide: str, config, cells: Optional[set] = None) -> list[dict]:
  """Per contrast of the study, how much it changes from the study in folder `narrow`
  to the one in `wide`: (A - B at wide) - (A - B at narrow), with a paired bootstrap 95%
  interval that draws the same examples for all four evaluations (the examples both
  studies scored: the first n of each family). With `cells`, only contrasts between
  those models."""
  from arch_objective.study import run as study
  out = []
  for label, _, a, b in study.CONTRASTS:
    if cells is not None and not {a[0], b[0]} <= cells:
      continue
    evaluations = [_evaluation(folder, cell, stage) for folder in (narrow, wide)
                   for cell, stage in (a, b)]
    if any(e is None for e in evaluations):
      continue
    result = _paired(evaluations, [-1.0, 1.0, 1.0, -1.0],
                     [f"{os.path.basename(f)} {c[0]}" for f in (narrow, wide) for c in (a, b)],
                     config)
    out.append({"label": label, "from": os.path.basename(narrow),
                "to": os.path.basename(wide), "change": result["value"],
                "ci": result["ci"], "excludes_zero": result["excludes_zero"],
                "examples": result["examples"]})
  return out


def compare_studies(before: str, after: str, *, resamples: int = 1000,
                    seed: int = 0) -> dict:
  """Two finished study folders (say `medium` and `full`) compared on the examples both
  scored: each model's average in each and its change (after - before) with a paired
  bootstrap 95% interval, and each paired contrast's change (`changes`). The
  configuration fields that differ (from each folder's `config.json`) say what changed.
  Returns the summary that `write_comparison` writes."""
  import types
  from arch_objective.study import run as study
  configs = []
  for folder in (before, after):
    config = study._read(os.path.join(folder, "config.json"))
    if config is None or not os.path.isdir(os.path.join(folder, "eval")):
      raise UserError(f"{folder} is not a finished study folder: it needs config.json and "
                      f"eval/ (what `arch-objective study` writes).")
    configs.append(config)
  differ = {k: [configs[0].get(k), configs[1].get(k)]
            for k in sorted(set(configs[0]) | set(configs[1]))
            if configs[0].get(k) != configs[1].get(k)}
  settings = types.SimpleNamespace(contrast_resamples=resamples, seed=seed)
  names = [os.path.basename(os.path.normpath(f)) for f in (before, after)]
  models = []
  for cell, label in study.CELLS:
    for stage in ("zero_shot", "after_mtf"):
      evaluations = [_evaluation(folder, cell, stage) for folder in (before, after)]
      if any(e is None for e in evaluations):
        continue
      result = _paired(evaluations, [-1.0, 1.0], [f"{n} {cell}" for n in names], settings)
      models.append({"cell": cell, "label": label, "stage": stage,
                     "before": result["scores"][0], "after": result["scores"][1],
                     "change": result["value"], "ci": result["ci"],
                     "excludes_zero": result["excludes_zero"],
                     "examples": result["examples"]})
  if not models:
    raise UserError(f"{before} and {after} have no evaluation of the same model in eval/ "
                    f"(cd_flm.json, cd_flm_mtf.json, ...) to compare.")
  return {"before": names[0], "after": names[1],
          "folders": [before, after],
          "config_changes": differ, "resamples": resamples, "seed": seed,
          "models": models,
          "contrasts": changes(os.path.normpath(before), os.path.normpath(after), settings),
          "held_in": _held_in_changes(before, after, names, settings)}


def _held_in_changes(before: str, after: str, names: list, settings) -> list[dict]:
  """Per model, stage and MT-F classification family that both studies scored
  (`eval/<cell>[_mtf]_held_in.json`): the family's score in each and the change, paired
  over the examples both scored."""
  from arch_objective.study import run as study
  out = []
  for cell, label in study.CELLS:
    for stage in ("zero_shot", "after_mtf"):
      evaluations = [_evaluation(folder, cell, stage, "_held_in") for folder in (before, after)]
      if any(e is None for e in evaluations):
        continue
      for family in evaluations[0]["correct"]:
        if family not in evaluations[1]["correct"]:
          continue
        one = [{"correct": {family: e["correct"][family]}, "gold": {family: e["gold"][family]}}
               for e in evaluations]
        result = _paired(one, [-1.0, 1.0], [f"{n} {cell} {family}" for n in names], settings)
        out.append({"cell": cell, "label": label, "stage": stage, "family": family,
                    "before": result["scores"][0], "after": result["scores"][1],
                    "change": result["value"], "ci": result["ci"],
                    "excludes_zero": result["excludes_zero"],
                    "examples": result["examples"][family]})
  return out


def _signed(value: float, ci, bold: bool) -> str:
  text = f"{value:+.1f} [{ci[0]:+.1f}, {ci[1]:+.1f}]"
  return f"**{text}**" if bold else text


def comparison_markdown(summary: dict) -> str:
  before, after = summary["before"], summary["after"]
  lines = [f"# `{before}` -> `{after}`", "",
           "Both studies scored on the examples they share (per family, the first n of "
           "the validation split); changes are after - before with a paired bootstrap 95% "
           f"interval ({summary['resamples']} resamplings; bold: it excludes zero).", ""]
  examples = next((m["examples"] for m in summary["models"]), None)
  if examples:
    lines += ["Shared examples per family: " + ", ".join(
        f"{d} {n}" for d, n in examples.items()) + ".", ""]
  if summary["config_changes"]:
    lines += ["| configuration | " + before + " | " + after + " |", "|---|---|---|"]
    lines += [f"| {k} | {v[0]} | {v[1]} |" for k, v in summary["config_changes"].items()]
    lines.append("")
  lines += ["| model | stage | " + before + " | " + after + " | change |",
            "|---|---|---|---|---|"]
  stage = {"zero_shot": "after pretraining", "after_mtf": "after MT-F"}
  for m in summary["models"]:
    lines.append(f"| {m['label']} | {stage[m['stage']]} | {m['before']:.1f} | "
                 f"{m['after']:.1f} | {_signed(m['change'], m['ci'], m['excludes_zero'])} |")
  if summary["contrasts"]:
    lines += ["", "| contrast | change |", "|---|---|"]
    lines += [f"| {c['label']} | {_signed(c['change'], c['ci'], c['excludes_zero'])} |"
              for c in summary["contrasts"]]
  lines += _held_in_comparison(summary.get("held_in") or [], before, after, stage)
  return "\n".join(lines) + "\n"


def _held_in_comparison(rows: list, before: str, after: str, stage: dict) -> list[str]:
  """MT-F's own classification families: per model and stage, `before -> after: change`."""
  if not rows:
    return []
  families = list(dict.fromkeys(r["family"] for r in rows))
  counts = ", ".join(f"{f} {next(r['examples'] for r in rows if r['family'] == f)}"
                     for f in families)
  lines = ["", f"MT-F's own classification families (held in; median over prompts, "
           f"{before} -> {after}: the change with its paired interval; examples: {counts}):",
           "", "| model | stage | " + " | ".join(families) + " |",
           "|---|---|" + "---|" * len(families)]
  keyed = {(r["label"], r["stage"], r["family"]): r for r in rows}
  for label, row_stage in dict.fromkeys((r["label"], r["stage"]) for r in rows):
    cells = []
    for family in families:
      r = keyed.get((label, row_stage, family))
      cells.append("-" if r is None else f"{r['before']:.1f} -> {r['after']:.1f}: "
                   + _signed(r["change"], r["ci"], r["excludes_zero"]))
    lines.append(f"| {label} | {stage[row_stage]} | " + " | ".join(cells) + " |")
  return lines


def write_comparison(summary: dict, out_dir: str):
  """`compare.json` and `compare.md` in `out_dir`."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, "compare.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(out_dir, "compare.md"), "w") as f:
    f.write(comparison_markdown(summary))


def _interval(entry) -> str:
  if not entry:
    return "-"
  ci = entry.get("ci")
  return f"{entry['average']:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def markdown(summary: dict) -> str:
  rows = summary["rows"]
  widths = [r["width"] for r in rows]
  head = "| | " + " | ".join(f"width {w}" for w in widths) + " |"
  rule = "|---|" + "---|" * len(widths)
  lines = [f"# The study across widths (preset `{summary['preset']}`)", "",
           "Each width is the preset with `emb_dim`, `head_dim` and `mlp_dim` scaled; the "
           "world, the token budget, the steps and the scored examples are the same.", "",
           head, rule,
           "| parameters, decoder-only / encoder-decoder | " + " | ".join(
               f"{r['parameters']['decoder_only'] / 1e6:.2f}M / "
               f"{r['parameters']['encoder_decoder'] / 1e6:.2f}M"
               for r in rows) + " |"]
  names = list(rows[0]["models"])
  for stage, title in (("zero_shot", "after pretraining"), ("after_mtf", "after MT-F")):
    lines += ["", f"Held-out accuracy {title} (%; mean over families of the median over "
              f"prompts, bootstrap 95% interval; random {summary['random_baseline']:.1f}):",
              "", "| model | " + " | ".join(f"width {w}" for w in widths) + " |", rule]
    for name in names:
      entries = [r["models"].get(name, {}).get(stage) for r in rows]
      if any(entries):
        lines.append(f"| {rows[0]['models'][name]['label']} | "
                     + " | ".join(_interval(e) for e in entries) + " |")
  moved = {c["label"]: c for c in summary.get("changes") or []}
  change_head = (f" | change, width {widths[-1]} - width {widths[0]}" if moved else "")
  lines += ["", "The paper's contrasts at each width (points, paired bootstrap 95% interval "
            "over the shared examples; bold: the interval excludes zero)"
            + (", and how much each changes from the narrowest width to the widest (paired "
               "over the same examples for all four evaluations)" if moved else "") + ":", "",
            "| contrast | " + " | ".join(f"width {w}" for w in widths) + change_head + " |",
            rule + ("---|" if moved else "")]
  for label in _contrast_labels(rows):
    cells = []
    for r in rows:
      c = next((c for c in r["contrasts"] if c["label"] == label), None)
      if c is None:
        cells.append("-")
        continue
      text = f"{c['difference']:+.1f} [{c['ci'][0]:+.1f}, {c['ci'][1]:+.1f}]"
      cells.append(f"**{text}**" if c["excludes_zero"] else text)
    if moved:
      m = moved.get(label)
      text = "-" if m is None else (f"{m['change']:+.1f} [{m['ci'][0]:+.1f}, "
                                    f"{m['ci'][1]:+.1f}]")
      cells.append(f"**{text}**" if m is not None and m["excludes_zero"] else text)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _contrast_labels(rows) -> list[str]:
  labels = []
  for r in rows:
    for c in r["contrasts"]:
      if c["label"] not in labels:
        labels.append(c["label"])
  return labels


def chart(summary: dict, path: str):
  """One panel per contrast: its difference at each width with the paired interval."""
  rows = summary["rows"]
  labels = _contrast_labels(rows)
  if not labels:
    return
  columns = 3
  lines = (len(labels) + columns - 1) // columns
  fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 2.8 * lines),
                           squeeze=False)
  for ax, label in zip(axes.flat, labels):
    xs, ys, low, high, colours = [], [], [], [], []
    for r in rows:
      c = next((c for c in r["contrasts"] if c["label"] == label), None)
      if c is not None:
        xs.append(r["width"])
        ys.append(c["difference"])
        low.append(c["difference"] - c["ci"][0])
        high.append(c["ci"][1] - c["difference"])
        colours.append("tab:blue" if c["excludes_zero"] else "gray")
    ax.plot(xs, ys, color="tab:blue", linewidth=0.8)
    for x, y, lo, hi, colour in zip(xs, ys, low, high, colours):
      ax.errorbar([x], [y], yerr=[[lo], [hi]], fmt="o", color=colour, capsize=3)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["width"] for r in rows])
    ax.set_xticklabels([str(r["width"]) for r in rows])
    m = next((m for m in summary.get("changes") or [] if m["label"] == label), None)
    ax.set_title(label + ("" if m is None else
                          f"\nchange {m['change']:+.1f} [{m['ci'][0]:+.1f}, {m['ci'][1]:+.1f}]"),
                 fontsize=8)
  for ax in list(axes.flat)[len(labels):]:
    ax.axis("off")
  fig.supxlabel("model width (emb_dim)")
  fig.suptitle("The paper's contrasts across widths (points, paired 95% intervals)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_all(summary: dict, out_dir: str):
  with open(os.path.join(out_dir, "scale.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(out_dir, "scale.md"), "w") as f:
    f.write(markdown(summary))
  chart(summary, os.path.join(out_dir, "scale.png"))
