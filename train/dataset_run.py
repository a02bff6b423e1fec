"""What ``--dataset``, ``--test-split``, ``--init`` and ``--freeze-backbone`` change in a run.

Kept out of the loop: a new run's spec takes the dataset's classes (the head), its class names and
a normalisation (the folder's own mean/std from scratch, the source weights' for a fine-tune);
``run.json`` records the dataset, how its test images were chosen and the init source, so a resume,
the weights' metadata and ``aperture eval`` all see the same images and names.

A folder run also prints its data report before training (``datareport.py``), records the
folder's content manifest and its split as file lists (train, val, test), and holds out a
validation share of its training images by default (``DEFAULT_VAL_SPLIT``), so its weights carry a
temperature fitted on images it never trained on. ``--resume`` refuses a folder whose manifest
changed, naming what changed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from aperture_zoo.datasets import Dataset, dataset_name, load_dataset, public_dataset
from aperture_zoo.manifest import Manifest
from aperture_zoo.registry import ModelSpec

from .finetune import InitSource, freeze_backbone, freeze_stages, load_init, resolve_init, same_head

DEFAULT_VAL_SPLIT = 0.1  # of a folder's training images, per class, when --val-split is not given
MIN_VAL_IMAGES = 20      # a smaller default validation split would fit a temperature on noise: none then
_BIG = ("manifest", "split", "report")  # run.json's file lists: kept out of the weights' metadata

_LOADED: dict[tuple[Any, ...], Dataset] = {}  # one decode per fit: new_run and the loop share it


def forget() -> None:
    """Start a fit afresh: a folder may have changed since the last one in this process (it is read again)."""
    _LOADED.clear()


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
    from aperture_zoo.terminal import console as gated_console

    console = gated_console(stderr=True)
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
            say: Callable[[str], None] | None = None, val_split: float | None = None) -> tuple[ModelSpec, dict[str, Any]]:
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
    if data is not None and data.report is not None:
        run["data"] = {**data.record, "report": data.report.to_dict(), "manifest": data.manifest.to_record()}
        run["val_split"], run["val_rule"], note = _default_val(val_split, len(data.train))
        for line in data.report.lines() + ([note] if note else []):
            if say:
                say(line)
    if init is not None:
        source = resolve_init(init, spec)
        mean, std = source.spec.mean, source.spec.std  # the backbone learnt on inputs normalised so
        run["init"], run["freeze_backbone"] = source.record(), bool(freeze)
    spec = spec.replace(num_classes=len(classes), class_names=tuple(classes), mean=tuple(mean), std=tuple(std))
    if init is not None:
        run["init"]["head"] = "kept" if same_head(source.spec, spec) else "new"
        if say and run["init"]["head"] == "new":
            say(f"--init: a new head for this dataset's {len(classes)} classes (the source's "
                f"{source.spec.num_classes} classes are not these by name)")
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
    """What a run's model.safetensors records about its data and init, beside the spec.

    A folder's manifest and split go by their SHA-256 (``manifest_sha256``), not as file lists:
    the run's ``run.json`` holds those. A folder goes by its name only (``folder:NAME``): the weights
    travel (Hub, cards) and the path on the machine that trained them is nobody's business; readers
    never read a path from metadata anyway (the user passes the folder, its content decides).
    """
    out: dict[str, Any] = {"dataset": public_dataset(run.get("dataset", "cifar10"))}
    for key in ("data", "init", "freeze_backbone", "probe"):
        if run.get(key) is not None:
            out[key] = run[key]
    if isinstance(out.get("data"), dict):
        out["data"] = {k: public_dataset(v) if k == "dataset" and isinstance(v, str) else v
                       for k, v in out["data"].items() if k not in _BIG}
    if isinstance(out.get("init"), dict):  # the starting weights go by SHA-256; a file by its name, not its path
        out["init"] = {**{k: v for k, v in out["init"].items() if k != "path"},
                       "ref": public_ref(str(out["init"].get("ref", "")))}
    return out


def public_ref(ref: str) -> str:
    """A Hub id or tag as given; a local file or folder by its name only."""
    if ref.startswith("hf-hub:") or not ("/" in ref or "\\" in ref or ref.startswith("local-dir:")
                                         or ref.endswith((".safetensors", ".pt", ".pth", ".bin", ".ckpt"))):
        return ref
    local = ref.startswith("local-dir:")
    return ("local-dir:" if local else "") + Path(ref.removeprefix("local-dir:").rstrip("/\\")).name


def _default_val(val_split: float | None, n_train: int) -> tuple[float, str, str | None]:
    """A folder run's validation split, its rule (a share of each class) and what to say about a default one."""
    if val_split is not None:
        return val_split, "share", None
    if round(DEFAULT_VAL_SPLIT * n_train) < MIN_VAL_IMAGES:
        return 0, "share", (f"no validation split: {n_train} training images are too few to hold out "
                            f"{MIN_VAL_IMAGES} for calibration, so the weights carry no temperature")
    return DEFAULT_VAL_SPLIT, "share", (
        f"holding out {DEFAULT_VAL_SPLIT:.0%} of each class's training images as a validation split: the weights' "
        "temperature is fitted there (--val-split 0 trains on all of them, uncalibrated)")


def split_files(record: dict[str, Any], data: Dataset, index: dict[str, Any], resume_dir: Any) -> None:
    """Record a new folder run's split as file lists; refuse to resume one whose folder or split changed."""
    train_files, test_files = data.files  # type: ignore[misc]
    drawn = {"train": sorted(train_files[i] for i in index["train"]), "test": sorted(test_files[i] for i in index["test"]),
             "val": sorted(train_files[i] for i in index.get("val", []))}
    saved = record.get("data") if isinstance(record.get("data"), dict) else {}
    if resume_dir is None:
        record["data"] = {**saved, "split": drawn}
        return
    check_same_content(saved, data.manifest, data.name, resume_dir)
    if "manifest" in saved and saved.get("split") != drawn:
        from .checkpoint import CheckpointError

        raise CheckpointError(f"cannot resume {str(resume_dir)!r}: the split drawn now differs from the file lists "
                              "its run.json records; start a new run")


def check_same_content(saved: dict[str, Any], now: Manifest, name: str, run_dir: Any) -> None:
    """Refuse a folder whose content (manifest) is not the one a run recorded in ``saved`` (run.json's ``data``).

    The one rule for a folder's identity: ``--resume`` and a run folder counted as a request's
    (``request.check_same_request``) both apply it; a run from before manifests were recorded has nothing to compare.
    """
    if "manifest" not in saved:
        return
    before = Manifest.from_record(saved["manifest"], f"{str(run_dir)!r}")
    if before.sha256 != now.sha256:
        from .checkpoint import OtherRun

        changes = now.changes_from(before)
        raise OtherRun(f"cannot resume {str(run_dir)!r}: its dataset {name!r} changed since the run started "
                       f"({changes}); resume on the original folder, or start a new run",
                       f"--dataset {saved.get('dataset', name)} (asked {name}, whose content differs: {changes})")


def batch_files(record: dict[str, Any], folder: Path, names: tuple[str, ...], resume_dir: Any) -> None:
    """Record a CIFAR run's batch files by SHA-256; refuse to resume over other files.

    A folder run has its manifest; CIFAR-10/100 have fixed splits but their files can still be
    replaced under a stopped run (another copy, a regenerated or edited batch), and a resume would
    then go on training on other images without a word.
    """
    from aperture_zoo.manifest import file_digest

    now = {name: file_digest(folder / name) or "unreadable" for name in names if (folder / name).exists()}
    saved = record.get("data_files")
    if resume_dir is None or not isinstance(saved, dict):
        record["data_files"] = now  # a new run, or one from before batch files were recorded
        return
    changed = sorted(set(saved) ^ set(now) | {n for n in set(saved) & set(now) if saved[n] != now[n]})
    if changed:
        from .checkpoint import CheckpointError

        raise CheckpointError(
            f"cannot resume {str(resume_dir)!r}: the data files in {str(folder)!r} are not the ones the run started "
            f"on ({len(changed)} changed: {', '.join(changed)}); resume with the original files (--data-dir), "
            "or start a new run")
