"""Mutation testing with mutmut over the modules that hold the product's promises.

mutmut generates the mutants from the code (nobody chooses them), runs each one against only the
tests that executed the mutated function (it records which test calls which function once), kills
a mutant whose tests fail, and stops one whose tests run past a CPU-time limit (a *timeout*).

Our own code here is only the glue mutmut cannot do itself, in three parts:

* **A staged tree.** pyproject maps ``aperture_zoo.train`` to ``train/`` and ``aperture_zoo.export``
  to ``export/``; mutmut names a mutant by its file's path and imports the mutated copy through
  ``sys.path``, so it needs the natural layout. ``build/mutation/`` holds ``aperture_zoo/`` with
  ``train/`` and ``export/`` copied inside it (only files whose content changed are copied again,
  so mutmut's own cache of results stays valid), plus ``tests/`` and ``pyproject.toml``; the big
  read-only folders the tests read (``model_cards/``, ``apps/``, ...) are links.
* **Equivalent mutants.** mutmut can only skip whole lines; ``bench/mutation_equivalent.toml``
  names each mutant that no test can kill because it does not change behaviour, with a one-line
  reason and the mutated line, which is checked so that an entry whose code moved is reported
  stale rather than silently applied to another mutant.
* **The summary** per module (mutants, killed, survived, timed out, equivalent, no tests) written
  to ``bench/results/mutation/summary.json`` and ``summary.md``.

    python bench/mutation.py                       # every module below (make mutants)
    python bench/mutation.py calibration seeds     # some modules (make mutants MODULES="calibration seeds")
    python bench/mutation.py --summary             # only rebuild the summary from the last results
    python bench/mutation.py --survivors seeds     # each surviving mutant's diff
    python bench/mutation.py --sample 12           # a seeded random sample of 12 mutants per module

**Sampling.** All modules' mutants take many hours on 2 cores (about 30 s each). ``--sample N``
tests the first N mutants of each module in an order drawn at random from a fixed seed (mutmut
still generates every mutant; the sample only chooses which are tested), so the score is an
estimate: the summary gives each module's checked count and a 95 % Wilson interval, and the total
is weighted by each module's mutant count (a stratified estimate). ``--sample 24`` later extends
the same sample (its first 12 are the ones already tested); a full run replaces it.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutation"
EQUIVALENT = ROOT / "bench" / "mutation_equivalent.toml"
RESULTS = ROOT / "bench" / "results" / "mutation"

# short name -> (file in the worktree, its module in the staged tree)
MODULES: dict[str, tuple[str, str]] = {
    "calibration": ("aperture_zoo/calibration.py", "aperture_zoo.calibration"),
    "folder": ("aperture_zoo/folder.py", "aperture_zoo.folder"),
    "folderscan": ("aperture_zoo/folderscan.py", "aperture_zoo.folderscan"),
    "manifest": ("aperture_zoo/manifest.py", "aperture_zoo.manifest"),
    "datasets": ("aperture_zoo/datasets.py", "aperture_zoo.datasets"),
    "data": ("aperture_zoo/data.py", "aperture_zoo.data"),
    "pretrained": ("aperture_zoo/pretrained.py", "aperture_zoo.pretrained"),
    "weights": ("aperture_zoo/weights.py", "aperture_zoo.weights"),
    "catalog": ("aperture_zoo/catalog.py", "aperture_zoo.catalog"),
    "hub": ("aperture_zoo/hub.py", "aperture_zoo.hub"),
    "images": ("aperture_zoo/images.py", "aperture_zoo.images"),
    "compat": ("export/compat.py", "aperture_zoo.export.compat"),
    "validate": ("export/validate.py", "aperture_zoo.export.validate"),
    "settings": ("train/settings.py", "aperture_zoo.train.settings"),
    "rundir": ("train/rundir.py", "aperture_zoo.train.rundir"),
    "seeds": ("train/seeds.py", "aperture_zoo.train.seeds"),
    "calibrators": ("aperture_zoo/calibrators.py", "aperture_zoo.calibrators"),
    "calibrate": ("train/calibrate.py", "aperture_zoo.train.calibrate"),
}
# one mutant whose run makes mutmut generate every module's mutants and record which tests reach
# which function (the stats), before a sample can be drawn from them
BOOTSTRAP = "aperture_zoo.train.seeds.x_check_seeds__mutmut_1"
SAMPLE_SEED = 27
ROUND = 4  # sample positions scored together (a round: the next 4 of each module, e.g. --sample 12 after 8)
# worktree folder -> folder in the staged tree
PACKAGES = {"aperture_zoo": "aperture_zoo", "train": "aperture_zoo/train", "export": "aperture_zoo/export"}
LINKED = ["model_cards", "apps", "bench", "hubconf.py", "README.md", "ARCHITECTURE.md", "Makefile", "LICENSE"]

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def _sync_file(src: Path, dst: Path) -> None:
    if dst.is_file() and filecmp.cmp(src, dst, shallow=False):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)  # a new mtime tells mutmut to generate this file's mutants again


def stage() -> None:
    """Bring ``build/mutation/`` up to date with the worktree (natural package layout)."""
    STAGE.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for folder, target in PACKAGES.items():
        for src in (ROOT / folder).rglob("*"):
            if src.is_file() and "__pycache__" not in src.parts:
                rel = src.relative_to(ROOT / folder)
                if folder == "aperture_zoo" and rel.parts[0] in PACKAGES:
                    continue
                wanted.add(Path(target) / rel)
                _sync_file(src, STAGE / target / rel)
                if src.suffix != ".py" and (STAGE / "mutants").is_dir():  # mutmut copies data files (the card
                    _sync_file(src, STAGE / "mutants" / target / rel)   # template) only on its first run
    for src in (ROOT / "tests").rglob("*"):
        if src.is_file() and "__pycache__" not in src.parts:
            wanted.add(src.relative_to(ROOT))
            _sync_file(src, STAGE / src.relative_to(ROOT))
    for tree in ("aperture_zoo", "tests"):  # files deleted from the worktree leave the stage too
        for old in list((STAGE / tree).rglob("*")):
            if old.is_file() and "__pycache__" not in old.parts and old.relative_to(STAGE) not in wanted:
                old.unlink()
    _sync_file(ROOT / "pyproject.toml", STAGE / "pyproject.toml")
    # mutmut copies it into mutants/ only on `run`; a test's subprocess reads that copy's settings
    _sync_file(ROOT / "pyproject.toml", STAGE / "mutants" / "pyproject.toml")
    for name in LINKED:  # read by tests (published weights, the web app, ...); never mutated
        for base in (STAGE, STAGE / "mutants"):
            base.mkdir(exist_ok=True)
            link = base / name
            if not link.is_symlink():
                if link.exists():
                    shutil.rmtree(link) if link.is_dir() else link.unlink()
                link.symlink_to(ROOT / name)


def _staged(name: str) -> Path:
    folder, rest = MODULES[name][0].split("/", 1)
    return Path(PACKAGES[folder]) / rest


def _to_run(name: str, rerun: bool) -> list[str]:
    """What ``mutmut run`` is given: the module's glob when its mutants must be generated (again),
    else only the mutants without a verdict and the survivors (a kill stands until the code changes,
    which makes mutmut generate and test that function's mutants again)."""
    staged, made = STAGE / _staged(name), STAGE / "mutants" / _staged(name)
    if rerun or not made.is_file() or staged.stat().st_mtime >= made.stat().st_mtime:
        return [f"{MODULES[name][1]}.*"]
    equivalent = load_equivalent()  # listed with a reason: no test can kill them, so they are not run again
    return [m for m, code in results(name).items()
            if STATUS.get(code) in ("not checked", "survived", "no tests") and m not in equivalent]


def run_module(name: str, max_children: int, log: Path, rerun: bool = False,
               targets: list[str] | None = None) -> float:
    """``mutmut run`` on one module's mutants (at the lowest priority); returns the wall time in seconds."""
    targets = _to_run(name, rerun) if targets is None else targets
    if not targets:
        return 0.0
    cmd = ["nice", "-n", "19", str(Path(sys.executable).parent / "mutmut"), "run",
           "--max-children", str(max_children), *targets]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("APERTURE_CIFAR10_DIR", None)  # the real-data tests stay out: minutes per mutant
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n=== {name}: {len(targets)} target(s) {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=STAGE, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    with log.open("a") as out:
        out.write(f"=== {name}: exit {proc.returncode} after {wall:.0f} s\n")
    with (RESULTS / "runs.jsonl").open("a") as out:  # what each part cost, and on how loaded a machine
        out.write(json.dumps({"module": name, "targets": "all" if targets[0].endswith(".*") else len(targets),
                              "wall_s": round(wall), "exit": proc.returncode, "loadavg_start": round(load_start, 1),
                              "loadavg_end": round(os.getloadavg()[0], 1),
                              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
    return wall


def sample_order(name: str) -> list[str]:
    """The module's mutants (equivalents left out) in a fixed random order: a sample of N is its first N."""
    equivalent = load_equivalent()
    names = sorted(m for m in results(name) if m not in equivalent)
    random.Random(f"{SAMPLE_SEED}:{name}").shuffle(names)
    return names


def sample_targets(names: list[str], per_module: int) -> list[str]:
    """The mutants of each module's sample without a verdict yet, and its survivors (tests may have come since:
    a kill stands until the code changes, as in a full run)."""
    out = []
    for name in names:
        codes = results(name)
        out += [m for m in sample_order(name)[:per_module]
                if STATUS.get(codes.get(m)) in ("not checked", "survived", "no tests")]
    return out


def run_sample(names: list[str], per_module: int, max_children: int, log: Path) -> float:
    stale = [n for n in names if not results(n) or _to_run(n, False)[:1] == [f"{MODULES[n][1]}.*"]]
    if stale:  # new or changed code: mutmut generates the mutants (and the stats) again on one mutant's run,
        run_module("generate", max_children, log, targets=[BOOTSTRAP])  # so the sample is drawn from current names
    targets = sample_targets(names, per_module)
    print(f"sample of {per_module} per module: {len(targets)} mutant(s) to test", flush=True)
    return run_module("sample", max_children, log, targets=targets) if targets else 0.0


def sample_rounds(names: list[str], size: int) -> list[dict]:
    """Each round of the sample (positions 1-8, 9-16, ... of every module's order) scored on its own, so a round
    drawn after tests were written for an earlier round's survivors is an unbiased estimate of the score then."""
    rounds = []
    for start in range(0, max((len(sample_order(n)) for n in names), default=0), size):
        rows = {}
        for name in names:
            codes, picked = results(name), sample_order(name)[start:start + size]
            verdicts = [STATUS.get(codes.get(m), "killed") for m in picked]
            if any(v == "not checked" for v in verdicts) or not picked:
                continue
            caught = sum(v not in ("survived", "no tests") for v in verdicts)
            rows[name] = {"mutants": len(codes), "equivalent": 0, "not_checked": len(codes) - len(picked),
                          "score": 100 * caught / len(picked)}
        if not rows:
            break
        est = stratified(rows)
        rounds.append({"positions": f"{start + 1}-{start + size}", "modules": len(rows),
                       "caught": sum(round(r["score"] * (r["mutants"] - r["not_checked"]) / 100) for r in rows.values()),
                       "tested": sum(r["mutants"] - r["not_checked"] for r in rows.values()), "estimate": est})
    return rounds


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion from a sample (Wilson's: sound near 100 %, where most scores sit)."""
    if n == 0:
        return (0.0, 100.0)
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (round(100 * max(0.0, centre - half), 1), round(100 * min(1.0, centre + half), 1))


def results(name: str) -> dict[str, int | None]:
    """mutant name -> mutmut's exit code, from its ``.meta`` file in the staged tree."""
    meta = STAGE / "mutants" / f"{_staged(name)}.meta"
    if not meta.is_file():
        return {}
    return json.loads(meta.read_text())["exit_code_by_key"]


def mutant_diff(mutant: str) -> str:
    out = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "show", mutant], cwd=STAGE,
                         capture_output=True, text=True)
    return out.stdout


def _changed_line(diff: str) -> str:
    """The mutated line of a ``mutmut show`` diff (its '+' line, stripped)."""
    plus = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    return plus[0] if plus else ""


def _cost(name: str) -> tuple[int | None, str]:
    """Seconds spent on the module's current results (its runs since the last one of all its mutants)
    and the 1-minute load average over them, as "low-high" (the machine's other work slows a run)."""
    if not (RESULTS / "runs.jsonl").is_file():
        return None, ""
    runs = [json.loads(ln) for ln in (RESULTS / "runs.jsonl").read_text().splitlines() if ln.strip()]
    stopped = (-2, -9, -15, 130, 137, 143)  # stopped by hand: its verdicts so far are kept, and so is its time
    runs = [r for r in runs if r["module"] == name and (r["exit"] == 0 or r["exit"] in stopped)]
    last_full = max((i for i, r in enumerate(runs) if r["targets"] == "all"), default=0)
    runs = runs[last_full:]
    loads = [r[k] for r in runs for k in ("loadavg_start", "loadavg_end") if k in r]
    shown = f"{min(loads):.0f}-{max(loads):.0f}" if loads else ""
    return (sum(r["wall_s"] for r in runs) if runs else None), shown


def load_equivalent() -> dict[str, dict[str, str]]:
    if not EQUIVALENT.is_file():
        return {}
    entries = tomllib.loads(EQUIVALENT.read_text()).get("mutant", [])
    out = {}
    for e in entries:
        if not e.get("reason") or not e.get("line"):
            raise SystemExit(f"{EQUIVALENT}: {e.get('name')} needs a reason and the mutated line")
        out[e["name"]] = e
    return out


def summarise(names: list[str]) -> tuple[dict, list[str]]:
    """Per-module counts; equivalents applied (and checked against the mutated line)."""
    equivalent = load_equivalent()
    problems: list[str] = []
    table = {}
    for name in names:
        codes = results(name)
        row = {"mutants": len(codes), "killed": 0, "survived": 0, "timeout": 0, "equivalent": 0, "no_tests": 0,
               "not_checked": 0, "survivors": []}
        for mutant, code in sorted(codes.items()):
            status = STATUS.get(code, "suspicious")
            if mutant in equivalent:
                line = _changed_line(mutant_diff(mutant))
                if line != equivalent[mutant]["line"].strip():
                    problems.append(f"stale equivalent entry {mutant}: its mutated line is now {line!r}")
                elif status == "killed":
                    problems.append(f"{mutant} is listed as equivalent but a test kills it: remove the entry")
                else:
                    row["equivalent"] += 1
                    continue
            key = {"killed": "killed", "survived": "survived", "timeout": "timeout", "no tests": "no_tests",
                   "not checked": "not_checked"}.get(status)
            if key is None:  # suspicious, segfault, skipped: the tests did not pass, count as killed
                key = "killed"
            row[key] += 1
            if key in ("survived", "no_tests"):
                row["survivors"].append(mutant)
        scored = row["mutants"] - row["equivalent"] - row["not_checked"]
        row["score"] = round(100 * (row["killed"] + row["timeout"]) / scored, 1) if scored else None
        row["score_killed_only"] = round(100 * row["killed"] / scored, 1) if scored else None
        row["interval"] = list(wilson(row["killed"] + row["timeout"], scored)) if row["not_checked"] and scored else None
        row["wall_s"], row["load"] = _cost(name) if not row["interval"] else (None, "")  # sampled: see runs.jsonl
        table[name] = row
    summarised = {MODULES[n][1] for n in names}
    for name in equivalent:
        module = name.split(".x_")[0].split(".xǁ")[0]
        if module in summarised and not any(name in results(n) for n in names if MODULES[n][1] == module):
            problems.append(f"equivalent entry {name} names no current mutant (stale)")
    return table, problems


def write_summary(table: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    old = {}
    if (RESULTS / "summary.json").is_file():
        old = json.loads((RESULTS / "summary.json").read_text()).get("modules", {})
    old.update(table)
    modules = {k: old[k] for k in MODULES if k in old}
    tot = {k: sum(r[k] for r in modules.values()) for k in ("mutants", "killed", "survived", "timeout",
                                                             "equivalent", "no_tests", "not_checked")}
    scored = tot["mutants"] - tot["equivalent"] - tot["not_checked"]
    tot["score"] = round(100 * (tot["killed"] + tot["timeout"]) / scored, 1) if scored else None
    tot["score_killed_only"] = round(100 * tot["killed"] / scored, 1) if scored else None
    tot["estimate"] = stratified(modules)
    doc = {"tool": "mutmut " + _mutmut_version(), "modules": modules, "total": tot,
           "score_rule": "(killed + timed out) / (mutants - equivalent - not checked); 'no tests' counts as survived",
           "score_killed_only_rule": "killed / (mutants - equivalent - not checked): a timeout (tests past mutmut's "
                                     "wall or CPU limit) counted as not caught, the lower bound on a loaded machine"}
    if any(r.get("interval") for r in modules.values()):
        doc["sample_seed"] = SAMPLE_SEED
        doc["rounds"] = sample_rounds([k for k in modules if modules[k].get("interval")], ROUND)
    (RESULTS / "summary.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    lines = [f"mutmut {_mutmut_version()} on {os.cpu_count()} CPU cores shared with other work; "
             "load: the 1-minute load average at the start and end of the runs counted.", "",
             "score: (killed + timed out) / run and not equivalent; killed only: timeouts counted as not caught "
             "(on a loaded machine most timeouts are slow kills, but not all need be).", "",
             "| module | mutants | killed | survived | timed out | equivalent | no tests | not run yet | score % "
             "| killed only % | wall s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, r in list(modules.items()) + [("**total**", tot)]:
        lines.append(f"| {k} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['timeout']} | "
                     f"{r['equivalent']} | {r['no_tests']} | {r['not_checked']} | {r['score']} | "
                     f"{r.get('score_killed_only')} | {r.get('wall_s') or ''} | {r.get('load', '')} |")
    for k, r in modules.items():
        if r.get("interval"):
            n = r["mutants"] - r["equivalent"] - r["not_checked"]
            lines.append(f"- {k}: a sample of {n} of {r['mutants']} mutants; score 95 % interval "
                         f"{r['interval'][0]}-{r['interval'][1]} %")
    est = tot["estimate"]
    for r in doc.get("rounds", []):
        e = r["estimate"]
        lines.append(f"- sample round (seed {SAMPLE_SEED}), positions {r['positions']} of each module's order: "
                     f"{r['caught']} of {r['tested']} "
                     f"caught; estimated score {e['score']} % (95 % interval {e['low']}-{e['high']} %)")
    if est:
        lines += ["", f"**Estimated score over all {est['mutants']} mutants of the {est['modules']} modules with "
                      f"checked mutants** (each module's sample score weighted by its mutant count): "
                      f"{est['score']} % (95 % interval {est['low']}-{est['high']} %)"
                      + (f"; modules with no checked mutant yet: {', '.join(est['unchecked'])}" if est["unchecked"]
                         else "")]
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def stratified(modules: dict) -> dict | None:
    """The score over all mutants estimated from per-module samples: each module's sample score weighted
    by its share of the mutants, with a normal 95 % interval (finite-population corrected) beside it."""
    rows = {k: r for k, r in modules.items() if r["score"] is not None}
    if not rows:
        return None
    size = {k: r["mutants"] - r["equivalent"] for k, r in rows.items()}
    total = sum(size.values())
    est = var = 0.0
    for k, r in rows.items():
        n, w, p = r["mutants"] - r["equivalent"] - r["not_checked"], size[k] / total, r["score"] / 100
        est += w * p
        var += w * w * p * (1 - p) / n * (1 - n / size[k]) if n < size[k] else 0.0
    half = 1.96 * math.sqrt(var)
    return {"score": round(100 * est, 1), "low": round(100 * max(0.0, est - half), 1),
            "high": round(100 * min(1.0, est + half), 1), "mutants": total, "modules": len(rows),
            "unchecked": [k for k in modules if k not in rows]}


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"short names (default: all): {', '.join(MODULES)}")
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    ap.add_argument("--summary", action="store_true", help="only rebuild the summary from the last results")
    ap.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    ap.add_argument("--rerun", action="store_true", help="test every mutant again, kills included")
    ap.add_argument("--min-score", type=float, default=90.0)
    ap.add_argument("--sample", type=int, metavar="N", help="test a seeded random sample of N mutants per module")
    ap.add_argument("--seed", type=int, default=SAMPLE_SEED,
                    help="the sample's seed: another seed draws a fresh sample, e.g. after tests were written for the "
                         "survivors of the last one (whose score those tests would bias)")
    args = ap.parse_args(argv)
    globals()["SAMPLE_SEED"] = args.seed  # read by sample_order and the summary
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        raise SystemExit(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    walls: dict[str, float] = {}
    if not args.summary and not args.survivors:
        stage()
        log = RESULTS / "mutmut.log"
        RESULTS.mkdir(parents=True, exist_ok=True)
        if args.sample:
            print(f"sample: {run_sample(names, args.sample, args.max_children, log):.0f} s", flush=True)
        else:
            for name in names:
                walls[name] = run_module(name, args.max_children, log, args.rerun)
                print(f"{name}: {walls[name]:.0f} s", flush=True)
    table, problems = summarise(names)
    if args.survivors:
        for name in names:
            for mutant in table[name]["survivors"]:
                print(mutant_diff(mutant))
        return 0
    write_summary(table)
    for p in problems:
        print("PROBLEM:", p)
    total = json.loads((RESULTS / "summary.json").read_text())["total"]
    score = total["estimate"]["low"] if args.sample and total.get("estimate") else total["score"]
    return 0 if not problems and score is not None and score >= args.min_score else 1


if __name__ == "__main__":
    sys.exit(main())
