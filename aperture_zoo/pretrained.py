"""Where pretrained weights come from, and the one-line ``load()``.

Resolution order for ``load(name, pretrained=True)``:

1. ``weights=`` — an explicit safetensors path;
2. ``model_cards/<name>/model.safetensors`` of a source checkout.

Nothing is downloaded implicitly from anywhere else; when no weights are found the error says
where it looked and how to get them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .model import ResNet, create_model
from .registry import get_spec
from .weights import WeightsError, load_weights

WEIGHTS_FILENAME = "model.safetensors"


class NoPretrainedWeightsError(WeightsError):
    """No published or local weights could be found for a model."""


def model_cards_dir() -> Path:
    """``model_cards/`` of the source checkout this package runs from (may not exist)."""
    return Path(__file__).resolve().parent.parent / "model_cards"


def resolve_weights(name: str, weights: str | os.PathLike[str] | None = None) -> Path:
    """The weights file ``load(name, pretrained=True)`` would use, following the order above."""
    get_spec(name)  # unknown names fail here, with suggestions
    if weights is not None:
        return Path(weights)
    looked: list[str] = []
    card_file = model_cards_dir() / name / WEIGHTS_FILENAME
    if card_file.is_file():
        return card_file
    looked.append(str(card_file))
    raise NoPretrainedWeightsError(
        f"no published weights for {name}: looked in {', '.join(looked)}. Train them with "
        f"`aperture train {name}` and pass weights='runs/.../model.safetensors'."
    )


def load(
    name: str,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> ResNet:
    """A model in eval mode on ``device``; trained weights when ``pretrained`` or ``weights``."""
    model = create_model(name)
    if pretrained or weights is not None:
        load_weights(model, resolve_weights(name, weights))
    return model.to(device).eval()
