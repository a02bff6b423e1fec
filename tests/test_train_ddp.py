"""DDP on CPU with gloo, 2 processes: one step over 2 ranks equals one single-process step.

About BatchNorm: without SyncBatchNorm (CUDA/XPU only) each rank normalises its half batch with
its own statistics, which is "ghost batch" BN, a different function from BN over the whole batch.
So the test checks two exact equalities instead of one loose one:

* BN in eval mode (fixed statistics): 2 ranks x B/2 == 1 process x B. This isolates what DDP must
  get right: the sharding of the global batch, identical augmentation draws, gradient averaging.
* BN in train mode: 2 ranks x B/2 == 1 process that averages the gradients of the two halves (the
  ghost-batch computation DDP performs). On CUDA the trainer uses SyncBatchNorm
  (``recipe.sync_bn``), which makes train mode match the full-batch step as well.

Then a full 1-epoch ``fit`` runs on both ranks: rank 0 writes the run, test metrics cover every
test image exactly once (each rank scores a shard, sums are all-reduced).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from aperture_zoo.model import create_model
from aperture_zoo.train import TrainConfig, apply_overrides, fit, get_recipe
from aperture_zoo.train.augment import AugmentConfig, augment_batch
from aperture_zoo.train.loader import rank_slice
from aperture_zoo.train.step import TrainStep, build_optimizer
from aperture_zoo.weights import read_metadata

SPEC = create_model("resnet10", channels=(8, 16, 16, 32)).spec
RECIPE = apply_overrides(get_recipe("fast"), ["batch_size=16", "lr=0.1", "epochs=1", "cutout=6"])
B = 16


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(SPEC)


def _batch(shard: slice | None):
    from cifar_synth import make_images

    x, y = make_images(2, seed=3)  # 20 images, 2 per class
    g = torch.Generator()
    g.manual_seed(1234)
    aug = AugmentConfig(crop_padding=4, flip=True, cutout=6, label_smoothing=0.1)
    mean, std = torch.tensor(SPEC.mean), torch.tensor(SPEC.std)
    return augment_batch(torch.from_numpy(x[:B]), torch.from_numpy(y[:B]), aug, mean, std, 10, g, shard)


def _one_step(model: torch.nn.Module, net: torch.nn.Module, shard: slice | None, bn_train: bool) -> None:
    opt = build_optimizer(model, RECIPE, torch.device("cpu"))
    model.train(bn_train)
    TrainStep(net, opt, None)(_batch(shard))


def _worker(rank: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from torch.nn.parallel import DistributedDataParallel as DDP

    from aperture_zoo.train import distributed as D

    info, device = D.setup("cpu")
    assert info.world_size == 2 and device.type == "cpu"
    _missing_data_on_two_ranks(rank, info, out)
    _run_dir_decided_on_rank_0(rank, info, out)
    for bn_train in (False, True):
        model = _model()
        _one_step(model, DDP(model), rank_slice(B, rank, 2), bn_train)
        if rank == 0:
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(Path(out) / f"ddp_bn_train_{bn_train}.safetensors"))
    fit(TrainConfig(model=SPEC, recipe=RECIPE.replace(batch_size=50), data_dir=data_dir,
                    out_dir=Path(out) / "run", device="cpu", progress=False))
    (Path(out) / f"group_after_fit_rank{rank}.json").write_text(json.dumps(torch.distributed.is_initialized()))
    os.environ["APERTURE_DATA"] = str(Path(out) / "cache")  # this worker's copy only
    fit(TrainConfig(model=SPEC, dataset=str(Path(out) / "folder"), recipe=RECIPE.replace(batch_size=8),
                    out_dir=Path(out) / "folder-run", device="cpu", progress=False))
    # the group this worker made is its to close: left to interpreter exit, gloo's threads can abort the process
    # ("terminate called without an active exception", SIGABRT: one fresh run in six failed so)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _missing_data_on_two_ranks(rank: int, info, out: str) -> None:
    """Only rank 0 may download (two ranks writing one folder corrupt it); both must see its failure."""
    from aperture_zoo import data
    from aperture_zoo.train.loader import load_run_data
    from aperture_zoo.train.settings import Run

    calls = []

    def offline(data_dir):
        calls.append(rank)
        raise data.DataError("simulated: download failed, offline")

    data.download = offline  # this worker's copy only
    try:
        load_run_data(TrainConfig(data_dir=Path(out) / "no-data", download=True), Run(SPEC, RECIPE, {}), info,
                      torch.device("cpu"), data_from_run=False)
        error = None
    except data.DataError as exc:
        error = str(exc)
    (Path(out) / f"fetch_rank{rank}.json").write_text(json.dumps({"calls": calls, "error": error}))


def _run_dir_decided_on_rank_0(rank: int, info, out: str) -> None:
    """Two new runs in one second: rank 0 creates each folder (exclusively) and every rank gets its name."""
    import contextlib
    import time

    from aperture_zoo.train.distributed import decided_on_rank0
    from aperture_zoo.train.rundir import RunDir

    os.chdir(out)  # this worker's working directory only
    second = time.mktime((2025, 1, 1, 12, 0, 0, 0, 0, -1))  # one frozen second: 20250101-120000
    with contextlib.ExitStack() as stack:
        names = [decided_on_rank0(info, lambda: str(RunDir.open(None, "tiny", stack, started=second).path))
                 for _ in range(2)]
    (Path(out) / f"claimed_rank{rank}.json").write_text(json.dumps(names))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_out(synthetic_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    from cifar_synth import make_images, write_png_folder

    x, y = make_images(5, seed=7)
    write_png_folder(out / "folder", x, y, ["b 1", "a [2]", "ç"], per_class=5)  # a 3-class folder of PNGs
    # spawn, not fork: a forked child of a process whose autograd engine has started its threads (any
    # earlier test in this pytest process) cannot run backward at all
    for attempt in range(3):  # the port is found free, closed, then bound by rank 0: a parallel test may take it first
        ctx = mp.start_processes(_worker, args=(_free_port(), str(synthetic_cifar), str(out)), nprocs=2, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + 600  # a hung collective must fail the test, not stall the suite
        try:
            while not ctx.join(timeout=5):
                if time.monotonic() > deadline:
                    for p in ctx.processes:
                        p.kill()
                    pytest.fail("the two DDP workers were still running after 600 s (a collective is waiting)")
            return out
        except mp.ProcessRaisedException as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
            for p in ctx.processes:
                p.kill()
    raise AssertionError("unreachable")


# Bit-exact comparisons need the same kernels in every run (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


def test_two_rank_step_equals_single_process_step_with_frozen_bn(ddp_out: Path) -> None:
    model = _model()
    before = {k: v.clone() for k, v in _params(model).items()}
    _one_step(model, model, None, bn_train=False)
    ddp = load_file(str(ddp_out / "ddp_bn_train_False.safetensors"))
    for k, v in _params(model).items():
        assert not torch.equal(v, before[k]) or k.endswith("bias"), f"{k} did not move"
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_two_rank_step_equals_ghost_batch_reference_with_train_bn(ddp_out: Path) -> None:
    model = _model()
    opt = build_optimizer(model, RECIPE, torch.device("cpu"))
    model.train()
    full = _batch(None)
    for half in (slice(0, B // 2), slice(B // 2, B)):
        logits = model(full.inputs[half])
        loss = torch.sum(-full.targets[half] * torch.log_softmax(logits, 1), 1).mean() / 2
        loss.backward()
    opt.step()
    ddp = load_file(str(ddp_out / "ddp_bn_train_True.safetensors"))
    for k, v in _params(model).items():
        torch.testing.assert_close(ddp[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_ddp_fit_writes_one_run_with_metrics_over_the_whole_test_set(ddp_out: Path) -> None:
    run = ddp_out / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_images"] == 200  # 2 ranks x 100, all-reduced
    meta = read_metadata(run / "model.safetensors")
    assert json.loads(meta["world_size"]) == 2
    assert not list(run.glob("*.tmp*"))


def test_fit_leaves_the_callers_process_group_alone(ddp_out: Path) -> None:
    """A group fit did not create survives it: destroying it made the next fit re-create it on the
    same port on each rank at its own pace, and one rank could wait forever on the stale store."""
    assert [json.loads((ddp_out / f"group_after_fit_rank{r}.json").read_text()) for r in range(2)] == [True, True]


def test_only_rank_0_downloads_and_every_rank_gets_its_error(ddp_out: Path) -> None:
    seen = [json.loads((ddp_out / f"fetch_rank{r}.json").read_text()) for r in range(2)]
    assert [s["calls"] for s in seen] == [[0], []]
    assert all(s["error"] == "simulated: download failed, offline" for s in seen)


def test_rank_0_decides_the_run_folder_for_every_rank(ddp_out: Path) -> None:
    seen = [json.loads((ddp_out / f"claimed_rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1] == ["runs/tiny-20250101-120000", "runs/tiny-20250101-120000-2"]
    assert sorted(p.name for p in (ddp_out / "runs").iterdir()) == ["tiny-20250101-120000", "tiny-20250101-120000-2"]


def test_ddp_on_a_folder_decodes_once_and_keeps_its_class_names(ddp_out: Path) -> None:
    run = ddp_out / "folder-run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["test_images"] == 3  # 20 % of 5 per class, scored once over 2 ranks
    meta = read_metadata(run / "model.safetensors")
    assert json.loads(meta["label_names"]) == ["a [2]", "b 1", "ç"] and json.loads(meta["world_size"]) == 2
    assert len(list((ddp_out / "cache" / "folders").glob("*.npz"))) == 1  # rank 0 decoded, rank 1 read it
