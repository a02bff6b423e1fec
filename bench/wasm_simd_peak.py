"""How fast can WebAssembly multiply-add on this CPU, against native float32 GEMM? Prints, never asserts.

The browser demo's time is in onnxruntime-web's convolution kernels. This measures the ceiling
any WebAssembly kernel has here: a loop of independent 128-bit ``f32x4.mul`` + ``f32x4.add``
chains (WebAssembly SIMD has no fused multiply-add), run by headless Chromium on one thread,
in GFLOP/s; beside it, native single-thread float32 matrix multiplication (torch's BLAS) and
resnet22's forward pass in onnxruntime natively. A model's GFLOP/s divided by the ceiling says
how much faster any WebAssembly engine could run it.

    python bench/wasm_simd_peak.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import time
from pathlib import Path

CHAINS = (8, 12, 16, 24)  # independent accumulators tried (the best counts): hide the mul+add latency


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _leb(len(items)) + b"".join(items)


def _section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + _leb(len(payload)) + payload


F32X4_MUL, F32X4_ADD = b"\xfd\xe6\x01", b"\xfd\xe4\x01"
I32X4_DOT_I16X8_S, I32X4_ADD = b"\xfd\xba\x01", b"\xfd\xae\x01"
F32X4_RELAXED_MADD = b"\xfd\x85\x02"                # relaxed SIMD: a * b + c, fused where the CPU has FMA
I32X4_RELAXED_DOT_I8X16_I7X16_ADD_S = b"\xfd\x93\x02"  # relaxed SIMD: 16 int8 multiply-adds into i32x4

# kind -> (operations per accumulator and iteration counted, what they count)
KINDS = {"f32": (8, "GFLOP/s"), "f32-relaxed": (8, "GFLOP/s"), "i16-dot": (8, "G multiply-adds/s"),
         "i8-dot-relaxed": (16, "G multiply-adds/s")}


def simd_module(chains: int, kind: str = "f32") -> bytes:
    """``run(n: i32) -> f32``: n iterations of ``chains`` independent accumulator updates of ``kind``:

    * ``f32``: acc = f32x4.add(f32x4.mul(acc, m), c), standard SIMD128 (no fused multiply-add there);
    * ``f32-relaxed``: acc = f32x4.relaxed_madd(acc, m, c), relaxed SIMD's (fused) multiply-add;
    * ``i16-dot``: acc = i32x4.add(i32x4.dot_i16x8_s(acc, m), c), 8 multiply-adds, standard SIMD128's widest;
    * ``i8-dot-relaxed``: acc = i32x4.relaxed_dot_i8x16_i7x16_add_s(acc, m, acc), 16 multiply-adds.
    """
    integer = kind in ("i16-dot", "i8-dot-relaxed")

    def v128(x: float) -> bytes:
        if integer:
            return b"\xfd\x0c" + struct.pack("<8h", *([int(x * 3) or 1] * 8))
        return b"\xfd\x0c" + struct.pack("<4f", x, x, x, x)

    add = I32X4_ADD if integer else F32X4_ADD
    m, c = chains + 1, chains + 2  # local indices; 0 is the counter, 1..chains the accumulators

    def get(i: int) -> bytes:
        return b"\x20" + _leb(i)

    update = {
        "f32": lambda k: get(k) + get(m) + F32X4_MUL + get(c) + F32X4_ADD,
        "f32-relaxed": lambda k: get(k) + get(m) + get(c) + F32X4_RELAXED_MADD,
        "i16-dot": lambda k: get(k) + get(m) + I32X4_DOT_I16X8_S + get(c) + I32X4_ADD,
        "i8-dot-relaxed": lambda k: get(k) + get(m) + get(k) + I32X4_RELAXED_DOT_I8X16_I7X16_ADD_S,
    }[kind]
    body = b"".join(v128(1.0) + b"\x21" + _leb(k) for k in range(1, chains + 1))
    body += v128(0.999999) + b"\x21" + _leb(m) + v128(1e-6) + b"\x21" + _leb(c)
    loop = b"\x20\x00\x45\x0d\x01"  # local.get 0; i32.eqz; br_if 1 (leave the block)
    for k in range(1, chains + 1):
        loop += update(k) + b"\x21" + _leb(k)
    loop += b"\x20\x00\x41\x01\x6b\x21\x00\x0c\x00"  # counter -= 1; br 0 (next iteration)
    body += b"\x02\x40\x03\x40" + loop + b"\x0b\x0b"
    body += b"\x20\x01" + b"".join(get(k) + add for k in range(2, chains + 1))
    body += b"\xfd\x1f\x00\x0b"  # f32x4.extract_lane 0 (of the bits, for integers); end
    locals_ = _vec([_leb(chains + 2) + b"\x7b"])
    code = locals_ + body
    return (b"\x00asm\x01\x00\x00\x00"
            + _section(1, _vec([b"\x60" + _vec([b"\x7f"]) + _vec([b"\x7d"])]))
            + _section(3, _vec([_leb(0)]))
            + _section(7, _vec([_leb(3) + b"run" + b"\x00" + _leb(0)]))
            + _section(10, _vec([_leb(len(code)) + code])))


def browser_rate(seconds: float, kind: str = "f32") -> dict:
    """Best rate (``KINDS[kind]``'s unit, in 1e9 per second) over the chain counts tried."""
    from playwright.sync_api import sync_playwright

    from aperture_zoo.browser import find_chromium

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(), headless=True)
        try:
            page = browser.new_page()
            runs = [page.evaluate("""async ([bytes, seconds, chains, perIter]) => {
                const { instance } = await WebAssembly.instantiate(new Uint8Array(bytes));
                const run = instance.exports.run;
                run(1e6);  // tier up to the optimising compiler
                let n = 1e6, best = 0;
                const end = performance.now() + seconds * 1000;
                while (performance.now() < end) {
                    const t0 = performance.now(); run(n); const dt = (performance.now() - t0) / 1000;
                    best = Math.max(best, n * chains * perIter / dt / 1e9);
                    if (dt < 0.05) n *= 2;
                }
                return { per_s_1e9: best, chains, user_agent: navigator.userAgent };
            }""", [list(simd_module(chains, kind)), seconds, chains, KINDS[kind][0]]) for chains in CHAINS]
            return {**max(runs, key=lambda r: r["per_s_1e9"]), "unit": KINDS[kind][1],
                    "by_chains": {r["chains"]: r["per_s_1e9"] for r in runs}}
        finally:
            browser.close()


def native_gemm_gflops(seconds: float, size: int = 1024) -> float:
    """torch's float32 matrix multiplication on one thread (its BLAS picks AVX-512 / AVX2 here)."""
    import torch

    torch.set_num_threads(1)
    a = torch.rand(size, size)
    best = 0.0
    a @ a
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ a
        best = max(best, 2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return best


def resnet22_native(seconds: float, data_dir: str | None = None) -> dict:
    """onnxruntime CPU provider, one thread, batch 1: ms per image and GFLOP/s (2 x multiply-adds);
    with ``data_dir`` (CIFAR-10, to calibrate on) the int8 file too, in G multiply-adds/s."""
    import tempfile

    import torch
    from browser_int8_formats import native_ms  # bench/ is this script's folder: the same native timing

    import aperture_zoo
    from aperture_zoo.export.onnx_export import to_onnx

    model = aperture_zoo.load("resnet22", pretrained=True)
    macs = 0

    def count(mod: torch.nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(mod, torch.nn.Conv2d):
            macs += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        elif isinstance(mod, torch.nn.Linear):
            macs += mod.in_features * mod.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model, os.path.join(tmp, "resnet22.onnx"), exporter="legacy", batch=1)
        files = {"fp32": path}
        if data_dir:
            from aperture_zoo.export.quantize import calibration_pixels, to_int8

            files["int8"] = to_int8(path, os.path.join(tmp, "resnet22.int8.onnx"), calibration_pixels(data_dir, 256))
        out: dict = {"macs": macs}
        for precision, file in files.items():
            best = native_ms(Path(file), seconds)[0] / 1000
            out[precision] = {"best_ms": 1000 * best, "gflops" if precision == "fp32" else "gmacs": (
                2 if precision == "fp32" else 1) * macs / best / 1e9}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--data-dir", help="CIFAR-10 folder: also quantise resnet22 to int8 and time it natively")
    args = p.parse_args()
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average": os.getloadavg()[0],
                  "wasm": {kind: browser_rate(args.seconds, kind) for kind in KINDS},
                  "native_sgemm_1_thread_gflops": native_gemm_gflops(args.seconds),
                  "resnet22_onnxruntime_1_thread": resnet22_native(args.seconds, args.data_dir)}
    r = out["resnet22_onnxruntime_1_thread"]
    # the fastest resnet22 could run if every multiply-add went at the loop's rate (ms per image)
    for kind, (_, unit) in KINDS.items():
        rate = out["wasm"][kind]["per_s_1e9"] * 1e9
        work = 2 * r["macs"] if unit == "GFLOP/s" else r["macs"]
        precision = "fp32" if unit == "GFLOP/s" else "int8"
        if precision in r:
            ms = work / rate * 1000
            out[f"resnet22_{precision}_ceiling_ms_{kind}"] = {"ms": ms, "times_native": ms / r[precision]["best_ms"]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
