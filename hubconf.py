"""torch.hub entry points: ``torch.hub.load("<owner>/aperture_zoo", "resnet22", pretrained=True)``.

Each entry point is ``aperture_zoo.load`` for one registered model, so weights resolve exactly as
documented there (``weights=`` path / ``local-dir:`` / ``hf-hub:``, then ``$APERTURE_WEIGHTS_DIR``,
then the model's Hub repo, then ``model_cards/<name>/``). Works from a clone with
``source="local"``: the package is imported from this folder.
"""

from __future__ import annotations

dependencies = ["torch", "safetensors", "huggingface_hub"]


def _entry(name: str):
    def entry(pretrained: bool = False, weights: str | None = None, device: str = "cpu", **kwargs: object):
        from aperture_zoo.pretrained import load

        return load(name, pretrained=pretrained, weights=weights, device=device, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"{name} from the report's Table 1 (CIFAR-10, <5M parameters); eval mode.\n\n"
        "pretrained: load published weights (see aperture_zoo.load for where they come from).\n"
        "weights: a model.safetensors path, 'local-dir:DIR' or 'hf-hub:ORG/NAME[@rev]'.\n"
        "Other keyword arguments override the architecture (e.g. num_classes)."
    )
    return entry


resnet10 = _entry("resnet10")
resnet18 = _entry("resnet18")
resnet20 = _entry("resnet20")
resnet22 = _entry("resnet22")
resnet24 = _entry("resnet24")
resnet32 = _entry("resnet32")
