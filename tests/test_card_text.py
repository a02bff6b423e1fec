"""Text from outside reaches the card as text: HTML is shown, not rendered, and `|` never breaks a table."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from aperture_zoo.card_text import escape_md

RENDER = MarkdownIt("commonmark").enable("table")
ALLOWED_TAGS = {"table", "thead", "tbody", "tr", "th", "td", "p", "ul", "li"}


def _visible(text: str) -> str:
    """What a card shows for ``text``: non-printable characters written out (``\\n``, ``\\x1b``)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _tags(rendered: str) -> set[str]:
    return {m.lower() for m in re.findall(r"</?\s*([A-Za-z][A-Za-z0-9-]*)", rendered)}


def _cells(rendered: str, tag: str) -> list[str]:
    return re.findall(rf"<{tag}>(.*?)</{tag}>", rendered, flags=re.S)


@given(st.text(max_size=60))
def test_any_string_round_trips_through_a_table_cell(text: str) -> None:
    table = f"| class | top-1 |\n|---|---|\n| {escape_md(text)} | 9.5 |\n"
    rendered = RENDER.render(table)
    assert _tags(rendered) <= ALLOWED_TAGS, rendered
    cells = _cells(rendered, "td")
    assert len(cells) == 2 and cells[1] == "9.5", rendered  # the row still has its two cells
    assert html.unescape(cells[0]) == _visible(text).strip(" ")


@given(st.text(max_size=60))
def test_any_string_stays_one_literal_list_item(text: str) -> None:
    rendered = RENDER.render(f"- Classes (3): {escape_md(text)}, dog\n")
    assert _tags(rendered) <= {"ul", "li"}, rendered
    (item,) = _cells(rendered, "li")
    assert html.unescape(item) == f"Classes (3): {_visible(text)}, dog".rstrip(" ")


def test_escape_examples() -> None:
    assert escape_md("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escape_md("a|b") == "a\\|b" and escape_md("x\n| y") == "x\\\\n\\| y"
    assert escape_md("\x1b[31mred") == "\\\\x1b\\[31mred"
    assert escape_md("plain class name") == "plain class name" and escape_md("label_smoothing") == "label_smoothing"
    assert escape_md("_x_") == "\\_x\\_"


@pytest.mark.parametrize("names", [("<img src=x onerror=alert(1)>", "a|b", "*bold* [x](http://e)"),
                                   ("line\nbreak", "`tick`", "&amp; $x$")])
def test_a_card_shows_hostile_class_names_as_text(names: tuple[str, ...], tmp_path: Path) -> None:
    """Regression: HTML in a class name went into the card verbatim, and `|` broke its per-class table."""
    import json

    import torch

    from aperture_zoo.cards import write_card
    from aperture_zoo.files import file_sha256
    from aperture_zoo.model import create_model
    from aperture_zoo.weights import save_weights

    torch.manual_seed(0)
    model = create_model("resnet10", num_classes=3, class_names=names, channels=(8, 16, 16, 32))
    weights = save_weights(model, tmp_path / "model.safetensors",
                           {"test_top1": 50.0, "dataset": "<b>folder|x</b>"})
    (tmp_path / "eval.json").write_text(json.dumps({
        "top1": 50.0, "num_images": 6, "device": "cpu <i>", "weights_sha256": file_sha256(weights),
        "per_class_top1": {n: 50.0 for n in names}}))
    write_card("resnet10", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    body = readme.split("---\n", 2)[2]
    rendered = RENDER.render(body)
    assert _tags(rendered) <= ALLOWED_TAGS | {"h1", "h2", "code", "pre", "strong", "em", "a"}, _tags(rendered)
    assert "<img" not in rendered and "<b>" not in rendered and "<i>" not in rendered
    per_class = rendered[rendered.index("<th>class</th>"):]
    per_class = per_class[: per_class.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", per_class, flags=re.S)  # the body rows (the header row began before)
    assert [html.unescape(_cells(r, "td")[0]) for r in rows] == [_visible(n) for n in names]
    assert all(len(_cells(r, "td")) == 2 for r in rows)


def test_a_repo_id_for_the_code_sample_follows_the_hubs_rules(tmp_path: Path) -> None:
    from aperture_zoo.cards import write_card
    from aperture_zoo.hub import HubError

    with pytest.raises(HubError, match="invalid Hub repo id"):
        write_card("resnet10", tmp_path, repo_id='org/x")\nimport os  #')
    assert not (tmp_path / "README.md").exists()  # refused before anything was written
    write_card("resnet10", tmp_path, repo_id="org/resnet-10")
    assert (tmp_path / "README.md").is_file()
