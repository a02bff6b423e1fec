"""Class names that no output could tell apart: one name in two Unicode forms or with a lookalike letter is
refused, names that differ only in case are named in the data report (two classes here, one folder on macOS or Windows)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from aperture_zoo.cli import app
from aperture_zoo.datareport import folder_report
from aperture_zoo.folder import FolderError, scan_folder
from aperture_zoo.registry import class_names_problem
from profiles import examples

NFC, NFD = "caf\u00e9", "cafe\u0301"  # print the same; differ in code points
BOTH = r"('caf\\xe9' and 'cafe\\u0301'|'cafe\\u0301' and 'caf\\xe9')"  # escaped: the difference shows


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "data-cache"))


def _folder(root: Path, classes: list[str], per_class: int = 2) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(np.full((8, 8, 3), 20 * c + 3 * k + 1, np.uint8)).save(root / name / f"{k}.png")
    return root


def test_one_name_in_two_unicode_forms_is_refused_naming_both(tmp_path: Path) -> None:
    """Regression: NFC and NFD 'café' trained as two classes; predict printed `café (café 57%, café 43%)`."""
    root = _folder(tmp_path / "d", [NFC, NFD, "dog"])
    with pytest.raises(FolderError, match=BOTH + r" .* two Unicode forms .*rename one of them, or merge their images"):
        scan_folder(root)
    result = CliRunner().invoke(app, ["data-report", str(root)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert re.search(BOTH, result.output)


def test_a_test_folder_in_the_other_form_is_named_as_such(tmp_path: Path) -> None:
    """It said "test/ has class folder(s) that train/ lacks: 'café'", a name train/ seems to have."""
    _folder(tmp_path / "d" / "train", [NFC, "dog"])
    _folder(tmp_path / "d" / "test", [NFD, "dog"])
    with pytest.raises(FolderError, match=BOTH + r" in 'train/ and test/' .*two Unicode forms"):
        scan_folder(tmp_path / "d")


def test_names_that_differ_only_in_case_are_kept_and_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", ["Cat", "cat", "dog"])
    report = folder_report(root)
    assert list(report.classes) == ["Cat", "cat", "dog"]
    assert [n for n in report.notes if "differ only in case" in n] == [
        "classes 'Cat' and 'cat' differ only in case: kept as 2 classes, but on a case-insensitive file system "
        "(macOS, Windows) they are one folder; rename one if they are one class"]
    result = CliRunner().invoke(app, ["data-report", str(root)])
    assert result.exit_code == 0 and "'Cat' and 'cat' differ only in case" in result.output
    assert not [n for n in folder_report(_folder(tmp_path / "plain", ["cat", "dog"])).notes if "case" in n]


_names = st.lists(st.sampled_from(["caf\u00e9", "cafe\u0301", "Cafe\u0301", "\u212b", "\u00c5", "A\u030a", "cat",
                                   "Cat", "\u1e9b\u0323", "\u017f\u0323\u0307", "dog", "c\u0430t", "\u0441\u0430t",
                                   "\uff43\uff41\uff54", "\u043a\u043e\u0442", "d\u03bfg", "ca\u200bt"]) | st.text(min_size=1, max_size=6),
                  min_size=2, max_size=6, unique=True)


def _reads_as(name: str) -> str:
    """How a reader sees a name: NFKC, then Cyrillic/Greek lookalikes as Latin (the table itself is checked by
    the explicit cases of the next test)."""
    from aperture_zoo.registry import _LOOKALIKE

    shown = "".join(c for c in unicodedata.normalize("NFKC", name) if unicodedata.category(c) != "Cf")  # invisible
    return shown.translate(_LOOKALIKE)


@settings(max_examples=examples(60), deadline=None)
@given(names=_names)
@example(names=[NFC, NFD])
@example(names=["\u212b", "\u00c5", "A\u030a"])  # the angstrom sign, A-ring, A + combining ring: one name
@example(names=["cat", "c\u0430t"])  # a Cyrillic a
def test_names_are_refused_exactly_when_two_read_as_one(tmp_path_factory, names: list[str]) -> None:
    from aperture_zoo.folderscan import _check_classes

    classes = tuple(sorted(names))
    forms = [_reads_as(n) for n in classes]
    try:
        _check_classes(tmp_path_factory.getbasetemp(), classes)
    except FolderError as exc:
        assert len(set(forms)) < len(forms)
        assert "\n" not in str(exc) and all(ord(ch) < 128 for ch in str(exc).split(" in ")[0])  # escaped, visible
        pair = [c for c in classes if ascii(c) in str(exc)]
        assert len(pair) >= 2 and len({_reads_as(c) for c in pair}) < len(pair)
    else:
        assert len(set(forms)) == len(forms)


@pytest.mark.parametrize("names, refused", [
    (("cat", "c\u0430t"), "U+0430 CYRILLIC SMALL LETTER A looks like 'a'"),
    (("cat", "\u0441\u0430t"), "U+0441 CYRILLIC SMALL LETTER ES looks like 'c'"),
    (("dog", "d\u03bfg"), "U+03BF GREEK SMALL LETTER OMICRON looks like 'o'"),
    (("cat", "\uff43\uff41\uff54"), "two Unicode forms (equal after NFKC"),  # full-width letters
    (("cat", "ca\u200bt"), "U+200B ZERO WIDTH SPACE is invisible"),  # eleventh try, X7: two "cat"s on the demo page
    (("cat", "\u2066cat\u2069"), "U+2066 LEFT-TO-RIGHT ISOLATE is invisible"),
    (("cat", "Cat", "\u043a\u043e\u0442", "\u043a\u043e\u0442 cat", "\U0001f468\u200d\U0001f469"), None),  # case, scripts, an emoji with a joiner: distinct
])
def test_lookalike_class_names_are_refused_everywhere(tmp_path: Path, names: tuple[str, ...], refused: str | None) -> None:
    """Regression (ninth hostile try, N6): `--class-names cat,c\u0430t` printed two classes that read as one."""
    from aperture_zoo.registry import ModelSpec, get_spec

    problem = class_names_problem(names)
    assert (problem is None) if refused is None else (refused in problem and "give each class its own name" in problem)
    if refused is not None:
        with pytest.raises(ValueError, match="look alike|two Unicode forms"):
            get_spec("resnet10").replace(num_classes=len(names), class_names=names)
    else:
        assert isinstance(get_spec("resnet10").replace(num_classes=len(names), class_names=names), ModelSpec)
