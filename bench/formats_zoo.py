"""Every published model in every deployment format, each file validated where it runs (issue 29's figures).

For each model: ``export_formats`` writes OpenVINO (fp32, bf16, int8), ExecuTorch (fp32, int8), LiteRT
(fp32, int8) and Core ML (fp32, fp16) from the published weights, calibrating int8 on 512 training
images, and validates each file against PyTorch fp32 on a stratified ``--max-val-images`` of the test set
through the same ``validate`` as ONNX (Core ML at the spec level). One JSON line per file goes to
``--out`` (appended, so an interrupted run resumes with ``--models``), and ``--table`` prints the
Markdown table from it.

    python bench/formats_zoo.py --data-dir DIR --out bench/results/DIR/formats_zoo.jsonl [--models resnet10]
    python bench/formats_zoo.py --out bench/results/DIR/formats_zoo.jsonl --table
    python bench/formats_zoo.py --files-dir FILES --cards model_cards   # the reports beside each card

``--cards`` copies each file's report into ``model_cards/<name>/`` (the file named as the export names it,
not where it was written), so that ``aperture card NAME`` lists every format's file with its figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

OTHER_FORMATS = ("openvino", "executorch", "tflite", "coreml")


def measure(name: str, data_dir: str, files_dir: Path, max_val_images: int, out: Path) -> None:
    import aperture_zoo
    from aperture_zoo.catalog import get_weights
    from aperture_zoo.export.formats import precisions_for
    from aperture_zoo.export.pipeline import export_formats

    model = aperture_zoo.load(name, pretrained=True)
    precisions = precisions_for(list(OTHER_FORMATS), fp16=True, bf16=True, int8=True)
    t0 = time.perf_counter()
    result = export_formats(model, files_dir / name, precisions, data_dir=data_dir, max_val_images=max_val_images,
                            weights_sha256=get_weights(name).sha256, progress=lambda m: print(f"  {name}: {m}", flush=True))
    seconds = time.perf_counter() - t0
    with out.open("a") as f:
        for report in result.reports:
            d = report.to_dict()
            test = next((c for c in d["comparisons"] if c["inputs"].startswith("CIFAR")), None)
            path = Path(report.onnx_file)
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else \
                path.stat().st_size + (path.with_suffix(".bin").stat().st_size if path.suffix == ".xml" else 0)
            f.write(json.dumps({
                "model": name, "file": path.name, "format": d["format"], "precision": d["precision"],
                "runtime": d["provider"], "ran": d["ran"], "passed": d["passed"], "failures": d["failures"],
                "images": test and test["num_images"], "agreement": test and test["agreement"],
                "max_abs_diff": test and test["max_abs_diff"], "file_top1": test and test["onnx_top1"],
                "torch_top1": test and test["torch_top1"], "top1_drop": test and test["top1_drop"],
                "top1_drop_se": test and test["top1_drop_se"], "bytes": size, "export_and_validate_s": round(seconds, 1),
                "machine": f"{platform.machine()} {os.cpu_count()} cores", "load": os.getloadavg()[0],
            }) + "\n")
    print(f"{name}: {len(result.files)} files passed, {len(result.failed_files)} failed ({seconds:.0f} s)", flush=True)


def table(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = "| model | file | runtime | agreement % | max \\|Δlogit\\| | top-1 % (PyTorch) | drop (± SE) | passed |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["ran"]:
            lines.append(f"| {r['model']} | {r['file']} | not run (spec check) | — | — | — | — | "
                         f"{'yes' if r['passed'] else 'NO'} |")
            continue
        lines.append(f"| {r['model']} | {r['file']} | {r['runtime']} | {r['agreement']:.2f} | {r['max_abs_diff']:.2g} | "
                     f"{r['file_top1']:.2f} ({r['torch_top1']:.2f}) | {r['top1_drop']:+.2f} (± {r['top1_drop_se']:.2f}) | "
                     f"{'yes' if r['passed'] else 'NO'} |")
    return "\n".join(lines)


def copy_reports(files_dir: Path, cards: Path) -> list[Path]:
    from aperture_zoo.files import ONNX_SUFFIX, judged_file

    written = []
    for report in sorted(files_dir.glob("*/*.report.json")):
        if judged_file(report.name).endswith(ONNX_SUFFIX):
            continue  # ONNX reports are the published ones, made by `aperture export --onnx` itself
        data = json.loads(report.read_text())
        data["onnx_file"] = Path(data["onnx_file"]).name
        dest = cards / report.parent.name / report.name
        dest.write_text(json.dumps(data, indent=2) + "\n")
        written.append(dest)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--files-dir", type=Path, default=Path("runs/formats"))
    parser.add_argument("--models", default="resnet10,resnet18,resnet20,resnet22,resnet24,resnet32")
    parser.add_argument("--max-val-images", type=int, default=2000)
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--cards", type=Path)
    args = parser.parse_args()
    if args.cards:
        for path in copy_reports(args.files_dir, args.cards):
            print(f"wrote {path}")
        return
    if args.table:
        print(table(args.out))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models.split(","):
        try:
            measure(name.strip(), args.data_dir, args.files_dir, args.max_val_images, args.out)
        except Exception as exc:  # noqa: BLE001 - one model's failure is reported, the others still run
            print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)


if __name__ == "__main__":
    main()
