"""Training and evaluation (installed as ``aperture_zoo.train``).

``fit(TrainConfig(model="resnet22", recipe=get_recipe("fast")))`` trains a run directory;
``train_zoo(ZooConfig())`` trains, checks and summarises every model, resuming where it stopped;
``evaluate(model, split)`` scores a model on a CIFAR-10 split. ``python -m aperture_zoo.train`` (and
``torchrun ... -m aperture_zoo.train``) take the same options as ``aperture train``.
"""

from .evaluate import EvalResult, evaluate
from .loop import fit
from .recipes import RECIPES, Recipe, RecipeError, apply_overrides, get_recipe
from .rundir import RunDirError
from .settings import (NothingToResume, TimeBudgetReached, TrainConfig, TrainingDiverged, TrainingError,
                       TrainingInterrupted, TrainResult)
from .zoo import ZooConfig, ZooError, ZooResult, train_zoo

__all__ = [
    "EvalResult", "NothingToResume", "RECIPES", "Recipe", "RecipeError", "RunDirError", "TimeBudgetReached",
    "TrainingDiverged", "TrainConfig", "TrainResult", "TrainingError",
    "TrainingInterrupted", "ZooConfig", "ZooError", "ZooResult", "apply_overrides", "evaluate", "fit", "get_recipe",
    "train_zoo",
]
