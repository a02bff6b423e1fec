"""torch -> LiteRT (TensorFlow Lite) flatbuffer (``.tflite``) through litert-torch: fp32 and int8.

litert-torch converts the same module as the ONNX export (``graph.wrapper``) without TensorFlow.
It pins its own ``typing_extensions`` (older than coremltools' and ExecuTorch's need) and brings JAX,
so it does not share an environment with them: when it does not import here it runs in a tool-chain
environment of its own, made once under the runtimes cache folder (``cache.default_cache_dir``),
layered on this one (it sees this environment's torch and aperture_zoo, and adds only what litert-torch
needs on top). ``litert_worker.py`` runs there; the weights go to it as safetensors.

The input keeps the ONNX layout (N x 3 x 32 x 32, pixels in [0, 1]; the converter transposes inside),
at a fixed batch (1 by default: LiteRT apps run one image; the interpreter can resize it). int8 is
litert-torch's PT2E quantiser (symmetric per-channel weights, static int8 activations calibrated on
training images), with float input and outputs. The metadata goes in the flatbuffer's own ``metadata``
table, as one JSON entry named ``aperture_zoo``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from aperture_zoo.files import atomic_path

from .errors import ExportError
from .formats import MissingExtraError, missing_modules

META_NAME = "aperture_zoo"
TOOLCHAIN = ("litert-torch==0.10.0",)
WORKER = Path(__file__).with_name("litert_worker.py")


def to_tflite(model, path: Path, precision: str, meta: dict[str, str], calibration: np.ndarray | None,
              *, calibrator, tta: bool, batch: int = 1) -> Path:
    """Write ``model`` (wrapped as the ONNX export wraps it) as a ``.tflite`` at ``path``."""
    if missing_modules(("ai_edge_litert",)):
        raise MissingExtraError("to export tflite files, ai_edge_litert must be installed: "
                                "pip install 'aperture_zoo[litert]'")
    with tempfile.TemporaryDirectory(prefix="aperture_tflite_") as tmp:
        raw = Path(tmp) / "model.tflite"
        if not missing_modules(("litert_torch",)):
            from .litert_worker import convert

            convert(model, raw, precision, calibration, calibrator=calibrator, tta=tta, batch=batch)
        else:
            _convert_in_toolchain(model, raw, precision, calibration, calibrator, tta, batch, Path(tmp))
        data = add_metadata(raw.read_bytes(), {**meta, "litert_torch_version": TOOLCHAIN[0].split("==")[1]})
    with atomic_path(path) as staged:
        staged.write_bytes(data)
    return Path(path)


def _convert_in_toolchain(model, raw: Path, precision: str, calibration, calibrator, tta: bool, batch: int,
                          tmp: Path) -> None:
    from aperture_zoo.weights import save_weights

    python = toolchain_python()
    weights = save_weights(model, tmp / "model.safetensors")
    cmd = [str(python), str(WORKER), str(weights), model.spec.name, str(raw), "--precision", precision,
           "--batch", str(batch), "--tta", "flip" if tta else "none"]
    if calibrator is not None:  # the weights file need not carry it: passed as its record
        cmd += ["--calibrator", json.dumps(calibrator.to_dict())]
    if calibration is not None:
        np.save(tmp / "calibration.npy", calibration.astype(np.float32))
        cmd += ["--calibration", str(tmp / "calibration.npy")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not raw.is_file():
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
        raise ExportError(f"litert-torch could not convert {model.spec.name} ({lines[-1][:300] if lines else done.returncode})")


def toolchain_python(cache_dir: Path | None = None) -> Path:
    """The Python of the litert-torch environment (made once, layered on this one)."""
    from filelock import FileLock

    from .cache import default_cache_dir

    import site
    import sysconfig

    import hashlib

    base = cache_dir or default_cache_dir()
    layers = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    # layered on this environment: one per environment, or another one's would be used by mistake
    tag = hashlib.sha256("\n".join(layers).encode()).hexdigest()[:8]
    venv = base / f"py{sys.version_info.major}{sys.version_info.minor}-toolchain-{TOOLCHAIN[0].replace('==', '-')}-{tag}"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    ready = venv / ".aperture-ready"
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv) + ".lock"):
        if ready.is_file() and python.is_file():
            return python
        subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True,
                       capture_output=True)
        own = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
        (own / "_aperture_base.pth").write_text(
            "import site; " + "; ".join(f"site.addsitedir({p!r})" for p in dict.fromkeys(layers)) + "\n")
        done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                               "--disable-pip-version-check", *TOOLCHAIN], capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
            raise MissingExtraError(f"could not install {' '.join(TOOLCHAIN)} into {venv} "
                                    f"({lines[-1] if lines else done.returncode}); install it with pip yourself")
        ready.write_text(" ".join(TOOLCHAIN) + "\n")
    return python


def add_metadata(flatbuffer: bytes, meta: dict[str, str]) -> bytes:
    """The model with ``meta`` as JSON in its ``metadata`` table (an earlier entry of ours replaced)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) != META_NAME]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers = [*(model.buffers or []), buffer]
    entry = schema.MetadataT()
    entry.name, entry.buffer = META_NAME, len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``aperture_zoo`` metadata entry of a ``.tflite`` ({} when it has none)."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == META_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            try:
                meta = json.loads(bytes(data).decode())
            except (TypeError, ValueError):
                return {}
            return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    return {}


def _name(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")
