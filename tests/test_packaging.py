"""The wheel installs train/ and export/ as aperture_zoo.train / aperture_zoo.export, nothing top-level."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )
    (whl,) = out.glob("aperture_zoo-*.whl")
    return whl


def test_wheel_maps_subpackages(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "aperture_zoo/train/__init__.py" in names
    assert "aperture_zoo/export/__init__.py" in names
    assert "aperture_zoo/cli/__init__.py" in names
    samples = [n for n in names if n.startswith("aperture_zoo/sample_images/")]  # `aperture samples` data
    assert "aperture_zoo/sample_images/labels.json" in samples and len(samples) == 31
    assert "aperture_zoo/card_template.md" in names  # cards render from it
    tops = {n.split("/")[0] for n in names}
    assert tops == {"aperture_zoo", next(t for t in tops if t.endswith(".dist-info"))}, tops
    assert not any(n.startswith(("train/", "export/", "tests/")) for n in names)
    licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))  # pyproject license-files
    assert zipfile.ZipFile(wheel).read(licence) == (ROOT / "LICENSE").read_bytes()
    assert b"MIT License" in (ROOT / "LICENSE").read_bytes()
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "aperture = aperture_zoo.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _install_in_throwaway_venv(wheel: Path, venv: Path) -> Path:
    """Install ``wheel`` (no deps) into a new venv; returns its python.

    --system-site-packages borrows the already-installed dependencies, so no download is needed.
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    return py


def test_wheel_installs_and_imports_in_a_throwaway_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    py = _install_in_throwaway_venv(wheel, venv)
    code = (
        "import importlib.util as u;"
        "print(u.find_spec('aperture_zoo.train').origin, u.find_spec('aperture_zoo.export').origin);"
        "print(u.find_spec('train'), u.find_spec('export'))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    train_origin, export_origin = out.stdout.splitlines()[0].split()
    assert train_origin.startswith(str(venv)) and train_origin.endswith("aperture_zoo/train/__init__.py")
    assert export_origin.startswith(str(venv)) and export_origin.endswith("aperture_zoo/export/__init__.py")
    assert out.stdout.splitlines()[1] == "None None"


def test_editable_install_maps_subpackages_to_the_source_tree(tmp_path: Path) -> None:
    """What `pip install -e .` does (PEP 660): build the editable wheel, install it, import from the tree."""
    out = tmp_path / "editable"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.build_editable({str(out)!r}))"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    (whl,) = out.glob("aperture_zoo-*.whl")
    venv = tmp_path / "venv"
    py = _install_in_throwaway_venv(whl, venv)
    code = (
        "import importlib.util as u;"
        "print(*(u.find_spec(m).origin for m in ('aperture_zoo', 'aperture_zoo.train', 'aperture_zoo.export')));"
        "print(u.find_spec('train'), u.find_spec('export'))"
    )
    lines = subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True,
                           cwd=tmp_path).stdout.splitlines()
    assert lines[0].split() == [str(ROOT / "aperture_zoo" / "__init__.py"), str(ROOT / "train" / "__init__.py"),
                                str(ROOT / "export" / "__init__.py")]
    assert lines[1] == "None None"
