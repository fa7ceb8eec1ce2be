"""Sub-commands that other packages add to ``medgate`` through the ``medgate.commands`` entry point."""
from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from kernel import commands
from kernel.commands import CommandGroup, command_groups

ROOT = Path(__file__).resolve().parents[2]


def test_training_and_the_demo_are_found_by_entry_point():
    names = {name for group in command_groups() for name in group.names}
    assert {"train", "evaluate", "export", "demo"} <= names


def test_a_group_declares_and_runs_its_commands():
    ran = []
    group = CommandGroup(("hello",), lambda sub: sub.add_parser("hello"), lambda args: ran.append(args) or 0)
    parser = argparse.ArgumentParser()
    group.add(parser.add_subparsers(dest="command"))
    assert group.run(parser.parse_args(["hello"])) == 0 and ran[0].command == "hello"


def test_an_entry_point_that_is_no_command_group_is_named(monkeypatch):
    wrong = EntryPoint("broken", "kernel.commands:ENTRY_POINT_GROUP", commands.ENTRY_POINT_GROUP)
    monkeypatch.setattr(commands, "entry_points", lambda group: [wrong])
    with pytest.raises(TypeError, match="broken = kernel.commands:ENTRY_POINT_GROUP .* str is given"):
        command_groups()


def test_medgate_lists_the_registered_commands_without_importing_them_itself():
    out = subprocess.run([sys.executable, "-m", "serving.cli", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    for name in ("serve", "train", "evaluate", "export", "demo"):
        assert name in out
