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
  return "\n".join(lines) + "\n"


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
  loss_curves(results, os.path.join(out_dir, "loss_curves.png"))
