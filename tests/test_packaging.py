"""The package as pip installs it: pyproject.toml declares compatible ranges, requirements.txt
pins one set inside them, and a wheel built from the repository holds the whole package."""
import email
import glob
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _declared() -> list[Requirement]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]


def _pinned() -> dict:
    pins = {}
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        for line in f:
            name, _, version = line.split("#")[0].strip().partition("==")
            if version:
                pins[name.lower()] = version
    return pins


def test_every_declared_range_holds_the_pinned_version():
    pins = _pinned()
    for requirement in _declared():
        assert requirement.name.lower() in pins, f"{requirement.name} is declared but not pinned in requirements.txt"
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (requirement, pins[requirement.name.lower()])


@pytest.mark.slow
def test_the_wheel_holds_the_package_and_installs_into_a_clean_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), ROOT],
                   check=True, capture_output=True, text=True)
    (wheel,) = glob.glob(str(tmp_path / "isodiff_jax-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(archive.read(metadata)).get_all("Requires-Dist")
    package = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "isodiff_jax", "**", "*.py"),
                                                               recursive=True)}
    assert package <= names, sorted(package - names)
    assert {str(Requirement(r)) for r in requires if "extra ==" not in r} == {str(r) for r in _declared()}
    # every declared dependency is met by this (pinned) environment, resolved by pip without an index
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet", wheel],
                   check=True, capture_output=True, text=True)
    # and the wheel alone installs into a clean venv, outside the repository
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "clean")], check=True)
    clean = str(tmp_path / "clean" / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", clean, "install", "--no-deps", "--no-index", "--quiet",
                    wheel], check=True, capture_output=True, text=True)
    found = subprocess.run([clean, "-c", "import isodiff_jax; print(isodiff_jax.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert found.startswith(str(tmp_path / "clean")), found
