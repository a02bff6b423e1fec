"""The fast fine-tune (LP-FT): the probe's fit, its BatchNorm pass, frozen stages, and a whole run.

Speed is measured by bench/finetune_speed.py, not here: these tests check that the path is right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from aperture_zoo.model import create_model
from aperture_zoo.train.evaluate import evaluate_sums
from aperture_zoo.train.finetune import InitError, freeze_stages
from aperture_zoo.train.step import TrainStep
from aperture_zoo.train.probe import fit_linear, pooled_features
from cifar_synth import make_images, write_png_folder

TINY = dict(channels=(8, 8, 8, 8))


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APERTURE_DATA", str(tmp_path / "data-cache"))


@pytest.fixture(autouse=True)
def _threads(one_thread: None) -> None:
    """The same kernels in every run, so an interrupted and resumed run can be compared bit for bit."""


def test_fit_linear_separates_and_folds_the_standardisation_back() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    raw = torch.randn(300, 40, generator=gen) + 4.0 * nn.functional.one_hot(labels, 40)
    raw[:, 7] = 5.0  # a feature that never varies stays finite
    scales = torch.logspace(-1.5, 1.5, 40)  # features on different scales: the fit standardises them
    weight, bias, iterations = fit_linear(raw * scales, labels, 3, l2=1e-2, smoothing=0.1)
    assert weight.shape == (3, 40) and bias.shape == (3,) and 0 < iterations
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    logits = raw * scales @ weight.T + bias  # the head takes raw features: the standardisation is folded in
    assert (logits.argmax(1) == labels).float().mean() > 0.97
    w0, b0, _ = fit_linear(raw, labels, 3, l2=1e-2, smoothing=0.1)
    assert torch.allclose(logits, raw @ w0.T + b0, atol=1e-3)  # the same fit whatever the scales
    weaker, _, _ = fit_linear(raw, labels, 3, l2=10.0)
    assert weaker.norm() < w0.norm()


def test_the_feature_pass_adapts_batchnorm_and_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = create_model("resnet10", num_classes=3, **TINY)
    x, _ = make_images(12, seed=3)
    images = torch.from_numpy(x)
    mean, std = torch.tensor(model.spec.mean), torch.tensor(model.spec.std)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    model.train()
    kept = pooled_features(model, images, mean, std, adapt_bn=False, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # eval mode: nothing learnt
    assert model.training and kept.shape == (120, model.fc.in_features)

    first = pooled_features(model, images, mean, std, adapt_bn=True, seed=0, batch_size=50)
    assert model.bn1.momentum == 0.1 and model.training and not hasattr(model.bn1, "_aperture_adapting")
    assert not torch.allclose(model.bn1.running_mean, before["bn1.running_mean"])
    # the new statistics are the images': the stem's batch-normalised output has about zero mean on them
    with torch.no_grad():
        model.eval()
        stem = model.bn1(model.conv1((images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)))
    assert stem.mean(dim=(0, 2, 3)).abs().max() < 0.05
    again = pooled_features(model, images, mean, std, adapt_bn=True, seed=0, batch_size=50)
    assert torch.equal(first, again)  # a seeded order: the same features every time


def test_frozen_stages_keep_weights_and_statistics_while_the_rest_learns() -> None:
    torch.manual_seed(0)
    model = create_model("resnet10", num_classes=3, **TINY)
    freeze_stages(model, 1)
    frozen = ("conv1.", "bn1.", "layer1.")
    assert all(p.requires_grad != name.startswith(frozen) for name, p in model.named_parameters())
    images = torch.from_numpy(make_images(8, seed=1)[0])
    mean, std = torch.tensor(model.spec.mean), torch.tensor(model.spec.std)
    pooled_features(model, images, mean, std, adapt_bn=True, seed=0)  # the probe adapts frozen statistics too
    adapted = {k: v.clone() for k, v in model.state_dict().items()}
    assert not torch.equal(adapted["layer1.0.bn1.running_var"], torch.ones(8))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    x = (images[:16].float() / 255 - 0.5) / 0.25
    nn.functional.cross_entropy(model(x), torch.arange(16) % 3).backward()
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(adapted[k], after[k]) for k in after if k.startswith(frozen))
    assert not torch.equal(adapted["layer2.0.conv1.weight"], after["layer2.0.conv1.weight"])
    assert not torch.equal(adapted["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
    with pytest.raises(InitError, match="has 4 stages"):
        freeze_stages(create_model("resnet10", **TINY), 5)


def _folder(root: Path) -> Path:
    x, y = make_images(14, seed=5)
    return write_png_folder(root, x, y, ["red", "green", "blue"], per_class=14)


def test_finetune_probes_then_trains_records_and_resumes(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The default fine-tune: the probe once, recorded; a run stopped after epoch 1 resumes to the same weights;
    trained in bf16 where the CPU has it natively, its test figure in fp32 (what ``aperture eval`` gives)."""
    import aperture_zoo.train.loop as loop
    from aperture_zoo.device import inference_dtype
    from aperture_zoo.train import TimeBudgetReached, TrainConfig, fit
    from aperture_zoo.train.recipes import FINETUNE
    from aperture_zoo.weights import read_metadata, decode_metadata, save_weights
    from safetensors.torch import load_file

    assert FINETUNE.probe_head and FINETUNE.frozen_stages > 0 and FINETUNE.eval_every == 0
    assert FINETUNE.precision == "native"
    steps, evals = [], []
    monkeypatch.setattr(loop, "TrainStep", lambda model, opt, dtype: steps.append(dtype) or TrainStep(model, opt, dtype))
    monkeypatch.setattr(loop, "evaluate_sums", lambda *a, **kw: evals.append(a[7]) or evaluate_sums(*a, **kw))
    root = _folder(tmp_path / "imgs")
    tiny = create_model("resnet10", **TINY).spec
    torch.manual_seed(1)
    save_weights(create_model(tiny), tmp_path / "source.safetensors")  # 10 classes: the folder's 3 get a new head
    recipe = FINETUNE.replace(batch_size=8)

    def run(out: str, **kw) -> object:
        return fit(TrainConfig(model=tiny, dataset=str(root), init=str(tmp_path / "source.safetensors"),
                               recipe=recipe, device="cpu", out_dir=tmp_path / out, progress=False, **kw))

    whole = run("whole")
    assert steps == [inference_dtype("cpu")] and evals == [None]  # bf16 on an AMX CPU; the test pass in fp32
    assert capfd.readouterr().err.count("probe: head fitted") == 1
    record = json.loads((tmp_path / "whole" / "run.json").read_text())
    probe = record["probe"]
    assert probe["images"] == 33 and probe["adapted_bn"] and probe["train_top1"] > 90  # colours: linearly separable
    assert probe["precision"] in ("bf16", "fp32") and probe["iterations"] > 0
    meta = decode_metadata(read_metadata(tmp_path / "whole" / "model.safetensors"))
    assert meta["probe"] == probe and meta["recipe"]["frozen_stages"] == FINETUNE.frozen_stages
    tested = [m.get("test_top1") is not None for m in whole.metrics]
    assert whole.test_top1 > 80 and tested == [False] * (FINETUNE.epochs - 1) + [True]  # the final epoch only
    weights, source = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "source.safetensors")
    assert torch.equal(weights["layer1.0.conv1.weight"], source["layer1.0.conv1.weight"])  # frozen
    assert not torch.equal(weights["layer4.0.conv1.weight"], source["layer4.0.conv1.weight"])  # fine-tuned

    with pytest.raises(TimeBudgetReached):
        run("stopped", time_budget_s=1e-3)  # one epoch always runs; the next would not fit
    assert capfd.readouterr().err.count("probe: head fitted") == 1
    resumed = fit(TrainConfig(resume=tmp_path / "stopped", device="cpu", progress=False))
    assert "probe: head fitted" not in capfd.readouterr().err  # the checkpoint holds the probed head
    again = load_file(tmp_path / "stopped" / "model.safetensors")
    assert all(torch.equal(weights[k], again[k]) for k in weights)
    assert resumed.test_top1 == whole.test_top1
    assert json.loads((tmp_path / "stopped" / "run.json").read_text())["probe"]["train_top1"] == probe["train_top1"]


def test_a_finetune_recipe_from_scratch_neither_probes_nor_freezes(tmp_path: Path, capfd) -> None:
    from aperture_zoo.train import TrainConfig, fit
    from aperture_zoo.train.recipes import FINETUNE
    from safetensors.torch import load_file

    root = _folder(tmp_path / "imgs")
    torch.manual_seed(0)
    fit(TrainConfig(model=create_model("resnet10", **TINY).spec, dataset=str(root), recipe=FINETUNE.replace(
        batch_size=8, epochs=1), device="cpu", out_dir=tmp_path / "run", progress=False))
    assert "probe" not in capfd.readouterr().err
    assert "probe" not in json.loads((tmp_path / "run" / "run.json").read_text())
    torch.manual_seed(0)
    fresh = create_model(create_model("resnet10", **TINY).spec.replace(num_classes=3))
    trained = load_file(tmp_path / "run" / "model.safetensors")
    assert not np.allclose(fresh.conv1.weight.detach().numpy(), trained["conv1.weight"].numpy())  # the stem learnt


def test_the_fine_tune_starts_from_the_probed_head_in_its_weights_and_its_average(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LP-FT's point: the epochs continue from the probe's head (and, with --ema, so does the average)."""
    from aperture_zoo.train import TrainConfig, fit, loop
    from aperture_zoo.train.recipes import FINETUNE
    from aperture_zoo.weights import save_weights
    from safetensors.torch import load_file

    probed: dict[str, torch.Tensor] = {}
    original = loop.probe_run

    def spy(recipe, record, state, *args, **kwargs):  # the live model's state right after the probe
        out = original(recipe, record, state, *args, **kwargs)
        probed.update({k: v.clone() for k, v in state.model.state_dict().items()})
        return out

    monkeypatch.setattr(loop, "probe_run", spy)
    root = _folder(tmp_path / "imgs")
    tiny = create_model("resnet10", **TINY).spec
    torch.manual_seed(1)
    save_weights(create_model(tiny), tmp_path / "source.safetensors")
    recipe = FINETUNE.replace(batch_size=8, epochs=1, lr=1e-9, ema_decay=0.9)  # nothing moves: the start shows
    fit(TrainConfig(model=tiny, dataset=str(root), init=str(tmp_path / "source.safetensors"), recipe=recipe,
                    device="cpu", out_dir=tmp_path / "run", progress=False))
    saved = load_file(tmp_path / "run" / "model.safetensors")  # the EMA's weights; frozen stages keep BN statistics
    assert probed["fc.weight"].abs().sum() > 0
    for key in ("fc.weight", "fc.bias", "layer1.0.bn1.running_mean", "bn1.running_var"):
        assert torch.allclose(saved[key], probed[key], atol=1e-6), key


def test_a_probed_short_run_that_ends_at_chance_or_broken_is_stopped() -> None:
    from aperture_zoo.train.guard import epoch_problem

    chance = {"epoch": 2, "train_top1": 12.0}
    assert epoch_problem(chance, 2, 10.0, 10) is None  # from a random head, 2 epochs are too few to judge
    assert epoch_problem(chance, 2, 10.0, 10, probed=True).startswith("top-1 is still at chance after 2 epochs")
    assert epoch_problem({**chance, "epoch": 1}, 2, 10.0, 10, probed=True) is None  # only its last epoch
    broken = {"epoch": 2, "train_top1": 90.0, "val_loss": float("nan")}
    assert "val loss of nan in eval mode" in epoch_problem(broken, 2, 10.0, 10, probed=True)
    assert epoch_problem({**broken, "val_loss": 0.3}, 2, 10.0, 10, probed=True) is None
