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
