from __future__ import annotations

import dataclasses

import pytest

import aperture_zoo
from aperture_zoo.registry import ModelSpec, UnknownModelError, get_spec, list_models

TABLE1 = {
    "resnet10": ((1, 1, 1, 1), (64, 128, 256, 512), 4_903_242),
    "resnet18": ((2, 2, 2, 2), (64, 157, 211, 270), 4_996_254),
    "resnet20": ((2, 2, 2, 3), (64, 128, 185, 245), 4_998_382),
    "resnet22": ((3, 2, 3, 2), (64, 128, 192, 256), 4_922_826),
    "resnet24": ((3, 3, 2, 3), (64, 128, 128, 256), 4_935_242),
    "resnet32": ((4, 4, 4, 3), (32, 64, 128, 256), 4_754_218),
}


def test_registry_holds_exactly_table1() -> None:
    assert list_models() == sorted(TABLE1)
    for name, (blocks, channels, params) in TABLE1.items():
        spec = get_spec(name)
        assert (spec.blocks, spec.channels, spec.report_params) == (blocks, channels, params)
        assert (spec.num_stages, spec.conv_kernel, spec.shortcut_kernel, spec.pool_kernel) == (4, 3, 1, 4)
        assert spec.depth == int(name.removeprefix("resnet"))


def test_list_models_wildcards() -> None:
    assert list_models("resnet2*") == ["resnet20", "resnet22", "resnet24"]
    assert list_models("*32") == ["resnet32"]
    assert list_models("vgg*") == []


def test_spec_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_spec("resnet22").blocks = (1, 1, 1, 1)  # type: ignore[misc]


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError) as err:
        get_spec("resnet23")
    msg = str(err.value)
    assert "unknown model 'resnet23'" in msg
    assert "did you mean" in msg and "resnet22" in msg and "resnet24" in msg
    assert isinstance(err.value, KeyError)  # ordinary `except KeyError` still works


def test_unknown_name_without_close_match_lists_the_zoo() -> None:
    with pytest.raises(UnknownModelError, match="aperture list"):
        get_spec("vgg16")


def test_replace_derives_new_spec_and_drops_provenance() -> None:
    base = get_spec("resnet22")
    narrow = base.replace(channels=[32, 64, 96, 128])
    assert narrow.channels == (32, 64, 96, 128) and narrow.blocks == base.blocks
    assert narrow.report_params is None
    assert base.channels == (64, 128, 192, 256)  # registry untouched
    with pytest.raises(TypeError, match="unknown spec field"):
        base.replace(widths=(1, 2, 3, 4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"blocks": (1, 1), "channels": (8,)}, "one entry per stage"),
        ({"blocks": (1, 0), "channels": (8, 8)}, ">= 1 block"),
        ({"blocks": (1,), "channels": (8,), "conv_kernel": 2}, "odd"),
        ({"blocks": (1, 1, 1, 1), "channels": (8,) * 4, "pool_kernel": 3}, "pool kernel 3"),
        ({"blocks": (1,), "channels": (8,), "num_classes": -1}, "num_classes must be >= 0"),
    ],
)
def test_invalid_specs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(name="bad", **kwargs)


def test_spec_json_round_trip() -> None:
    spec = get_spec("resnet20")
    import json

    assert ModelSpec.from_dict(json.loads(spec.to_json())) == spec


def test_public_api_is_lazy_and_complete() -> None:
    for name in ("list_models", "get_spec", "create_model", "load", "save_weights", "load_weights"):
        assert callable(getattr(aperture_zoo, name))
    with pytest.raises(AttributeError):
        aperture_zoo.does_not_exist  # noqa: B018
