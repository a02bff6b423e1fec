"""Torch-free inference on an exported file: onnxruntime, numpy and pillow only.

Apps use it without PyTorch installed (``pip install --no-deps aperture-zoo`` beside onnxruntime,
numpy and pillow), or copy it into their own code together with ``runtime.py`` (provider choice),
``errors.py`` and ``aperture_zoo/images.py`` (the image rule; their one import, ``ApertureError``,
can become ``Exception``). Everything the model needs (class names, whether normalisation is in the graph,
mean/std, fixed or dynamic batch, float32 or float16 input) is read from the file::

    from aperture_zoo.export.predict import OnnxClassifier

    clf = OnnxClassifier("resnet22.onnx")            # provider="auto": CUDA if it works, else CPU
    for label, prob in clf.predict("cat.jpg", top_k=3)[0].top:
        print(label, prob)
    probs = clf.predict_proba(batch)                  # batch: N x 32 x 32 x 3 uint8, or N x 3 x 32 x 32 float in [0, 1]
    print(clf.describe())                             # calibrated? flip TTA in the graph?

Probabilities are the file's own ``probabilities`` output: the calibrator fitted for its weights
applied to the logits in the graph (the numpy ``Calibrator.apply`` gives the same within 1e-4), and
averaged over the image and its mirror when it was exported with ``--tta flip``. A file exported
before calibrators has one temperature there, and says so; an older file without that output
falls back to the plain softmax of its logits, and every prediction says those probabilities are
uncalibrated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from aperture_zoo.calibrators import from_metadata
from aperture_zoo.images import ImageError, load_image, load_images, resize_bilinear  # noqa: F401  (the rule, re-exported)

from .errors import ExportError, OnnxFileError
from .runtime import Provider, check_onnx_path, cuda_options_note, parse_cuda_options

PROBS_NAME = "probabilities"  # the calibrated output (onnx_export.PROBS_NAME; that module needs torch)
UNCALIBRATED = "probabilities are uncalibrated (plain softmax of the logits: the file has no 'probabilities' output; re-export it)"

@dataclass
class Prediction:
    source: str
    top: list[tuple[str, float]]           # (class name, probability), most likely first
    notices: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.top[0][0]

    def to_dict(self) -> dict:
        return {"image": self.source, "top": [{"label": c, "probability": p} for c, p in self.top],
                "notices": self.notices}


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


MAX_SIDE = 1024  # input sides above this are not a CIFAR classifier: an image would be blown up to gigabytes


class OnnxClassifier:
    """A CIFAR-10 classifier from an ``aperture export`` file, without PyTorch: ONNX in onnxruntime, or any
    format in its own runtime (``runtime``: OpenVINO ``.xml`` or ``.onnx``, ExecuTorch ``.pte``, LiteRT
    ``.tflite``; ``sessions.open_session``). ``Classifier`` is the same class under a format-neutral name."""

    def __init__(self, path: str | os.PathLike[str], provider: Provider = "auto", threads: int | None = None,
                 cuda_options: str | dict | None = None, runtime: str | None = None) -> None:
        """``cuda_options``: CUDA provider options (``runtime.CUDA_OPTIONS``, e.g. ``"prefer_nhwc=1"``); unset keys
        keep onnxruntime's defaults. Off CUDA they are checked, then unused: ``self.notes`` says so.
        ``runtime``: the runtime to run the file in (default: its format's own)."""
        options = parse_cuda_options(cuda_options)
        if options.get("enable_cuda_graph") == "1":  # a captured graph replays fixed device addresses
            raise ExportError("enable_cuda_graph=1 needs IO binding with fixed device buffers, which OnnxClassifier "
                              "does not use; measure it with `aperture bench NAME --cuda-options enable_cuda_graph=1`")
        from .sessions import open_session

        self.path = check_onnx_path(path)
        self.session = open_session(self.path, provider, threads=threads, cuda_options=options, runtime=runtime)
        note = cuda_options_note(options, self.session)
        self.notes: list[str] = [note] if note else []
        meta = self.session.get_modelmeta().custom_metadata_map
        from aperture_zoo.provenance import check_own_report

        check_own_report(self.path, meta.get("weights_sha256"))  # a report beside it vouches for these bytes only
        inputs, outputs = self._check_signature()
        self.input_name = inputs[0].name
        # float32 normally; float16 for an fp16 file exported with fp16 I/O (`--fp16-io`)
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        shape = inputs[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.image_size = (int(shape[3]), int(shape[2]))
        output_names = [o.name for o in outputs]
        self.has_probabilities = PROBS_NAME in output_names
        self._output_names = [output_names[0], PROBS_NAME] if self.has_probabilities else [output_names[0]]
        # A calibrator (or an older file's temperature) must be usable: a bad one is refused here.
        self.calibrator = from_metadata(meta, repr(str(self.path)))
        self.temperature = self.calibrator.temperature if self.calibrator and self.calibrator.kind == "temperature" else None
        self.tta = meta.get("tta", "none")
        self.metadata = dict(meta)
        self._read_metadata(meta, int(outputs[0].shape[-1]))

    def _check_signature(self) -> tuple[list, list]:
        """One float N x 3 x H x W input and an N x classes output, or a one-line refusal."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise OnnxFileError(
                f"{str(self.path)!r} is not an aperture_zoo export: it needs inputs "
                f"{[(i.name, i.shape) for i in inputs]}, not one N x 3 x H x W image batch; export one with "
                "`aperture export NAME --onnx`"
            )
        shape = inputs[0].shape
        not_ours = (
            inputs[0].type not in ("tensor(float)", "tensor(float16)")
            or shape[1] != 3 or not all(isinstance(d, int) and 0 < d <= MAX_SIDE for d in shape[2:])
            or (isinstance(shape[0], int) and shape[0] < 1)  # a fixed batch of 0 images runs nothing
            or len(outputs) < 1 or len(outputs[0].shape) != 2 or not isinstance(outputs[0].shape[-1], int)
        )
        if not_ours:
            raise OnnxFileError(
                f"{str(self.path)!r} is not an aperture_zoo export: it takes {inputs[0].type} shaped "
                f"{_dims(shape)} and gives {_dims(outputs[0].shape) if outputs else 'nothing'}, not float "
                "N x 3 x H x W images -> N x classes; export one with `aperture export NAME --onnx`"
            )
        return inputs, outputs

    def _read_metadata(self, meta: dict[str, str], n_out: int) -> None:
        """Class names, normalisation and calibration from ``metadata_props``, checked against the graph."""
        try:
            labels = json.loads(meta["label_names"]) if "label_names" in meta else [f"class_{i}" for i in range(n_out)]
            self.normalize_in_graph = json.loads(meta.get("normalize_in_graph", "true"))
            self.mean = np.asarray(json.loads(meta.get("mean", "[0, 0, 0]")), np.float32).reshape(1, 3, 1, 1)
            self.std = np.asarray(json.loads(meta.get("std", "[1, 1, 1]")), np.float32).reshape(1, 3, 1, 1)
            probs_meta = json.loads(meta.get("probabilities", "{}") or "{}")
            self.calibrated = self.has_probabilities and bool(probs_meta.get("calibrated", self.calibrator is not None))
        except (ValueError, TypeError, AttributeError) as exc:
            raise OnnxFileError(
                f"{str(self.path)!r} has damaged metadata ({str(exc)[:120]}); export it again with "
                "`aperture export NAME --onnx`"
            ) from None
        if (not isinstance(labels, list) or len(labels) != n_out or not all(isinstance(x, str) for x in labels)
                or not isinstance(self.normalize_in_graph, bool)
                or not (np.isfinite(self.mean).all() and np.isfinite(self.std).all() and (self.std > 0).all())):
            raise OnnxFileError(
                f"{str(self.path)!r} has metadata that does not fit its graph ({n_out} outputs; label_names, "
                "normalize_in_graph, mean or std malformed); export it again with `aperture export NAME --onnx`"
            )
        self.labels: list[str] = labels

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _to_input(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(images)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4:
            raise ImageError(f"expected images shaped N x H x W x 3 or N x 3 x H x W, got {x.shape}")
        if x.dtype == np.uint8:  # decoded pixels: N x H x W x 3 (or already N x 3 x H x W)
            if x.shape[-1] == 3 and x.shape[1] != 3:
                x = x.transpose(0, 3, 1, 2)
            x = x.astype(np.float32) / 255.0
        elif x.dtype.kind != "f":
            raise ImageError(f"pixels must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}; "
                             "convert them first (uint8 is what image files decode to)")
        else:  # floats must already be in [0, 1]: 0..255 floats would be classified as white noise
            x = x.astype(np.float32, copy=False)
            if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
                got = f"range [{x.min():g}, {x.max():g}]" if np.isfinite(x).all() else "NaN or infinity"
                raise ImageError(f"float pixels must be finite and in [0, 1], got {got}; divide 0..255 pixels by 255 "
                                 "(or pass them as uint8)")
        if x.shape[1:] != (3, self.image_size[1], self.image_size[0]):
            h, w = self.image_size[1], self.image_size[0]
            fix = ("these are channels-last (N x H x W x 3): transpose them with x.transpose(0, 3, 1, 2)"
                   if x.shape[1:] == (h, w, 3) else "decode files with load_image (it resizes)")
            raise ImageError(f"expected images of 3 x {h} x {w}, got {tuple(x.shape[1:])}; {fix}")
        if not self.normalize_in_graph:
            x = (x - self.mean) / self.std
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def describe(self) -> str:
        """What the probabilities are: calibrated or not, and whether flip TTA is in the graph."""
        if self.calibrated and self.calibrator is not None:
            what = f"calibrated probabilities ({self.calibrator.describe()})"
            if "calibrator" not in self.metadata:
                what += ("; the file records only a temperature (exported before calibrators): re-export it for "
                         "the calibrator chosen by held-out NLL")
        elif self.has_probabilities:
            what = "probabilities are uncalibrated (no calibrator was known for these weights at export)"
        else:
            what = UNCALIBRATED
        return what + ("; flip test-time augmentation in the graph" if self.tta == "flip" else "")

    def _run(self, images: np.ndarray) -> list[np.ndarray]:
        x = self._to_input(images)
        if self.fixed_batch is None:
            return [o.astype(np.float32) for o in self.session.run(self._output_names, {self.input_name: x})]
        outs: list[list[np.ndarray]] = [[] for _ in self._output_names]
        b = self.fixed_batch
        for i in range(0, len(x), b):
            chunk = x[i : i + b]
            pad = np.zeros((b - len(chunk), *x.shape[1:]), x.dtype)
            for acc, o in zip(outs, self.session.run(self._output_names, {self.input_name: np.concatenate([chunk, pad])})):
                acc.append(o[: len(chunk)])
        return [np.concatenate(acc).astype(np.float32) for acc in outs]

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits for uint8 N x H x W x 3 images or float N x 3 x H x W pixels in [0, 1]."""
        return self._run(images)[0]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """The file's ``probabilities`` output (calibrated); the plain softmax for older files."""
        out = self._run(images)
        return out[1] if self.has_probabilities else softmax(out[0])

    def predict(self, paths: str | os.PathLike[str] | list, top_k: int = 3) -> list[Prediction]:
        """Top-k (class, probability) for image files of any size and mode; the first bad file raises."""
        predictions, failures = self.predict_files(paths, top_k)
        if failures:
            raise failures[0][1]
        return predictions

    def predict_files(
        self, paths: str | os.PathLike[str] | list, top_k: int = 3
    ) -> tuple[list[Prediction], list[tuple[str, ImageError]]]:
        """Answers for every readable image, and ``(path, error)`` for each file that could not be read."""
        if top_k < 1:
            raise ImageError(f"--top-k must be at least 1, got {top_k}")
        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        decoded, failed = load_images(paths, self.image_size)
        failures = [(str(paths[i]), exc) for i, exc in failed]
        if not decoded:
            return [], failures
        probs = self.predict_proba(np.stack([img for _, img, _ in decoded]))
        k = max(1, min(top_k, probs.shape[1]))
        results = []
        extra = [] if self.calibrated else [self.describe()]
        for (i, _, notices), row in zip(decoded, probs):
            if not np.isfinite(row).all():  # NaN weights or a broken graph: never print "nan%"
                raise OnnxFileError(
                    f"{str(self.path)!r} gives non-finite outputs (NaN or infinity) for {str(paths[i])!r}: its "
                    "weights are damaged; export it again from finite weights"
                )
            if row.min() < -1e-6 or abs(float(row.sum()) - 1.0) > 1e-3:  # never print "173%"
                raise OnnxFileError(
                    f"{str(self.path)!r} gives a '{PROBS_NAME}' output that is not probabilities (values from "
                    f"{row.min():.3g} to {row.max():.3g}, sum {row.sum():.4g}); export it again with `aperture export "
                    "NAME --onnx`"
                )
            order = np.argsort(-row)[:k]
            results.append(Prediction(str(paths[i]), [(self.labels[j], float(row[j])) for j in order],
                                      [*notices, *extra]))
        return results, failures


Classifier = OnnxClassifier


def _dims(shape: list) -> str:
    return " x ".join(str(d) for d in shape) if shape else "a scalar"
