"""Every verb's ``--help`` and argument errors come without the numeric stack its ``run`` needs.

The verb modules import torch, scipy and numpy inside ``run()``; what their parsers show (choices,
defaults) comes from plain-Python modules (``speechssl.corpora.synth_config``,
``speechssl.data.prepare_defaults``, ``speechssl.extract.config``, the ``CORPORA`` registry), and
``speechssl.data`` / ``speechssl.extract`` import their submodules on first use (``speechssl.lazy``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import speechssl.data
import speechssl.extract
from speechssl.cli.main import VERBS

# torch (~2.5 s to import here), scipy (scipy.signal ~1 s) and numpy (~0.1 s): none of the verbs'
# parsers needs them, so none may be loaded by the time --help or an argument error exits.
HEAVY_MODULES = ("numpy", "scipy", "torch")

# Parse ``VERB --help`` and ``VERB --no-such-option`` through the dispatcher, then report the exit
# codes and which heavy modules got imported (last stderr line, JSON).
_PARSE_ONLY = """
import json, sys
from speechssl.cli.main import main
verb, heavy = sys.argv[1], sys.argv[2:]
codes = []
for argv in ([verb, "--help"], [verb, "--no-such-option"]):
    try:
        main(argv)
        codes.append(None)
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "loaded": [m for m in heavy if m in sys.modules]}), file=sys.stderr)
"""


def test_verb_help_and_argument_errors_import_no_torch_scipy_numpy():
    # All verbs at once, one process each (a fresh sys.modules per verb), as test_cli does for --help.
    procs = {verb: subprocess.Popen([sys.executable, "-c", _PARSE_ONLY, verb, *HEAVY_MODULES],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for verb in VERBS}
    for verb, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, (verb, stderr)
        report = json.loads(stderr.strip().splitlines()[-1])
        assert report["codes"] == [0, 2], (verb, stderr)  # help, then the argument error
        assert f"usage: speechssl {verb}" in stdout and f"speechssl {verb}: error: " in stderr, (verb, stdout, stderr)
        assert report["loaded"] == [], f"speechssl {verb} --help imports {report['loaded']}"


@pytest.mark.parametrize("package", [speechssl.data, speechssl.extract], ids=lambda p: p.__name__)
def test_lazy_package_exports_are_their_submodules_objects(package):
    import importlib

    for submodule, names in package._EXPORTS.items():
        module = importlib.import_module(f"{package.__name__}.{submodule}")
        for name in names:
            assert getattr(package, name) is getattr(module, name), f"{package.__name__}.{name}"
    assert sorted(package.__all__) == sorted(n for names in package._EXPORTS.values() for n in names)
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match=f"module '{package.__name__}' has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018


@pytest.mark.parametrize("package", [speechssl.data, speechssl.extract], ids=lambda p: p.__name__)
def test_lazy_exports_are_visible_to_static_tools(package):
    # IDEs and type checkers do not run __getattr__: each exported name is imported, as a re-export
    # (`X as X`), from its submodule under `if TYPE_CHECKING:`, which the run time skips
    import ast
    from pathlib import Path

    tree = ast.parse(Path(package.__file__).read_text())
    blocks = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    assert len(blocks) == 1, f"{package.__name__}: no `if TYPE_CHECKING:` block"
    seen: dict[str, list[str]] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.module.startswith(f"{package.__name__}."), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{ast.unparse(node)}: not a re-export (`X as X`)"
            seen.setdefault(node.module.removeprefix(f"{package.__name__}."), []).append(alias.name)
    assert {k: sorted(v) for k, v in seen.items()} == {k: sorted(v) for k, v in package._EXPORTS.items()}
