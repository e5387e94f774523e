"""The `arch-objective` command: the one door for a person.

  arch-objective plan --arch ARCH --size SIZE [--length L]   model accounting as JSON
  arch-objective smoke [--steps N]                            tiny CPU training of each arch
"""
from __future__ import annotations

import argparse
import json
import sys


def _plan(args) -> int:
  from arch_objective import models
  try:
    model = models.build_model(args.arch, args.size)
  except ValueError as e:
    print(f"arch-objective plan: {e}", file=sys.stderr)
    return 2
  report = {
      "arch": args.arch,
      "size": args.size,
      "params": models.count_params(model),
      "flops_per_token": models.training_flops_per_token(
          model, args.length, args.inputs_length, args.targets_length),
      "lengths": ({"inputs": args.inputs_length, "targets": args.targets_length}
                  if args.arch == models.ENCODER_DECODER else {"decoder": args.length}),
      "config": {k: v for k, v in vars(model.config).items()},
  }
  print(json.dumps(report, indent=2))
  return 0


def _smoke(args) -> int:
  from arch_objective import smoke
  smoke.main(steps=args.steps)
  return 0


def build_parser() -> argparse.ArgumentParser:
  from arch_objective.models import ARCHITECTURES
  from arch_objective.network import SIZES
  parser = argparse.ArgumentParser(
      prog="arch-objective",
      description="Architectures and pretraining objectives for zero-shot generalisation.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  plan = sub.add_parser("plan", help="parameters and FLOPs of a model, as JSON (allocates nothing)")
  plan.add_argument("--arch", required=True, choices=ARCHITECTURES)
  plan.add_argument("--size", required=True, choices=list(SIZES))
  plan.add_argument("--length", type=int, default=626, help="decoder-only row length")
  plan.add_argument("--inputs_length", type=int, default=512, help="encoder length (ED)")
  plan.add_argument("--targets_length", type=int, default=114, help="decoder length (ED)")
  plan.set_defaults(func=_plan)

  smoke = sub.add_parser("smoke", help="train a tiny model of each architecture on CPU")
  smoke.add_argument("--steps", type=int, default=200)
  smoke.set_defaults(func=_smoke)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
