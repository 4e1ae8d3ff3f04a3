"""Every flag of every `sml-*` console script says what it means and what its default is."""

import argparse

from sml_torchrec import cli, recommend
from sml_torchrec.data import cli as data_cli


def _parsers(parser: argparse.ArgumentParser, name: str):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, p in action.choices.items():
                yield from _parsers(p, f"{name} {sub}")


def _all_parsers():
    data = data_cli._parser()
    data = data[0] if isinstance(data, tuple) else data
    for name, top in (("sml-retrain", cli._parser()), ("sml-data", data),
                      ("sml-recommend", recommend._parser())):
        yield from _parsers(top, name)


# Switches are off unless given; --help and the sub-command choice have no default to show.
EXEMPT = (argparse._HelpAction, argparse._StoreTrueAction, argparse._SubParsersAction)


def _rendered_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return formatter._expand_help(action) if action.help else ""


def _problems(parsers) -> tuple[list[str], int]:
    """(what is missing, how many actions were checked)."""
    missing, count = [], 0
    for name, parser in parsers:
        for action in parser._actions:
            count += 1
            text = _rendered_help(parser, action)
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if len(text.split()) < 2:
                missing.append(f"{flag}: no help")
            elif not (isinstance(action, EXEMPT) or action.required
                      or "default" in text.lower()):
                missing.append(f"{flag}: no default in {text!r}")
    return missing, count


def test_every_flag_has_a_meaning_and_a_default():
    missing, count = _problems(_all_parsers())
    assert count > 60  # every parser was walked
    assert not missing, "\n".join(missing)


def test_the_check_can_fail():
    p = recommend._parser()
    p.add_argument("--silent", type=int, default=3)
    p.add_argument("--vague", type=int, default=None, help="a meaning only")
    missing, _ = _problems([("sml-recommend", p)])
    assert missing == ["sml-recommend --silent: no help",
                       "sml-recommend --vague: no default in 'a meaning only'"]
