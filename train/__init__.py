"""Training and evaluation (installed as ``aperture_zoo.train``).

``fit(TrainConfig(model="resnet22", recipe=get_recipe("fast")))`` trains a run directory;
``evaluate(model, split)`` scores a model on a CIFAR-10 split. ``python -m aperture_zoo.train`` (and
``torchrun ... -m aperture_zoo.train``) take the same options as ``aperture train``.
"""

from .evaluate import EvalResult, evaluate
from .loop import TrainConfig, TrainingError, TrainingInterrupted, TrainResult, fit
from .recipes import RECIPES, Recipe, RecipeError, apply_overrides, get_recipe

__all__ = [
    "EvalResult", "RECIPES", "Recipe", "RecipeError", "TrainConfig", "TrainResult", "TrainingError",
    "TrainingInterrupted", "apply_overrides", "evaluate", "fit", "get_recipe",
]
