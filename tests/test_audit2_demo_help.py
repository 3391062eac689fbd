"""`python -m reflectioncoder.demo --help` names every option with its help and default, as the
reflectioncoder commands do (issue 11, item 7: every option with help and its default)."""

from __future__ import annotations

import argparse

from reflectioncoder.demo import build_parser


def test_every_demo_option_has_help_and_its_default():
    parser = build_parser()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{action.option_strings}: no help"
        if action.nargs != 0 and action.default not in (None, False):
            assert f"default {action.default}" in action.help, action.option_strings
