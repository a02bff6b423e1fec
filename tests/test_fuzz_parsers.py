"""Property-based tests over every parser of outside bytes: only the product's own errors escape.

Images, safetensors headers, CIFAR-10 batches, a run's JSON files, ONNX metadata and a Hub
``config.json`` are fed random and mutated bytes; each parse either succeeds or raises an
ApertureError (one line for the CLI), never a TypeError, KeyError, pillow or numpy traceback.
Bounded: few examples each, so the whole module runs in seconds.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from profiles import examples

from aperture_zoo.errors import ApertureError

FUZZ = settings(max_examples=examples(30), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(48 * 3, dtype=np.uint8).reshape(4, 12, 3)).save(buf, format="PNG")
    return buf.getvalue()


def _mutations(seed: bytes):  # type: ignore[no-untyped-def]
    """``seed`` with some bytes overwritten, cut short, or with random bytes appended."""
    return st.tuples(st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), max_size=6),
                     st.integers(0, len(seed)), st.binary(max_size=32)).map(
        lambda t: _mutate(seed, *t))


def _mutate(seed: bytes, edits: list[tuple[int, int]], cut: int, tail: bytes) -> bytes:
    data = bytearray(seed)
    for i, b in edits:
        data[i] = b
    return bytes(data[: max(cut, 1)]) + tail


# ------------------------------------------------------------------ images

@FUZZ
@given(data=st.binary(max_size=300) | _mutations(_png()))
def test_image_decoder_raises_only_image_errors(tmp_path: Path, data: bytes) -> None:
    from aperture_zoo.images import ImageError, load_image

    path = tmp_path / "x.png"
    path.write_bytes(data)
    try:
        pixels, _ = load_image(path)
    except ImageError:
        return
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8


@FUZZ
@given(w=st.integers(1, 2**31 - 1), h=st.integers(1, 2**31 - 1))
def test_declared_image_size_never_reaches_pillow_limits(tmp_path: Path, w: int, h: int) -> None:
    from aperture_zoo.images import MAX_PIXELS, ImageError, ImageTooLargeError, load_image
    from test_hostile_inputs import _png_header

    path = tmp_path / "big.png"
    path.write_bytes(_png_header(w, h))
    try:
        load_image(path)
    except ImageError as exc:
        assert w * h <= MAX_PIXELS or isinstance(exc, ImageTooLargeError)
    else:
        assert w * h <= MAX_PIXELS


# ------------------------------------------------------------------ safetensors headers

def _safetensors(header: object, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + payload


tensor_entries = st.fixed_dictionaries({
    "dtype": st.sampled_from(["F32", "F16", "I64", "U8", "BOOL", "X9", 3]),
    "shape": st.lists(st.integers(-2, 2**33), max_size=4) | json_values,
    "data_offsets": st.lists(st.integers(-4, 2**40), min_size=0, max_size=3) | json_values,
})


@settings(FUZZ, max_examples=examples(20))
@given(header=st.dictionaries(st.sampled_from(["conv1.weight", "fc.bias", "__metadata__", "x"]),
                              tensor_entries | json_values, max_size=4),
       payload=st.binary(max_size=64), raw=st.none() | st.binary(max_size=64))
def test_safetensors_headers_raise_only_weights_errors(tmp_path: Path, header: dict, payload: bytes,
                                                      raw: bytes | None) -> None:
    from aperture_zoo.weights import WeightsError, load_weights

    path = tmp_path / "model.safetensors"
    path.write_bytes(raw if raw is not None else _safetensors(header, payload))
    with pytest.raises(WeightsError):  # never a model: it would need all 74 tensors
        load_weights("resnet10", path)


@settings(FUZZ, max_examples=examples(10))
@given(meta=st.dictionaries(st.sampled_from(["spec", "arch", "format", "label_names", "x"]),
                            json_values.map(json.dumps) | st.text(max_size=12), max_size=4))
def test_weights_metadata_raises_only_weights_errors(tmp_path: Path, meta: dict) -> None:
    from safetensors.torch import save_file

    from aperture_zoo.model import create_model
    from aperture_zoo.weights import load_weights

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in _resnet10_state().items()}, str(path), metadata=meta)
    try:
        load_weights(create_model("resnet10"), path)
    except ApertureError:
        pass


_STATE: dict = {}


def _resnet10_state() -> dict:
    if not _STATE:
        import torch

        from aperture_zoo.model import create_model

        torch.manual_seed(0)
        _STATE.update(create_model("resnet10").state_dict())
    return _STATE


# ------------------------------------------------------------------ CIFAR-10 batches

arrays = st.one_of(
    st.builds(lambda n, dt, v: np.full((n, 3072), v).astype(dt), st.integers(0, 3),
              st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.int8, bool]), st.integers(-300, 300)),
    st.builds(lambda shape: np.zeros(shape, np.uint8), st.lists(st.integers(0, 4), max_size=3).map(tuple)),
    json_values,
)


@FUZZ
@given(batch=st.dictionaries(st.sampled_from([b"data", b"labels", b"batch_label", "data", "labels"]),
                             arrays | st.lists(st.integers(-20, 20), max_size=4), max_size=4),
       raw=st.none() | st.binary(max_size=80))
@example(batch={b"data": [[1, 2], [3]], b"labels": [0, 1]}, raw=None)  # ragged rows: numpy's ValueError, once
@example(batch={b"data": [[0] * 3072], b"labels": [[0], [1, 2]]}, raw=None)  # ragged labels
def test_cifar_batches_raise_only_data_errors(tmp_path: Path, batch: dict, raw: bytes | None) -> None:
    from aperture_zoo.data import DataError, load_split

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    (folder / "test_batch").write_bytes(raw if raw is not None else pickle.dumps(batch, protocol=2))
    try:
        split = load_split("test", tmp_path)
    except DataError:
        return
    assert split.images.dtype == np.uint8 and split.labels.min(initial=0) >= 0
    assert len(split.images) == len(split.labels) and split.labels.max(initial=0) < 10


@FUZZ
@given(batch=st.dictionaries(st.sampled_from(["data", "fine_labels", "coarse_labels"]),
                             arrays | st.lists(st.integers(-300, 300) | st.floats(-1, 300), max_size=4), max_size=3))
@example(batch={"data": [[300] * 3072], "fine_labels": [0]})  # past 255: numpy's OverflowError
@example(batch={"data": [[1.7] * 3072], "fine_labels": [0]})  # floats were truncated to pixels, silently
def test_cifar100_batches_raise_only_dataset_errors(tmp_path: Path, batch: dict) -> None:
    from aperture_zoo.datasets import DatasetError, read_cifar100

    (tmp_path / "train").write_bytes(pickle.dumps(batch, protocol=2))
    try:
        split = read_cifar100(tmp_path, "train")
    except DatasetError:
        return
    assert split.images.dtype == np.uint8 and len(split.images) == len(split.labels) > 0
    assert 0 <= split.labels.min() and split.labels.max() < 100


# ------------------------------------------------------------------ a run's JSON (resume)

@FUZZ
@given(run=json_values | st.dictionaries(st.sampled_from(["spec", "arch", "seed", "subset", "test_subset",
                                                          "val_split", "data_dir"]), json_values, max_size=7),
       recipe=json_values | st.dictionaries(st.sampled_from(["name", "epochs", "lr", "batch_size", "schedule",
                                                             "reference_lr", "ema_decay"]), json_values, max_size=5),
       metrics=st.text(max_size=60))
def test_resume_of_damaged_run_files_raises_only_aperture_errors(tmp_path: Path, run: object, recipe: object,
                                                                 metrics: str) -> None:
    from aperture_zoo.train.rundir import RunDir
    from aperture_zoo.train.settings import TrainConfig, resolve_run

    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    (tmp_path / "metrics.jsonl").write_text(metrics)
    with pytest.raises(ApertureError):  # no checkpoint: never resumable, always said in one line
        resolve_run(TrainConfig(resume=tmp_path))
    for row in RunDir(tmp_path).metrics():
        assert isinstance(row, dict) and isinstance(row["epoch"], int)


# ------------------------------------------------------------------ ONNX metadata

@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    import torch

    from aperture_zoo.export.onnx_export import to_onnx
    from aperture_zoo.model import create_model

    torch.manual_seed(0)
    return to_onnx(create_model("resnet10").eval(), tmp_path_factory.mktemp("fz") / "m.onnx",
                   exporter="legacy").read_bytes()


@settings(max_examples=examples(15), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(meta=st.dictionaries(st.sampled_from(["label_names", "normalize_in_graph", "mean", "std", "arch"]),
                            json_values.map(json.dumps) | st.text(max_size=10), max_size=4),
       raw=st.none() | st.binary(max_size=64))
def test_onnx_metadata_raises_only_onnx_errors(tmp_path: Path, onnx_bytes: bytes, meta: dict, raw: bytes | None) -> None:
    import onnx

    from aperture_zoo.export.errors import OnnxFileError
    from aperture_zoo.export.predict import OnnxClassifier

    path = tmp_path / "m.onnx"
    if raw is not None:
        path.write_bytes(raw)
    else:
        proto = onnx.load_from_string(onnx_bytes)
        del proto.metadata_props[:]
        for k, v in meta.items():
            proto.metadata_props.add(key=k, value=v)
        path.write_bytes(proto.SerializeToString())
    try:
        clf = OnnxClassifier(path, provider="cpu")
    except OnnxFileError:
        return
    probs = clf.predict_proba(np.zeros((1, 32, 32, 3), np.uint8))
    assert probs.shape == (1, len(clf.labels)) and np.isfinite(probs).all()


# ------------------------------------------------------------------ a Hub repo's config.json

@FUZZ
@given(config=json_values | st.fixed_dictionaries(
    {"architecture": st.sampled_from(["resnet10", "resnet99", 3, None]) | st.text(max_size=6)},
    optional={"model_args": st.dictionaries(
        st.sampled_from(["blocks", "channels", "conv_kernel", "pool_kernel", "num_classes", "input_size",
                         "mean", "std", "name", "bogus"]),
        json_values | st.lists(st.integers(-3, 10**6), max_size=5), max_size=4),
        "label_names": json_values | st.lists(st.text(max_size=6), min_size=10, max_size=10),
        "pretrained_cfg": st.dictionaries(st.sampled_from(["mean", "std"]), json_values | st.lists(
            st.floats(-2, 2) | st.integers(-1, 2), min_size=3, max_size=3), max_size=2)}))
def test_hub_config_json_raises_only_aperture_errors(tmp_path: Path, config: object) -> None:
    from aperture_zoo.pretrained import load

    (tmp_path / "config.json").write_text(json.dumps(config))
    try:
        model = load(f"local-dir:{tmp_path}")  # the architecture, class names and mean/std it describes
    except ApertureError:
        return
    spec = model.spec
    assert sum(p.numel() for p in model.parameters()) > 0
    assert len(spec.label_names) == spec.num_classes and all(isinstance(n, str) for n in spec.label_names)
    assert len(spec.mean) == len(spec.std) == spec.input_size[0] and min(spec.std) > 0


# ------------------------------------------------------------------ model arguments and Hub revisions

revisions = st.text(max_size=40) | st.lists(st.sampled_from(["..", ".", "", "main", "v1.0", "a.lock", "-x", "refs", "pr"]),
                                            max_size=5).map("/".join)


@FUZZ
@given(ref=st.text(max_size=60) | st.builds(lambda repo, rev: f"hf-hub:{repo}@{rev}",
                                            st.sampled_from(["zoo/r", "a/b", "x", "../y/z"]), revisions))
@example(ref="hf-hub:zoo/r@../../../escaped")  # wrote a file outside the Hub cache
@example(ref="~0")  # pathlib's expanduser raised a bare RuntimeError for an unknown user (`--dataset ~nouser/x` too)
def test_model_arguments_and_revisions_never_lead_outside_the_cache(ref: str) -> None:
    import os

    from aperture_zoo.hub import parse_hf_hub
    from aperture_zoo.sources import source_kind

    kind = source_kind(ref)
    assert kind in ("hub", "dir", "path", "name")
    if kind != "hub":
        return
    try:
        _, revision = parse_hf_hub(ref)
    except ApertureError:
        return
    if revision is not None:  # the client writes refs/<revision> under the repo's cache folder
        refs = "/cache/models--zoo--r/refs"
        assert os.path.normpath(os.path.join(refs, revision)).startswith(refs + "/")
