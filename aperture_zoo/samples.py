"""The main job of a fresh checkout: classify real CIFAR-10 test images with each published model.

Thirty images (three per class) ship with the package in ``sample_images/`` with their true
labels, so ``make run`` shows real predictions with no download. A model without published
weights is reported as such, never run with random weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import warnings

from .files import read_json
from .pretrained import NoPretrainedWeightsError, PublishedWeightsUnavailableError, open_model, unpublished_note
from .predict import UncalibratedWarning, predict_proba
from .registry import list_models

SAMPLES_DIR = Path(__file__).resolve().parent / "sample_images"


@dataclass
class SampleResult:
    model: str
    published: bool                           # False: no published weights, nothing was run
    unavailable: str | None = None            # published, but could not be fetched (why)
    predictions: list[tuple[str, str, float]] = field(default_factory=list)  # (file, predicted, probability)
    correct: int = 0
    temperature: float | None = None          # the probabilities are softmax(logits / T), as predict gives them
    note: str | None = None                   # $APERTURE_WEIGHTS_DIR's file answered: not the published weights

    @property
    def accuracy(self) -> float | None:
        return 100.0 * self.correct / len(self.predictions) if self.predictions else None


def sample_images() -> list[tuple[Path, str]]:
    """(path, true label) of the bundled images, in a fixed order."""
    index = read_json(SAMPLES_DIR / "labels.json", "reinstall aperture_zoo (the bundled images are damaged)")
    return [(SAMPLES_DIR / row["file"], row["label"]) for row in index["images"]]


def classify_samples(models: list[str] | None = None) -> list[SampleResult]:
    """Top-1 of each model with published weights on the bundled images, with the calibrated probability
    ``predict`` gives (softmax(logits / T), T from the weights; T = 1 when they carry none)."""
    images = sample_images()
    results = []
    for name in models or list_models():
        try:
            model, loaded = open_model(name)  # what load(name, pretrained=True) reads, and where it came from
        except PublishedWeightsUnavailableError as exc:
            results.append(SampleResult(name, published=True, unavailable=str(exc)))
            continue
        except NoPretrainedWeightsError:
            results.append(SampleResult(name, published=False))
            continue
        with warnings.catch_warnings():  # weights without a temperature: T = 1, said by `temperature` being None
            warnings.simplefilter("ignore", UncalibratedWarning)
            probs = predict_proba(model, [p for p, _ in images])  # the one rule `predict` follows too
        top = probs.max(1)
        labels = model.spec.label_names
        res = SampleResult(name, published=True, temperature=model.temperature, note=unpublished_note(loaded))
        for (path, truth), idx, prob in zip(images, top.indices.tolist(), top.values.tolist()):
            res.predictions.append((path.name, labels[idx], prob))
            res.correct += labels[idx] == truth
        results.append(res)
    return results
