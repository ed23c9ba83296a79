"""A plain ``pip install .`` (what a cluster image does) installs every package of the source
tree: ``pyproject.toml`` lists packages by hand, so a new subpackage must be added there."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source_packages() -> set[str]:
    found = set()
    for top, name in (("reslstm", "reslstm"), ("distributed", "reslstm.distributed")):
        for module in (ROOT / top).rglob("*.py"):   # a folder of modules, __init__.py or not
            rel = module.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in rel:
                found.add(".".join((name, *rel)))
    return found


def test_every_package_is_listed_in_pyproject():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    missing = _source_packages() - listed
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert listed <= _source_packages(), "pyproject.toml lists a package that does not exist"
    no_init = [p for p in listed if not (ROOT / _folder(p) / "__init__.py").exists()]
    assert not no_init, f"give these packages an __init__.py: {no_init}"


def _folder(package: str) -> Path:
    parts = package.split(".")
    if parts[:2] == ["reslstm", "distributed"]:
        return Path("distributed", *parts[2:])
    return Path(*parts)


def test_every_listed_package_is_committed():
    """A package that exists here but is not in git breaks a clean clone's install (CI's)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        import pytest

        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "reslstm", "distributed"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    folders = {str(Path(f).parent) for f in tracked if f.endswith("/__init__.py")}
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    untracked = [p for p in cfg["packages"] if str(_folder(p)) not in folders]
    assert not untracked, f"listed in pyproject.toml but not committed: {untracked}"


def test_ci_runs_the_readme_test_command():
    """The README has two set-up commands (demo, tests) and .ci/run runs the second, verbatim."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in setup.split("```bash\n")[1:]]
    commands = [[ln for ln in b.splitlines() if ln.strip() and not ln.startswith("#")]
                for b in blocks]
    assert [len(c) for c in commands] == [1, 1], commands
    assert "jobs/demo.py" in commands[0][0] and "pytest" in commands[1][0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1][0] in ci, ".ci/run must run the README's test command as written"
