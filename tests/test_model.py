from __future__ import annotations

import re

import pytest
import torch

from aperture_zoo import InputShapeError, count_parameters, create_model, list_models
from aperture_zoo.registry import get_spec

KEY = re.compile(
    r"^(conv1\.weight|bn1\.(weight|bias|running_mean|running_var|num_batches_tracked)|fc\.(weight|bias)|"
    r"layer[1-4]\.\d+\.(conv[12]\.weight|bn[12]\.\w+|downsample\.0\.weight|downsample\.1\.\w+))$"
)


# The report's Table 1, typed here independently of the registry: a wrong registry entry and a
# wrong model cannot agree with each other and pass.
TABLE1_PARAMS = {
    "resnet10": 4_903_242, "resnet18": 4_996_254, "resnet20": 4_998_382,
    "resnet22": 4_922_826, "resnet24": 4_935_242, "resnet32": 4_754_218,
}


def test_every_table1_model_is_registered() -> None:
    assert list_models() == sorted(TABLE1_PARAMS)


@pytest.mark.parametrize("name", sorted(TABLE1_PARAMS))
def test_parameter_count_equals_table1(name: str) -> None:
    model = create_model(name)
    built = count_parameters(model)
    assert built == sum(p.numel() for p in model.parameters())  # nothing frozen or hidden
    assert built == TABLE1_PARAMS[name] == get_spec(name).report_params


@pytest.mark.parametrize("name", list_models())
def test_state_dict_uses_torchvision_layout(name: str) -> None:
    spec = get_spec(name)
    keys = list(create_model(name).state_dict())
    assert all(KEY.match(k) for k in keys), [k for k in keys if not KEY.match(k)]
    for stage, n_blocks in enumerate(spec.blocks, start=1):
        assert f"layer{stage}.{n_blocks - 1}.conv2.weight" in keys
        assert f"layer{stage}.{n_blocks}.conv1.weight" not in keys
    # Projection shortcuts exactly where stride or width changes: stages 2-4, first block.
    shortcuts = sorted({k.split(".downsample")[0] for k in keys if ".downsample." in k})
    assert shortcuts == ["layer2.0", "layer3.0", "layer4.0"]
    assert tuple(create_model(name).fc.weight.shape) == (10, spec.channels[-1])


def test_forward_shapes_and_block_structure() -> None:
    model = create_model("resnet22").eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    block = model.layer2[0]
    assert block.conv1.stride == (2, 2) and block.downsample[0].kernel_size == (1, 1)
    assert model.conv1.bias is None and model.conv1.kernel_size == (3, 3)
    assert model.avgpool.kernel_size == 4


def test_overrides_and_num_classes() -> None:
    model = create_model("resnet22", num_classes=100, channels=(16, 32, 48, 64))
    assert model.spec.channels == (16, 32, 48, 64) and model.fc.out_features == 100
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 100)


def test_load_gives_a_model_in_eval_mode_with_or_without_weights() -> None:
    """load()'s promise, like torchvision's and timm's: ready to predict (BatchNorm on its running statistics)."""
    from aperture_zoo import load

    assert not load("resnet10").training
    assert not load("resnet10", num_classes=3).training
    assert not load("resnet10", pretrained=False).training


@pytest.mark.parametrize(
    "shape", [(3, 32, 32), (1, 1, 32, 32), (1, 3, 64, 64), (2, 32, 32, 3)]
)
def test_wrong_input_shape_is_named(shape: tuple[int, ...]) -> None:
    model = create_model("resnet10").eval()
    with pytest.raises(InputShapeError, match=r"expects a batch of images shaped N x 3 x 32 x 32"):
        model(torch.randn(*shape))


@pytest.mark.parametrize(
    "shape, fix",
    [((3, 32, 32), "Add a batch dimension with x.unsqueeze(0)."),
     ((2, 32, 32, 3), "channels-last (N x H x W x C): use x.permute(0, 3, 1, 2)."),
     ((32, 32, 3), "use x.permute(2, 0, 1).unsqueeze(0)."),
     ((2, 3, 64, 64), "Resize images to 32x32"), ((3, 64, 64), "Resize images to 32x32")],
)
def test_the_shape_hint_names_the_fix_that_fits(shape: tuple[int, ...], fix: str) -> None:
    """Regression (fourth hostile try, low): an N x H x W x C batch or a 64x64 image was told to add a batch dimension."""
    model = create_model("resnet10").eval()
    with pytest.raises(InputShapeError) as err:
        model(torch.randn(*shape))
    assert fix in str(err.value) and ("unsqueeze" in fix) == ("unsqueeze" in str(err.value))


def test_integer_pixels_are_named() -> None:
    model = create_model("resnet10").eval()
    with pytest.raises(InputShapeError, match=r"expects float input normalised.*got dtype torch.uint8"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


@pytest.fixture(scope="module")
def small() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("resnet10", channels=(8, 16, 16, 32)).eval()


def test_channels_last_matches(small: torch.nn.Module) -> None:
    x = torch.randn(4, 3, 32, 32)
    ref = small(x)
    cl = small.to(memory_format=torch.channels_last)
    out = cl(x.to(memory_format=torch.channels_last))
    small.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_jit_trace_and_torch_export(small: torch.nn.Module) -> None:
    x = torch.randn(3, 3, 32, 32)
    traced = torch.jit.trace(small, x)
    torch.testing.assert_close(traced(x), small(x))
    batch = torch.export.Dim("batch", min=1, max=1024)
    exported = torch.export.export(small, (x,), dynamic_shapes={"x": {0: batch}})
    y = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(exported.module()(y), small(y))


@pytest.mark.slow
def test_torch_compile(small: torch.nn.Module) -> None:
    compiled = torch.compile(small, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), small(x))
