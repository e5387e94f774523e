"""`python -m bench [--smoke] [--out DIR] [--only NAME ...]`: run the benchmarks, write
`DIR/results.json` and `DIR/summary.md`, print the tables."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from typing import Optional, Sequence

import bench

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m bench", description=bench.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--smoke", action="store_true",
                      help="seconds-long run (tiny model, few batches); same result format")
  parser.add_argument("--out", default=DEFAULT_OUT,
                      help="folder for results.json and summary.md (default: bench/results)")
  parser.add_argument("--only", nargs="+", choices=sorted(bench.BENCHMARKS), default=None,
                      metavar="NAME", help=f"run only these of {', '.join(bench.BENCHMARKS)}")
  for benchmark in bench.BENCHMARKS.values():
    benchmark.add_arguments(parser)
  return parser.parse_args(argv)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
  lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
           for row in [header] + rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


def host_memory_note(setting: str) -> str:
  return ("freed buffers kept for reuse: `arch_objective.host_memory`" if setting == "reuse"
          else "the C library's default allocator")


def markdown(results: dict) -> str:
  """`summary.md`: the run, the machine, one table per benchmark."""
  m = results["machine"]
  versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
  out = [f"# Benchmarks ({results['mode']})", "",
         f"Run {results['created']}, `{results['command']}`, {results['seconds']:.0f} s.", "",
         f"Machine: {m['platform']}; {m['cpu_model']}; {m['usable_cpus']} of {m['cpu_count']} "
         f"CPUs usable; Python {m['python']}; {versions}; JAX backend {m['jax_backend']}, "
         f"devices {', '.join(m['jax_devices'])}.", ""]
  if "host_memory" in results:
    out[-1:-1] = ["", f"Host memory ({host_memory_note(results['host_memory'])}), for ours and "
                  f"HF alike (one process)."]
  for name, result in results["benchmarks"].items():
    benchmark = bench.BENCHMARKS[name]
    header, rows, notes = benchmark.summary(result)
    out += [f"## {name}", "", benchmark.description, "", _markdown_table(header, rows), ""]
    out += [f"- {note}" for note in notes] + [""]
  return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
  options = parse_args(argv)
  from arch_objective import host_memory
  kept = host_memory.keep_freed_memory()      # as the `arch-objective` command does
  names = options.only or list(bench.BENCHMARKS)
  start = time.perf_counter()
  results = {
      "host_memory": "reuse" if kept else "system",
      "mode": "smoke" if options.smoke else "full",
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "command": " ".join(["python -m bench"] + list(sys.argv[1:] if argv is None else argv)),
      "machine": bench.machine(),
      "benchmarks": {},
  }
  for name in names:
    print(f"== {name}", flush=True)
    results["benchmarks"][name] = bench.BENCHMARKS[name].run(options)
  results["seconds"] = time.perf_counter() - start

  os.makedirs(options.out, exist_ok=True)
  with open(os.path.join(options.out, "results.json"), "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2)
    f.write("\n")
  with open(os.path.join(options.out, "summary.md"), "w", encoding="utf-8") as f:
    f.write(markdown(results))
  for name, result in results["benchmarks"].items():
    header, rows, _ = bench.BENCHMARKS[name].summary(result)
    print(f"\n{name}\n{_text_table(header, rows)}")
  print(f"\nwrote {os.path.join(options.out, 'results.json')} and summary.md "
        f"({results['seconds']:.0f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
