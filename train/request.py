"""Whether a run folder holds the run a request asks for, so that it may be counted or continued as that run.

``train-zoo`` and ``train --seeds`` find run folders by name (``RUNS/<model>``, ``OUT/seed<K>``); a
name proves nothing, so a folder counts as done, or resumes, only when its recorded settings are the
request's: the same model, recipe, seed, dataset (CIFAR-10/100 by name, a folder by its content
manifest), subset and test subset. It is ``--resume``'s rule (``settings._check_same_run``, and
``dataset_run.check_same_content`` for a folder's content) applied with every option asked: an
option left out means its default, not "as the run was".
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from aperture_zoo.datasets import dataset_name, is_builtin
from aperture_zoo.registry import ModelSpec, get_spec

from .dataset_run import check_same_content
from .recipes import FAST, FINETUNE
from .rundir import RunDir
from .settings import Run, TrainConfig, _check_same_run


def folder_manifest(dataset: str):  # type: ignore[no-untyped-def]
    """A dataset folder's content manifest (every file hashed, nothing decoded); a missing folder is refused as
    ``train`` refuses it."""
    from aperture_zoo.folder import hash_scan, scan_folder

    return hash_scan(scan_folder(dataset)).manifest()


def check_same_request(cfg: TrainConfig, folder: str | Path) -> None:
    """Raise ``checkpoint.OtherRun`` (its ``what`` names the difference) unless ``folder`` holds ``cfg``'s run.

    ``cfg`` is a new run's request (model, recipe, seed, dataset, subsets; ``resume`` unset).
    """
    rundir = RunDir(Path(folder))
    saved = rundir.record()
    recorded = ModelSpec.from_dict(saved["spec"])
    model = cfg.model if isinstance(cfg.model, ModelSpec) else get_spec(str(cfg.model))
    # the classes come from the dataset, compared below by name and content; the architecture is compared here
    model = model.replace(num_classes=recorded.num_classes, class_names=recorded.class_names)
    dataset = dataset_name(cfg.dataset)
    manifest = None if is_builtin(dataset) else folder_manifest(dataset)  # a missing folder: refused first
    asked = dataclasses.replace(cfg, model=model, dataset=dataset, seed=cfg.seed or 0,
                                recipe=(cfg.recipe or (FINETUNE if cfg.init is not None else FAST)).validate())
    run = Run(recorded, rundir.recipe(), saved, rundir.path)
    _check_same_run(asked, run, exact=True)
    if manifest is not None and isinstance(saved.get("data"), dict):
        check_same_content(saved["data"], manifest, dataset, rundir.path)


def request_identity(folder: str | Path) -> str:
    """What makes a run folder's run apart from its seed, as a short hash: runs count as seeds of one request (and
    share a mean ± std) only when theirs are equal. A folder dataset counts by its content, an init by its bytes."""
    import hashlib
    import json

    rundir = RunDir(Path(folder))
    saved = rundir.record()
    data = saved.get("data") if isinstance(saved.get("data"), dict) else {}
    init = saved.get("init") if isinstance(saved.get("init"), dict) else {}
    key = {"arch": saved["arch"], "dataset": data.get("manifest_sha256") or saved.get("dataset", "cifar10"),
           **{k: saved.get(k) for k in ("subset", "test_subset", "val_split", "test_split", "freeze_backbone")},
           "init": init.get("sha256"), "recipe": rundir.recipe().training_sha256()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]


__all__ = ["check_same_request", "folder_manifest", "request_identity"]
