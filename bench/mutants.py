"""Curated mutation check: each promise of the product, broken on purpose, must fail its tests.

``bench/mutants.toml`` lists the promises; each entry names a file, an exact snippet of it, the
smallest change that breaks the promise, and the tests that must catch it. Every mutant is
applied to a temporary copy of the tree (the working tree is never written), the listed tests run
there (``pytest -x -q`` under a timeout) and the mutant counts as killed when they fail. A snippet
that is no longer in its file (or is there more than once) is *stale*: the check fails until the
entry is updated. Prints the score and the survivors; exits 1 below ``--min-score``.

Our own script rather than mutmut: mutmut mutates operators at random across whole files and would
need the full suite per mutant; a curated list ties each mutant to a promise and a few tests, so
the whole check runs in minutes on 2 cores.

    python bench/mutants.py                 # every entry (make mutants)
    python bench/mutants.py -k int8 -k hub -v   # entries whose id or promise contains "int8" or "hub"
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = Path(__file__).with_suffix(".toml")


@dataclass(frozen=True)
class Mutant:
    id: str
    promise: str
    file: str
    original: str
    mutant: str
    tests: tuple[str, ...]


def load(path: Path = LIST) -> list[Mutant]:
    entries = tomllib.loads(path.read_text())["mutant"]
    mutants = [Mutant(e["id"], e["promise"], e["file"], e["original"], e["mutant"], tuple(e["tests"])) for e in entries]
    ids = [m.id for m in mutants]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise SystemExit(f"{path}: duplicate ids {', '.join(dupes)}")
    for m in mutants:
        if m.original == m.mutant or not m.tests:
            raise SystemExit(f"{path}: {m.id} changes nothing or names no tests")
    return mutants


def copy_tree(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files (what the next commit would hold)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    # The editable install maps package names to folders of the *working tree*; in the copy each
    # mapped sub-package gets a link inside its parent package, so the plain path finder (which
    # runs first) imports the copy's files instead.
    pyproject = tomllib.loads((dest / "pyproject.toml").read_text())
    package_dir = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    for name, folder in package_dir.items():
        natural = dest / name.replace(".", "/")
        if name and Path(folder) != Path(name.replace(".", "/")) and not natural.exists():
            natural.symlink_to(os.path.relpath(dest / folder, natural.parent), target_is_directory=True)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float, quiet: bool = True) -> tuple[str, str]:
    """('passed' | 'failed' | 'timeout', output tail) of ``pytest -x -q tests`` in ``tree``."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tree),
           "PYTEST_ADDOPTS": "-p no:cacheprovider"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "--no-header", "-rN", *tests]
    # Its own process group, so that a timeout or Ctrl-C also ends the processes the tests started.
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        if not isinstance(exc, subprocess.TimeoutExpired):
            raise
        return "timeout", out[-2000:]
    if proc.returncode == 0:
        return "passed", out[-2000:]
    if proc.returncode in (4, 5):  # usage error / no tests collected: a broken entry, not a kill
        return "error", out[-2000:]
    return "failed", out[-2000:]


def _check_imports(tree: Path) -> None:
    """Refuse to run when the copy's modules are not the ones imported (a kill would mean nothing)."""
    code = ("import importlib, json, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'));"
            "names = p['tool']['setuptools']['packages'];"
            "print(json.dumps({n: importlib.import_module(n).__file__ for n in names}))")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True)
    import json

    for name, file in json.loads(out.stdout).items():
        if file is not None and not Path(file).resolve().is_relative_to(tree.resolve()):
            raise SystemExit(f"{name} is imported from {file}, not from the copy in {tree}; cannot mutate it")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", action="append", default=[], help="only entries whose id or promise contains this text (repeatable)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds per mutant's tests (a timeout counts as killed)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run of every listed test on the unmutated copy")
    ap.add_argument("--min-score", type=float, default=95.0)
    ap.add_argument("-v", "--verbose", action="store_true", help="print the tests' output for survivors")
    ap.add_argument("--stale", action="store_true", help="only check that every snippet is still in its file")
    args = ap.parse_args(argv)

    mutants = [m for m in load() if not args.k or any(k.lower() in f"{m.id} {m.promise}".lower() for k in args.k)]
    if not mutants:
        raise SystemExit(f"no entry matches {args.k!r}")
    if args.stale:
        stale = [m for m in mutants if not (ROOT / m.file).is_file() or (ROOT / m.file).read_text().count(m.original) != 1]
        for m in stale:
            print(f"STALE: {m.id} ({m.file})")
        print(f"{len(mutants) - len(stale)}/{len(mutants)} snippets found exactly once")
        return 1 if stale else 0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aperture-mutants-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        copy_tree(tree)
        _check_imports(tree)
        originals = {m.file: (tree / m.file).read_text() if (tree / m.file).is_file() else None for m in mutants}
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            status, out = run_tests(tree, tests, timeout=args.timeout * 3)
            print(f"baseline: {len(tests)} test selections on the unmutated tree: {status} "
                  f"({time.perf_counter() - start:.0f}s)", flush=True)
            if status != "passed":
                print(out)
                print("the listed tests must pass before mutants mean anything")
                return 1
        results: dict[str, list[Mutant]] = {"killed": [], "survived": [], "stale": [], "error": []}
        timeouts: list[Mutant] = []
        for i, m in enumerate(mutants, 1):
            text = originals[m.file]
            t0 = time.perf_counter()
            if text is None or text.count(m.original) != 1:
                found = "file missing" if text is None else f"snippet found {text.count(m.original)} times"
                results["stale"].append(m)
                print(f"[{i:2d}/{len(mutants)}] STALE     {m.id}: {m.file}: {found}", flush=True)
                continue
            target = tree / m.file
            target.write_text(text.replace(m.original, m.mutant))
            try:
                status, out = run_tests(tree, m.tests, args.timeout)
            finally:
                target.write_text(text)
            verdict = {"failed": "killed", "timeout": "killed", "passed": "survived", "error": "error"}[status]
            results[verdict].append(m)
            if status == "timeout":
                timeouts.append(m)
            label = {"killed": "killed", "survived": "SURVIVED", "error": "ERROR"}[verdict]
            note = " (timeout)" if status == "timeout" else ""
            print(f"[{i:2d}/{len(mutants)}] {label:<9} {m.id}{note} ({time.perf_counter() - t0:.0f}s)", flush=True)
            if verdict != "killed" and (args.verbose or verdict == "error"):
                print(out)
    total = len(mutants)
    score = 100 * len(results["killed"]) / total
    print(f"\nmutation score: {len(results['killed'])}/{total} killed = {score:.1f} % "
          f"({len(results['survived'])} survived, {len(results['stale'])} stale, {len(results['error'])} broken entries) "
          f"in {time.perf_counter() - start:.0f}s")
    for kind in ("survived", "stale", "error"):
        for m in results[kind]:
            print(f"  {kind.upper()}: {m.id} ({m.file}): {m.promise}")
    for m in timeouts:  # counted as killed (the tests did not pass), but worth a look
        print(f"  killed by the {args.timeout:g}s timeout: {m.id}")
    return 0 if score >= args.min_score and not results["stale"] and not results["error"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the temporary copy is removed; the working tree was never written")
        sys.exit(130)
