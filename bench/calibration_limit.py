"""How low can one temperature take the published models' ECE? Prints, never asserts.

For each model, on every CIFAR-10 test image (plain logits, as `aperture predict` and the ONNX
file use them): the cross-fitted ECE of the temperature fitted by NLL (what the cards report);
the cross-fitted ECE of the temperature that minimises the 15-bin ECE on the other half; and the
floor, the lowest ECE any temperature on a grid of 400 values over 0.3-1.5 gives on all 10,000
images at once (chosen on the images it is scored on, so no held-out figure can be lower). If the
floor stays above a target, no single temperature reaches it for these weights.

    python bench/calibration_limit.py --data-dir DIR_WITH_CIFAR10 [--models resnet10,resnet22]
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main() -> None:
    import torch

    import aperture_zoo
    from aperture_zoo.calibration import cross_fit, ece, softmax, stratified_halves
    from aperture_zoo.data import load_split
    from aperture_zoo.registry import list_models
    from aperture_zoo.train.evaluate import evaluate_sums

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/")
    p.add_argument("--models", default=",".join(list_models()))
    args = p.parse_args()
    test = load_split("test", args.data_dir)
    images, labels = torch.as_tensor(test.images), torch.as_tensor(test.labels)
    y = test.labels
    grid = np.exp(np.linspace(np.log(0.3), np.log(1.5), 400))
    for name in args.models.split(","):
        model = aperture_zoo.load(name, pretrained=True)
        collected: list = []
        evaluate_sums(model, images, labels, torch.tensor(model.spec.mean), torch.tensor(model.spec.std),
                      model.spec.num_classes, 500, logits_out=collected)
        logits = torch.cat([c[0] for c in collected]).numpy().astype(np.float64)
        nll_fit = cross_fit(logits, y)
        a, b = stratified_halves(y)
        held_out = []
        for fit_on, score_on in ((a, b), (b, a)):
            t = grid[int(np.argmin([ece(softmax(logits[fit_on], t), y[fit_on]) for t in grid]))]
            held_out.append(ece(softmax(logits[score_on], t), y[score_on]))
        in_sample = [ece(softmax(logits, t), y) for t in grid]
        print(json.dumps({"model": name, "images": len(y), "ece_uncalibrated": round(100 * nll_fit["ece"], 2),
                          "ece_nll_temperature": round(100 * nll_fit["ece_calibrated"], 2),
                          "ece_ece_minimising_temperature": round(100 * float(np.mean(held_out)), 2),
                          "ece_floor_any_temperature": round(100 * float(min(in_sample)), 2),
                          "floor_temperature": round(float(grid[int(np.argmin(in_sample))]), 4)}), flush=True)


if __name__ == "__main__":
    main()
