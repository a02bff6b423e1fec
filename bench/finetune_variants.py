"""Fine-tune recipe variants scored on the run's validation split: how the ``finetune`` recipe is chosen.

Each variant (overrides of the ``finetune`` recipe) is one ``fit`` from the published weights on one
folder and one split (seed 0). The folder run holds out a validation share of its training images
(``train/dataset_run.py``); the variant with the highest validation top-1 wins, ties going to the
lower validation loss, so the held-out test images play no part in the choice (their figures are
printed beside, for the record). ``--l2`` also fits the probe head alone for each L2 penalty on the
first run's features (train, validation and test passes through the adapted backbone) and scores it
the same way. Accuracy is what to compare here: wall times under a changing load are not
(bench/finetune_speed.py measures the time).

    python bench/finetune_variants.py --make digits --json out.json
    python bench/finetune_variants.py --dataset DIR --variants '[{"epochs": 3}, {"frozen_stages": 3}]'
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from finetune_speed import folder_parser, the_folder

DEFAULT = [{"epochs": 3}, {"epochs": 4}, {"epochs": 5}, {"epochs": 4, "frozen_stages": 3}]


def probe_grid(grid: list[float], out: dict[str, Any]) -> None:
    """Wrap the loop's probe so that the first run also scores the probe head alone for each L2 in ``grid``."""
    import aperture_zoo.train.loop as loop
    from aperture_zoo.device import inference_dtype
    from aperture_zoo.train.probe import fit_linear, pooled_features

    original = loop.probe_run

    def probe_run(recipe: Any, record: dict[str, Any], state: Any, data: Any, device: Any, show: bool = True) -> Any:
        if grid and not out:
            m, dtype = state.model, inference_dtype(device)
            feats = {name: pooled_features(m, split.images, data.mean, data.std, adapt_bn=name == "train", seed=0,
                                           dtype=dtype, channels_last=recipe.channels_last)
                     for name, split in (("train", data.train), ("val", data.val), ("test", data.test))}
            labels = {"train": data.train.labels, "val": data.val.labels, "test": data.test.labels}
            for l2 in grid:
                w, b, _ = fit_linear(feats["train"], labels["train"], m.fc.out_features, l2, recipe.label_smoothing)
                out[str(l2)] = {k: round(100 * float(((f @ w.T + b).argmax(1) == labels[k]).float().mean()), 2)
                                for k, f in feats.items()}
            print("probe head alone, top-1 by l2:", json.dumps(out), flush=True)
        return original(recipe, record, state, data, device, show)  # the run's own probe, as without the grid

    loop.probe_run = probe_run


def main() -> None:
    p = folder_parser(__doc__.splitlines()[0])
    p.add_argument("--variants", default=json.dumps(DEFAULT), help="JSON list of recipe overrides")
    p.add_argument("--l2", default="0.0003,0.001,0.003,0.01,0.03,0.1", help="probe L2 grid ('' for none)")
    args = p.parse_args()

    from aperture_zoo.device import device_name
    from aperture_zoo.train import TrainConfig, fit
    from aperture_zoo.train.recipes import FINETUNE

    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-variants-"))
    folder = the_folder(args, work)
    grid: dict[str, Any] = {}
    probe_grid([float(v) for v in args.l2.split(",") if v], grid)
    report: dict[str, Any] = {"machine": device_name("cpu", detail=True), "folder": str(folder), "arch": args.arch,
                              "base_recipe": FINETUNE.to_dict(), "variants": [], "probe_alone_by_l2": grid}
    for i, kw in enumerate(json.loads(args.variants)):
        start = time.perf_counter()
        result = fit(TrainConfig(model=args.arch, dataset=str(folder), init=f"{args.arch}.fast",
                                 recipe=FINETUNE.replace(**kw), seed=0, device="cpu", out_dir=work / f"v{i}",
                                 progress=False))
        last = result.metrics[-1]
        row = {"overrides": kw, "val_top1": round(last["val_top1"], 2), "val_loss": round(last["val_loss"], 4),
               "test_top1": round(result.test_top1, 2), "test_loss": round(result.test_loss, 4),
               "wall_s": round(time.perf_counter() - start, 1), "load": os.getloadavg()}
        report["variants"].append(row)
        print(json.dumps(row), flush=True)
    best = max(report["variants"], key=lambda r: (r["val_top1"], -r["val_loss"]))
    report["chosen_on_validation"] = best["overrides"]
    print("chosen on validation:", json.dumps(best["overrides"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
