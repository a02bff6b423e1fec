"""What keying the decode cache by content costs: hashing every file of a folder, against decoding it.

The cache key (``folder.cache_key``) holds every file's SHA-256, so every run reads and hashes the
whole folder, cache hit or not. This times, on one folder of ``--n`` images (CIFAR-10 training
images upscaled to ``--side`` pixels and saved as JPEG, as in ``folder_decode.py``):

- the scan (walk, stat: what the old key was made of);
- SHA-256 and BLAKE2b of every file, one thread (what the hash itself costs per byte);
- ``manifest.hash_files`` in threads, and as ``load_folder`` calls it (one thread for small files);
- the decode through the image rule (``folder.decode_files``, the default processes) of the same files;
- ``load_folder`` cold (hash + decode + cache write) and warm (hash + cache read).

Prints seconds, files/s and MB/s for each, the ratio of hashing to decoding, the machine and its
load (``os.getloadavg`` before and after). The files are read from the OS page cache after being
written (a first read from a cold disk costs more, and the same for hashing and decoding).

    python bench/folder_keying.py --data-dir DIR_WITH_CIFAR10 --out /tmp/folder-keying --n 20000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _digest_all(paths: list[str], algo: str) -> None:
    for p in paths:
        h = hashlib.new(algo)
        with open(p, "rb") as f:
            h.update(f.read())
        h.hexdigest()


def _timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="folder containing cifar-10-batches-py/")
    p.add_argument("--out", default="/tmp/aperture-folder-keying")
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--side", type=int, default=96)
    args = p.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from folder_decode import write_folder

    from aperture_zoo.folder import decode_files, load_folder, scan_folder
    from aperture_zoo.manifest import hash_files

    out = Path(args.out)
    images, cache = out / "images", out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    if not images.is_dir() or sum(1 for _ in images.rglob("*.jpg")) != args.n:
        shutil.rmtree(images, ignore_errors=True)
        write_folder(args.data_dir, images, args.n, args.side)
    load_before = os.getloadavg()
    scan_s = _timed(scan_folder, images)
    scan = scan_folder(images)
    paths = [str(scan.root / f.relpath) for f in scan.files]
    n, mb = len(paths), sum(f.size for f in scan.files) / 1e6
    _digest_all(paths, "sha256")  # once to settle the page cache, not timed
    rows = {"scan (walk + stat)": scan_s,
            "sha256, 1 thread": _timed(_digest_all, paths, "sha256"),
            "blake2b, 1 thread": _timed(_digest_all, paths, "blake2b"),
            "hash_files (sha256, threads)": _timed(hash_files, paths, None, None),
            "hash_files (sha256, as load_folder calls it)": _timed(hash_files, paths, None, int(mb * 1e6)),
            "decode (image rule, processes)": _timed(decode_files, paths)}
    rows["load_folder cold (hash + decode + cache write)"] = _timed(load_folder, images, cache)
    rows["load_folder warm (hash + cache read)"] = _timed(load_folder, images, cache)
    load_after = os.getloadavg()
    report = {
        "machine": f"{_cpu()}, {os.cpu_count()} CPUs, {platform.system()} {platform.machine()}",
        "load_average_1_5_15_before": [round(v, 2) for v in load_before],
        "load_average_1_5_15_after": [round(v, 2) for v in load_after],
        "files": n, "megabytes": round(mb, 1), "source": f"{args.side}x{args.side} JPEG",
        "timings": {k: {"seconds": round(v, 3), "files_per_s": round(n / v), "mb_per_s": round(mb / v, 1)}
                    for k, v in rows.items()},
        "hashing_share_of_decode": round(rows["hash_files (sha256, as load_folder calls it)"]
                                         / rows["decode (image rule, processes)"], 4),
        "warm_load_over_old_scan_only": round(rows["load_folder warm (hash + cache read)"] / scan_s, 2),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
