"""The pieces ``fit`` is made of: batch stream, run state, sync clock, progress output, device facts."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from aperture_zoo.model import create_model
from aperture_zoo.files import CHECKPOINT_FILENAME as CHECKPOINT_NAME
from aperture_zoo.progress import EpochTable, TrainProgress, seconds, si
from aperture_zoo.train import TrainConfig, apply_overrides, fit, get_recipe
from aperture_zoo.train.augment import AugmentConfig
from aperture_zoo.train.checkpoint import load_checkpoint
from aperture_zoo.device import autocast_dtype, device_name
from aperture_zoo.train.loader import DeviceSplit
from aperture_zoo.train.loop import SyncClock
from aperture_zoo.train.state import EMA, RunState
from aperture_zoo.train.stream import BatchStream

TINY = create_model("resnet10", channels=(8, 16, 16, 32)).spec
RECIPE = apply_overrides(get_recipe("fast"), ["epochs=2", "batch_size=50", "cutout=8", "ema_decay=0.9"])

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------- batch stream


def _stream(world_size: int = 1, rank: int = 0) -> BatchStream:
    g = torch.Generator().manual_seed(0)
    split = DeviceSplit(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g),
                        torch.arange(40) % 10, tuple(TINY.label_names))
    aug = AugmentConfig(crop_padding=4, flip=True, cutout=8, label_smoothing=0.1)
    return BatchStream(split, 8, aug, torch.tensor(TINY.mean), torch.tensor(TINY.std), 10, seed=3,
                       rank=rank, world_size=world_size)


def test_a_stream_resumed_at_any_step_gives_the_batches_of_the_whole_epoch() -> None:
    stream = _stream()
    assert stream.steps == 5 and stream.local_batch == 8
    whole = list(stream.epoch(1))
    resumed = list(_stream().epoch(1, first_step=3))
    assert [s for s, _ in resumed] == [3, 4]
    for (_, a), (_, b) in zip(whole[3:], resumed):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    other_epoch = next(iter(stream.epoch(2)))[1]
    assert not torch.equal(other_epoch.inputs, whole[0][1].inputs)


def test_the_shards_of_two_ranks_make_up_the_single_process_batch() -> None:
    single = next(iter(_stream().epoch(0)))[1]
    halves = [next(iter(_stream(world_size=2, rank=r).epoch(0)))[1] for r in (0, 1)]
    assert _stream(world_size=2).local_batch == 4
    assert torch.equal(torch.cat([h.inputs for h in halves]), single.inputs)
    assert torch.equal(torch.cat([h.labels for h in halves]), single.labels)


def test_augment_config_from_recipe_takes_every_augmentation_field() -> None:
    recipe = RECIPE.replace(crop_padding=2, pad_mode="zeros", flip=False, mixup_alpha=0.2, label_smoothing=0.05)
    assert AugmentConfig.from_recipe(recipe) == AugmentConfig(2, "zeros", False, 8, 0.2, 0.05)


# ----------------------------------------------------------------- run state <-> checkpoint


def _state(seed: int) -> RunState:
    torch.manual_seed(seed)
    model = create_model(TINY)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # momentum buffers to save
    return RunState(model, optimizer, EMA(model, 0.9), sums=torch.zeros(3, dtype=torch.float64))


def test_run_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    saved = _state(0)
    saved.ema.update()
    saved.epoch, saved.step = 3, 7
    saved.sums += torch.tensor([12.5, 30.0, 50.0], dtype=torch.float64)
    saved.add_time(wall=2.0, train=1.5, images=350)
    saved.save(tmp_path / CHECKPOINT_NAME, arch=TINY.arch_dict(), seed=0)
    assert saved.saved_at == "epoch 3, step 7"
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    main, other = _state(1), _state(2)
    main.load(ckpt, is_main=True)
    other.load(ckpt, is_main=False)
    assert (main.epoch, main.step, main.ema.updates, main.saved_at) == (3, 7, 1, "epoch 3, step 7")
    assert main.sums.tolist() == [12.5, 30.0, 50.0] and other.sums.tolist() == [0.0, 0.0, 0.0]  # totals: rank 0
    assert main.elapsed == {"wall": 2.0, "train": 1.5, "images": 350}
    for a, b in ((saved.model, main.model), (saved.ema.model, main.ema.model)):
        for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), k
    got, want = main.optimizer.state_dict()["state"], saved.optimizer.state_dict()["state"]
    assert got.keys() == want.keys() and len(got) > 0
    assert all(torch.equal(got[i]["momentum_buffer"], want[i]["momentum_buffer"]) for i in got)
    main.next_epoch()
    assert (main.epoch, main.step, main.sums.tolist()) == (4, 0, [0.0, 0.0, 0.0])


def test_a_checkpoint_write_that_fails_leaves_the_previous_one_and_no_temp_file(tmp_path: Path,
                                                                                monkeypatch) -> None:
    import safetensors.torch

    state = _state(0)
    path = tmp_path / CHECKPOINT_NAME
    state.save(path, seed=0)

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    state.epoch = 1
    with pytest.raises(OSError, match="No space"):
        state.save(path, seed=0)
    assert load_checkpoint(path)["info"]["epoch"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]


# ----------------------------------------------------------------- when the loop syncs


def test_sync_clock_by_time_looks_only_at_the_clock() -> None:
    now = [100.0]
    clock = SyncClock(0.25, now=lambda: now[0])
    clock.start(0)
    assert not clock.due(1)
    now[0] += 0.2
    assert not clock.due(50)
    now[0] += 0.05
    assert clock.due(51)
    clock.synced(51, seconds_per_step=1.0)
    assert not clock.due(52)


def test_sync_clock_by_steps_spaces_syncs_by_the_agreed_step_time() -> None:
    clock = SyncClock(0.25, by_steps=True, now=lambda: 0.0)
    clock.start(10)
    assert not clock.due(10) and clock.due(11)  # first sync after one step: it measures the step time
    clock.synced(11, seconds_per_step=0.01)
    assert not clock.due(35) and clock.due(36)  # 0.25 s / 0.01 s = 25 steps later
    clock.synced(36, seconds_per_step=2.0)
    assert clock.due(37)  # slow steps: every step


def _count_syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = SyncClock.synced

    def counting(self, done, seconds_per_step):  # type: ignore[no-untyped-def]
        seen.append(done)
        return real(self, done, seconds_per_step)

    monkeypatch.setattr(SyncClock, "synced", counting)  # called once per read-back, with the steps done
    return seen


def test_the_loop_reads_back_when_the_clock_says_and_results_do_not_depend_on_it(synthetic_cifar, tmp_path,
                                                                                  monkeypatch) -> None:
    """An hour between syncs: one read-back per epoch (its last step); none at all: one per step."""
    seen = _count_syncs(monkeypatch)
    base = dict(model=TINY, recipe=RECIPE, data_dir=synthetic_cifar, device="cpu", progress=False,
                subset=200, test_subset=50)
    rare = fit(TrainConfig(**base, out_dir=tmp_path / "rare", sync_interval_s=3600.0))
    assert seen == [4, 4]  # 200 images / batch 50: 4 steps in each of 2 epochs
    seen.clear()
    every = fit(TrainConfig(**base, out_dir=tmp_path / "every", sync_interval_s=0.0))
    assert seen == [1, 2, 3, 4] * 2
    assert [(m["train_loss"], m["test_top1"]) for m in rare.metrics] == \
        [(m["train_loss"], m["test_top1"]) for m in every.metrics]


# ----------------------------------------------------------------- what a person sees, at 80 columns


def _row(**kw) -> dict:  # type: ignore[no-untyped-def]
    row = dict(epoch=400, lr=4.123e-05, train_loss=12.3456, train_top1=100.0, train_seconds=1.0,
               images_per_s=123456.7, epoch_seconds=4000.0)
    row.update(kw)
    return row


def test_epoch_table_fits_80_columns_with_every_column_filled() -> None:
    table = EpochTable(999, with_val=True)
    widest = table.line(_row(epoch=999, val_top1=100.0, test_loss=10.1234, test_top1=100.0))
    assert len(table.header()) <= 80 and len(widest) <= 80, (table.header(), widest)
    assert widest.split() == ["999/999", "12.346", "100.00%", "100.00%", "10.123", "100.00%", "4.1e-05",
                              "1h06m", "123.5k"]
    assert len(widest) == len(table.header())  # aligned under the header


def test_epoch_table_leaves_unmeasured_columns_blank_and_aligned() -> None:
    table = EpochTable(30, with_val=False)
    header = table.header()
    assert header.split() == ["epoch", "loss", "train", "test", "loss", "test", "lr", "time", "img/s"]
    plain = table.line(_row(epoch=3, lr=0.073, train_loss=0.83, train_top1=88.0, images_per_s=1500,
                            epoch_seconds=0.34))
    tested = table.line(_row(epoch=4, lr=0.073, train_loss=0.83, train_top1=88.0, images_per_s=1500,
                             epoch_seconds=0.34, test_loss=0.9, test_top1=85.5))
    assert plain.split() == ["3/30", "0.830", "88.00%", "0.073", "0.34s", "1.5k"]
    assert len(plain) == len(tested) == len(header) and plain.index("0.073") == tested.index("0.073")


def test_number_formats_stay_short() -> None:
    assert [si(v) for v in (950, 12345, 2.5e6)] == ["950", "12.3k", "2.5M"]
    assert [seconds(v) for v in (0.42, 12.34, 123.4, 1325, 7500)] == ["0.42s", "12.3s", "123s", "22m05s", "2h05m"]


def test_progress_bar_fits_80_columns_without_cutting_anything() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with TrainProgress(True, 400, 781, console=console) as bar:
        bar.start_epoch(399, 0)
        bar.update(500, 12.3456, 100.0, 1234567.0)
    last = [line for line in out.getvalue().replace("\r", "\n").splitlines() if "500/781" in line][-1]
    text = last.replace("\x1b[2K", "")
    assert len(text.rstrip()) <= 80 and "…" not in text, text
    for part in ("epoch 400/400", "500/781", "loss 12.346", "acc 100.0%", "1.2M img/s", "run ETA"):
        assert part in text, (part, text)


def test_fit_prints_a_header_then_one_row_per_epoch(synthetic_cifar, tmp_path, capsys) -> None:
    fit(TrainConfig(model=TINY, recipe=RECIPE, data_dir=synthetic_cifar, device="cpu", progress=False,
                    subset=200, test_subset=50, val_split=0.1, out_dir=tmp_path / "run"))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].split()[:4] == ["epoch", "loss", "train", "val"]
    assert [line.split()[0] for line in lines[1:]] == ["1/2", "2/2"]
    assert all(len(line) <= 80 for line in lines)
    # a run with a validation split is calibrated on it: the calibrators (plain and flip TTA, from
    # calibration.fit_calibrator) and the one-temperature fit travel with the weights
    from aperture_zoo.calibrators import Calibrator
    from aperture_zoo.weights import decode_metadata, load_weights, read_metadata

    meta = decode_metadata(read_metadata(tmp_path / "run" / "model.safetensors"))
    assert meta["temperature_fitted_on"] == "validation split" and 0.05 < meta["temperature"] < 20
    loaded = load_weights(create_model(TINY), tmp_path / "run" / "model.safetensors")
    assert loaded.temperature == meta["temperature"] and loaded.calibration_notice is None
    assert loaded.calibrator == Calibrator.from_dict(meta["calibrator"]) and loaded.calibrator.fitted_on == "validation split"
    assert loaded.calibrator_tta == Calibrator.from_dict(meta["calibrator_tta"])
    # 20 validation images: too few to compare kinds, so one temperature (the same as the plain fit)
    assert loaded.calibrator.kind == "temperature" and loaded.calibrator.temperature == pytest.approx(meta["temperature"], rel=1e-3)


# ----------------------------------------------------------------- device facts


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert autocast_dtype("auto", "cpu") is None and autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16 and autocast_dtype("fp32", "cuda") is None
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        autocast_dtype("fp16", "cpu")


def test_precision_native_trains_in_bf16_where_the_hardware_has_it_and_evaluates_as_auto() -> None:
    from aperture_zoo.device import eval_precision, inference_dtype

    assert autocast_dtype("native", "cpu") is inference_dtype("cpu")  # bf16 on an AMX CPU, else fp32
    assert autocast_dtype("native", "meta") is None  # no native bf16 known there: fp32
    assert eval_precision("native") == "auto" and autocast_dtype(eval_precision("native"), "cpu") is None
    assert [eval_precision(p) for p in ("auto", "fp32", "bf16")] == ["auto", "fp32", "bf16"]


def test_device_names() -> None:
    assert device_name("cpu") == "cpu" and device_name(torch.device("cpu")) == "cpu"
    assert device_name("cpu", detail=True).startswith("cpu (") and "threads)" in device_name("cpu", detail=True)
