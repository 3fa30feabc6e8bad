"""Every command the README shows runs as written: `make` targets exist in the Makefile, and each
`.venv/bin/python ...` line is accepted by its program's own argument parser (train.py's absl
flags with the config file loaded and every --config.* override applied; the analysis, oracle
and pretrained commands' argparse parsers). Nothing is trained here; the tests of each program
run it."""
import os
import re
import shlex
import sys

import pytest

from isodiff_jax.analysis import cli as analysis_cli
from isodiff_jax.analysis.networks import oracle
from isodiff_jax.pretrained import cli as pretrained_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list[str]:
    """The commands of the README's indented code blocks, continuation lines joined, comments cut."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read().replace("\\\n", " ")
    commands = [line.strip() for line in text.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    return [re.sub(r"\s+#.*$", "", c) for c in commands if c.startswith((".venv/bin/python", "make "))]


def test_the_readme_shows_the_main_commands():
    commands = readme_commands()
    assert {"make run", "make test", "make test-fast"} <= set(commands)
    assert any(c.startswith(".venv/bin/python train.py") for c in commands)


def test_every_make_target_in_the_readme_exists():
    with open(os.path.join(ROOT, "Makefile")) as f:
        targets = set(re.findall(r"^([\w-]+):", f.read(), re.M))
    for command in readme_commands():
        if command.startswith("make "):
            assert command.split()[1] in targets, command


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith(".venv/bin/python")])
def test_every_python_command_in_the_readme_parses(command, train_py, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = shlex.split(os.path.expandvars(command))[1:]
    if argv[0] == "train.py":
        flags = train_py.FLAGS
        flags.unparse_flags()
        for name in [n for n in flags if n.startswith("config.")]:  # another config's override flags
            delattr(flags, name)
        monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the --config.* overrides from sys.argv
        train_py.parse_flags(argv)
        assert train_py.FLAGS.workdir == argv[argv.index("--workdir") + 1]
        return
    assert argv[0] == "-m", command
    parsers = {"isodiff_jax.analysis": analysis_cli._parser(), "isodiff_jax.analysis.networks.oracle": oracle.parser(),
               "isodiff_jax.pretrained": pretrained_cli.parser()}
    parsers[argv[1]].parse_args(argv[2:])
