"""`--help` of every command: every option explained, every command ending with an
example that parses; `study --help` names its default preset and the overrides."""
import argparse
import shlex

import pytest

from arch_objective import cli


def _walk(parser, name="arch-objective"):
  yield name, parser
  for action in parser._actions:
    if isinstance(action, argparse._SubParsersAction):
      for sub_name, sub in action.choices.items():
        yield from _walk(sub, f"{name} {sub_name}")


PARSERS = dict(_walk(cli.build_parser()))


def test_every_command_is_walked():
  assert {"arch-objective data example", "arch-objective convert t5x-in",
          "arch-objective eval t0", "arch-objective study",
          "arch-objective compare-studies"} <= set(PARSERS)


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_every_command_an_example(name):
  parser = PARSERS[name]
  silent = [a.option_strings or [a.dest] for a in parser._actions
            if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
  assert not silent, f"{name}: options without help: {silent}"
  assert "example" in parser.format_help().lower(), name


def test_study_help_names_the_default_preset_and_every_override():
  from arch_objective.study import run
  text = " ".join(PARSERS["arch-objective study"].format_help().split())
  assert "quick (the default)" in text and "default: quick" in text
  assert "--gin.StudyConfig.NAME=VALUE" in text
  import dataclasses
  for field in dataclasses.fields(run.StudyConfig):
    assert field.name in text, field.name
  assert cli._STUDY_PRESETS == run.PRESETS


@pytest.mark.parametrize("command", sorted(set(cli.EXAMPLES) | set(cli.SLOW_EXAMPLES)))
def test_every_example_parses_as_printed(command):
  examples = {**cli.EXAMPLES, **cli.SLOW_EXAMPLES}
  argv = shlex.split(examples[command])
  assert argv[0] == "arch-objective"
  bindings, _, rest = cli._split_gin_bindings(argv[1:])
  args = cli.build_parser().parse_args(rest)
  assert " ".join([args.command] + [getattr(args, f"{args.command}_command", None) or ""]
                  ).strip() == command
  help_text = PARSERS[f"arch-objective {command}"].format_help()
  assert f"example:\n  {examples[command]}" in help_text
