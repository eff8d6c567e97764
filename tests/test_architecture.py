"""The layers of the package, enforced: pure modules stay pure, data and methods stay apart, and
only the command line wires them together (CONTRIBUTING.md, "Architecture")."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "plrlhf"
PURE = ["losses", "objective", "user_models", "logprobs", "packing", "specs", "io"]


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_neither_lightning_nor_transformers(module):
    code = (
        f"import sys, plrlhf.{module}\n"
        "heavy = ('lightning', 'pytorch_lightning', 'transformers', 'peft')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"plrlhf.{module} imports {result.stdout.strip()}"


def imports_of(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def modules_under(folder):
    return sorted((PACKAGE / folder).rglob("*.py"))


@pytest.mark.parametrize("layer, other", [("data", "methods"), ("methods", "data")])
def test_data_and_methods_never_import_each_other(layer, other):
    for path in modules_under(layer):
        crossing = sorted(
            n for n in imports_of(path) if n == f"plrlhf.{other}" or n.startswith(f"plrlhf.{other}.")
        )
        assert not crossing, f"{path.relative_to(ROOT)} imports {crossing}"


def test_nothing_imports_the_cli():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py" and path.parent == PACKAGE:
            continue
        names = imports_of(path)
        assert "plrlhf.cli" not in names and not any(n.startswith("plrlhf.cli.") for n in names), path


def test_the_package_imports_lazily_and_names_resolve():
    code = (
        "import sys, plrlhf\n"
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules\n"
        "from plrlhf import IndividualPDPO, UserModel\n"
        "assert IndividualPDPO.__module__ == 'plrlhf.methods.pdpo'\n"
        "names = sorted(plrlhf.__all__)\n"
        "print(names == sorted(plrlhf._EXPORTS) and all(hasattr(plrlhf, n) for n in names))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "True"
