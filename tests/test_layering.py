"""The layering of pyproject.toml's import-linter contracts holds, and would catch a break.

``lint-imports`` reads packages from disk, but ``distributed/`` is installed as
``reslstm.distributed`` (pyproject's ``package-dir``) and ``jobs/`` are scripts: each test lays
the sources out as they are installed (a copy under ``tmp_path``, ``jobs`` made a package) and
runs ``lint-imports`` there. Imports inside functions count (grimp reads every import statement).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CONTRACTS = {c["name"]: c for c in PYPROJECT["tool"]["importlinter"]["contracts"]}
LINT = Path(sys.executable).with_name("lint-imports")


def _installed_layout(dest: Path) -> Path:
    """A copy of the sources as ``pip install`` lays them out, plus ``jobs`` as a package."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        shutil.copytree(ROOT / folder, dest.joinpath(*package.split(".")), ignore=ignore)
    shutil.copytree(ROOT / "jobs", dest / "jobs", ignore=ignore)
    (dest / "jobs" / "__init__.py").write_text("")
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def _lint(layout: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(layout)}
    return subprocess.run([str(LINT), "pyproject.toml"], cwd=layout, env=env,
                          capture_output=True, text=True, timeout=120)


def _children(package: Path) -> set[str]:
    return {p.stem for p in package.iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}


def test_the_contracts_are_kept(tmp_path):
    result = _lint(_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == len(CONTRACTS)


def test_the_contracts_name_every_part_of_reslstm():
    """A new module or sub-package of reslstm is covered without editing a contract by hand
    being forgotten: the lists in pyproject.toml must name every child."""
    children = {f"reslstm.{c}" for c in _children(ROOT / "reslstm")}
    never_ray = CONTRACTS["reslstm never imports Ray, MLflow or reslstm.distributed"]
    assert set(never_ray["source_modules"]) == children
    jobs = CONTRACTS["jobs reach only reslstm.distributed, reslstm.configs and reslstm.cli"]
    assert set(jobs["forbidden_modules"]) == children - {"reslstm.configs", "reslstm.cli"}


def _plant(layout: Path, module: str, line: str) -> None:
    """Add an import inside a function of ``module`` (never called: only its text counts)."""
    path = layout.joinpath(*module.split(".")).with_suffix(".py")
    path.write_text(path.read_text() + f"\n\ndef _planted():\n    {line}\n")


@pytest.mark.parametrize("module, line, broken", [
    # reslstm.inference imports reslstm.video: the way back closes a circle of siblings
    ("reslstm.video.clips", "from reslstm.inference import chain",
     "No import circles between sibling packages or modules"),
    # two modules of one package
    ("reslstm.extractors.base", "from reslstm.extractors.registry import extractor_info",
     "No import circles between sibling packages or modules"),
    ("reslstm.sampling", "import ray", "reslstm never imports Ray"),
    ("reslstm.features.reader", "from reslstm.distributed.train import data",
     "reslstm never imports Ray"),
    ("jobs.train", "from reslstm.model import ResLSTM", "jobs reach only"),
])
def test_a_planted_import_breaks_its_contract(tmp_path, module, line, broken):
    layout = _installed_layout(tmp_path)
    _plant(layout, module, line)
    result = _lint(layout)
    assert result.returncode != 0
    broken_lines = [ln for ln in result.stdout.splitlines() if ln.endswith(" BROKEN")]
    assert any(ln.startswith(broken) for ln in broken_lines), result.stdout


# ---------------------------------------------------------------------------------------------
# The shape of the house: small modules, few at the top, no two with one name
# ---------------------------------------------------------------------------------------------

def _modules() -> list[Path]:
    return [p for top in ("reslstm", "distributed") for p in (ROOT / top).rglob("*.py")
            if "__pycache__" not in p.parts]


def _code_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))


def test_at_most_twelve_modules_sit_directly_in_reslstm():
    top = sorted(p.name for p in (ROOT / "reslstm").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 12, top


def test_no_two_modules_share_a_file_name():
    """configs/ mirrors its users' names on purpose (configs/train.py for the train jobs)."""
    seen: dict[str, Path] = {}
    for path in _modules():
        if path.name == "__init__.py" or path.parent.name == "configs":
            continue
        assert path.name not in seen, f"{path.relative_to(ROOT)} and {seen[path.name].relative_to(ROOT)}"
        seen[path.name] = path


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"one concern per module (150-400 lines): split {long}"


def test_jobs_stay_thin():
    fat = {p.name: n for p in (ROOT / "jobs").glob("*.py")
           if (n := _code_lines(p.read_text())) >= 60}
    assert not fat, f"jobs parse arguments and call reslstm.distributed: {fat} lines of code"


def test_the_sweep_reads_as_its_steps():
    import ast

    source = (ROOT / "distributed" / "tune" / "sweep.py").read_text()
    fn = next(n for n in ast.parse(source).body if getattr(n, "name", None) == "sweep")
    body = ast.get_source_segment(source, fn)
    assert _code_lines(body) - len(ast.get_docstring(fn).splitlines()) < 60
