"""What ``--dataset``, ``--test-split``, ``--init`` and ``--freeze-backbone`` change in a run.

Kept out of the loop: a new run's spec takes the dataset's classes (the head), its class names and
a normalisation (the folder's own mean/std from scratch, the source weights' for a fine-tune);
``run.json`` records the dataset, how its test images were chosen and the init source, so a resume,
the weights' metadata and ``aperture eval`` all see the same images and names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from aperture_zoo.datasets import Dataset, dataset_name, load_dataset
from aperture_zoo.registry import ModelSpec

from .finetune import InitSource, freeze_backbone, freeze_stages, load_init, resolve_init

_LOADED: dict[tuple[Any, ...], Dataset] = {}  # one decode per process: new_run and the loop share it


def run_dataset(run: dict[str, Any], data_dir: Any = None, download: bool = False,
                say: Callable[[str], None] | None = None) -> Dataset | None:
    """The run's dataset (None for CIFAR-10, which the loop reads as it always has)."""
    name = run.get("dataset", "cifar10")
    if name == "cifar10":
        return None
    key = (name, str(data_dir), run.get("test_split"), run.get("split_seed"))
    if key not in _LOADED:
        _LOADED.clear()  # keep at most one dataset in memory
        _LOADED[key] = load_dataset(name, data_dir, download, run.get("test_split"), int(run.get("split_seed") or 0),
                                    say=say, progress=_progress_bar(say))
    return _LOADED[key]


def _progress_bar(say: Callable[[str], None] | None) -> Callable[[int, int], None] | None:
    """A rich bar on stderr while a folder decodes (only where messages are shown, on a terminal)."""
    if say is None:
        return None
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = Progress(TextColumn("decoding"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                    console=console, transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task("decode", total=total)
        state["bar"].update(state["task"], completed=done)
        if done >= total:
            state["bar"].stop()

    return update


def new_run(spec: ModelSpec, run: dict[str, Any], dataset: str | None, test_split: float | None,
            init: str | None, freeze: bool, data_dir: Any, download: bool,
            say: Callable[[str], None] | None = None) -> tuple[ModelSpec, dict[str, Any]]:
    """A new run's spec and ``run.json`` entries for its dataset and init (unchanged for plain CIFAR-10)."""
    name = dataset_name(dataset)
    if name in ("cifar10", "cifar100") and test_split is not None:
        from aperture_zoo.datasets import DatasetError

        raise DatasetError(f"--test-split applies to a folder without its own test/; {name} has a fixed test set")
    if name == "cifar10" and init is None and not freeze:
        return spec, run
    if freeze and init is None:
        from .finetune import InitError

        raise InitError("--freeze-backbone trains only the head of pretrained weights; add --init TAG|PATH "
                        f"(e.g. --init {spec.name}.fast)")
    run = {**run, "dataset": name}
    if name not in ("cifar10", "cifar100"):
        run["test_split"], run["split_seed"] = test_split, int(run["seed"])
    data = run_dataset(run, data_dir, download, say)
    classes = data.classes if data is not None else spec.label_names
    mean, std = data.mean_std() if data is not None else (spec.mean, spec.std)
    if data is not None:
        run["data"] = data.record
        run["test_split"] = data.record.get("test_split")  # None when the folder has its own test/
        if data.skipped and say:
            shown = "; ".join(f"{p}: {r}" for p, r in data.skipped[:5])
            say(f"skipped {len(data.skipped)} unreadable file(s): {shown}{' ...' if len(data.skipped) > 5 else ''}")
    if init is not None:
        source = resolve_init(init, spec)
        mean, std = source.spec.mean, source.spec.std  # the backbone learnt on inputs normalised so
        run["init"], run["freeze_backbone"] = source.record(), bool(freeze)
    spec = spec.replace(num_classes=len(classes), class_names=tuple(classes), mean=tuple(mean), std=tuple(std))
    run["arch"], run["spec"] = spec.arch_dict(), _spec_json(spec)
    return spec, run


def _spec_json(spec: ModelSpec) -> dict[str, Any]:
    import json

    return json.loads(spec.to_json())


def prepare_model(run: dict[str, Any], fresh: bool, frozen_stages: int = 0) -> Callable[[nn.Module], None]:
    """What the loop applies to a newly built network: the init weights (new runs), the frozen backbone.

    ``frozen_stages`` (the recipe's) applies to runs from ``--init`` weights only: a random stem learns.
    """
    def apply(model: nn.Module) -> None:
        init = run.get("init")
        if fresh and init:
            from pathlib import Path

            from aperture_zoo.files import file_sha256

            path = Path(init["path"])
            if file_sha256(path) != init["sha256"]:
                from .finetune import InitError

                raise InitError(f"--init file {str(path)!r} changed since the run was set up; start it again")
            load_init(model, InitSource(init["ref"], path, init["sha256"], _source_spec(path)))
        if run.get("freeze_backbone"):
            freeze_backbone(model)
        elif init and frozen_stages:
            freeze_stages(model, frozen_stages)

    return apply


def _source_spec(path: Any) -> ModelSpec:
    from aperture_zoo.weights import read_metadata, spec_from_metadata

    spec = spec_from_metadata(read_metadata(path))
    assert spec is not None  # checked by resolve_init
    return spec


def weights_metadata(run: dict[str, Any]) -> dict[str, Any]:
    """What a run's model.safetensors records about its data and init, beside the spec."""
    out: dict[str, Any] = {"dataset": run.get("dataset", "cifar10")}
    for key in ("data", "init", "freeze_backbone", "probe"):
        if run.get(key) is not None:
            out[key] = run[key]
    return out
