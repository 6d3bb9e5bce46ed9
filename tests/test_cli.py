"""The `speechssl` dispatcher: --help lists every verb, --version, errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys

import speechssl
from speechssl.cli.main import VERBS, main


def test_help_lists_verbs(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for verb in VERBS:
        assert verb in out


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "speechssl", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert speechssl.__version__ in out


def test_every_verb_has_help():
    for verb in VERBS:
        proc = subprocess.run(
            [sys.executable, "-m", "speechssl", verb, "--help"], capture_output=True, text=True
        )
        assert proc.returncode == 0, (verb, proc.stderr)
        assert f"speechssl {verb}" in proc.stdout
