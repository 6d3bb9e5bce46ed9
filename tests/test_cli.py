"""The `speechssl` dispatcher: --help lists every verb, --version, errors without tracebacks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import speechssl
from speechssl.cli.main import VERBS, main


def _listed_verbs(help_text: str) -> set[str]:
    """The verbs of the help's subcommand table (``    <verb>   <help>`` lines), not words of the prose."""
    return {m.group(1) for m in re.finditer(r"^ {4}([a-z][a-z-]*)(?: {2,}|$)", help_text, re.MULTILINE)}


def test_help_lists_verbs(capsys):
    assert main([]) == 2
    listed = _listed_verbs(capsys.readouterr().out)
    assert listed == set(VERBS)
    # every verb the README runs is a verb of the CLI (a verb dropped from VERBS fails here)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = set(re.findall(r"^\$? *speechssl ([a-z][a-z-]*)", readme, re.MULTILINE))
    assert documented and documented <= listed, documented - listed


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "speechssl", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert speechssl.__version__ in out


def test_every_verb_has_help():
    # All verbs at once, through `python -m speechssl` as a user runs them (what their parsers import is
    # checked in test_cli_light_imports).
    procs = {verb: subprocess.Popen([sys.executable, "-m", "speechssl", verb, "--help"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for verb in VERBS}
    for verb, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (verb, stderr)
        assert f"speechssl {verb}" in stdout
