"""Run the hand-made mutants of ``manifest.toml`` against the tests a developer would expect to catch them.

For each patch: ``git apply``, ``pytest -x`` on its ``expected_tests`` (``-m "not slow"``), killed or
survived and the wall time, ``git apply -R`` (always, Ctrl-C included; the tree is checked clean
after). Every kill is then confirmed: its first failing test must pass without the mutant, or the
kill is not counted. Every survivor then runs the whole non-slow suite with the mutant applied
(``-n 2 --dist loadfile``). Writes ``bench/results/mutation/fresh_handmade.json`` and ``.md``.

    nice -n 10 .venv/bin/python bench/mutants_fresh/run.py [--ids 01,07] [--no-suite] [--resume]

Results are written after every step; ``--resume`` keeps the rows already written and runs the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = ROOT / "bench" / "results" / "mutation"
PY = sys.executable
PYTEST = [PY, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow"]
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def git(*args: str, check: bool = True) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=check, capture_output=True, text=True).stdout


def tracked_changes() -> str:
    return git("status", "--porcelain", "--untracked-files=no")


class Applied:
    """A mutant applied to the tree for the ``with`` block, reverted whatever happens (Ctrl-C too)."""

    def __init__(self, patch: Path) -> None:
        self.patch = patch

    def __enter__(self) -> Applied:
        git("apply", str(self.patch))
        self._old = signal.signal(signal.SIGTERM, self._term)
        return self

    @staticmethod
    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        try:
            git("apply", "-R", str(self.patch))
        finally:
            signal.signal(signal.SIGTERM, self._old)
        dirty = tracked_changes()
        if dirty:
            raise SystemExit(f"the tree is not clean after reverting {self.patch.name}:\n{dirty}")


def pytest(args: list[str], timeout: int) -> tuple[int, float, str | None, str]:
    """(exit code, wall seconds, first failing test id, output tail)."""
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate()
        if isinstance(exc, KeyboardInterrupt):
            raise
        return 124, time.monotonic() - start, None, out[-2000:]
    m = FAILED.search(out)
    return proc.returncode, time.monotonic() - start, m.group(1) if m else None, out[-2000:]


def verdict(rc: int) -> str:
    return {0: "survived", 1: "killed", 2: "killed", 5: "no tests ran", 124: "timeout"}.get(rc, f"error rc={rc}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ids", help="comma-separated id prefixes (default: all)")
    ap.add_argument("--no-suite", action="store_true", help="skip the whole-suite run of survivors")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the results file; run the rest")
    ap.add_argument("--rerun", help="comma-separated id prefixes to run again even with --resume")
    ap.add_argument("--timeout", type=int, default=2400, help="seconds per pytest run")
    ap.add_argument("--out", default="fresh_handmade", help="file stem under bench/results/mutation/")
    a = ap.parse_args()
    mutants = tomllib.loads((HERE / "manifest.toml").read_text())["mutant"]
    if a.ids:
        want = a.ids.split(",")
        mutants = [m for m in mutants if any(m["id"].startswith(w) for w in want)]
    if tracked_changes():
        raise SystemExit("commit or stash the tracked changes first: the mutants are applied to this tree")
    old = json.loads((OUT / f"{a.out}.json").read_text()) if a.resume and (OUT / f"{a.out}.json").is_file() else {}
    rerun = a.rerun.split(",") if a.rerun else []
    done = {r["id"]: r for r in old.get("mutants", []) if not any(r["id"].startswith(w) for w in rerun)}
    sessions = old.get("summary", {}).get("sessions", [])
    t0, load0 = time.time(), os.getloadavg()
    rows: list[dict] = []
    by_id = {m["id"]: m for m in mutants}

    def save() -> None:
        ordered = sorted(rows + [r for i, r in done.items() if i not in {x["id"] for x in rows}], key=lambda r: r["id"])
        write(ordered, a.out, [*sessions, {"started_utc": _utc(t0), "wall_s": round(time.time() - t0, 1),
                                           "load_average_start": [round(x, 2) for x in load0],
                                           "load_average_now": [round(x, 2) for x in os.getloadavg()]}])

    for m in mutants:
        row = done.pop(m["id"], None)
        if row is None:
            with Applied(HERE / f"{m['id']}.patch"):
                rc, wall, first, tail = pytest([*PYTEST, *m["expected_tests"]], a.timeout)
            row = {"id": m["id"], "file": m["file"], "expected_tests": m["expected_tests"],
                   "expected_rc": rc, "killed_by_expected": rc in (1, 2), "expected_verdict": verdict(rc),
                   "first_failing_test": first, "expected_wall_s": round(wall, 1)}
            print(f"{m['id']:45s} {row['expected_verdict']:10s} {wall:7.1f}s {first or ''}", flush=True)
        if row["expected_rc"] in (1, 2) and row["first_failing_test"] and "kill_confirmed" not in row:
            crc, _, _, _ = pytest([*PYTEST, row["first_failing_test"]], a.timeout)  # passes without the mutant?
            row["kill_confirmed"] = row["killed_by_expected"] = crc == 0
            print(f"{m['id']:45s} kill confirmed: {crc == 0}", flush=True)
        row.pop("equivalent", None)
        if "equivalent" in m:
            row["equivalent"] = m["equivalent"]
        rows.append(row)
        save()
    for row in rows:
        if row["killed_by_expected"]:
            row["killed_by_suite"] = True
        elif a.no_suite or "equivalent" in row:
            row.setdefault("killed_by_suite", None)
        elif "suite_rc" not in row:
            with Applied(HERE / f"{row['id']}.patch"):
                rc, wall, first, tail = pytest([*PYTEST, "-n", "2", "--dist", "loadfile"], a.timeout)
            row.update(killed_by_suite=rc in (1, 2), suite_rc=rc, suite_verdict=verdict(rc),
                       suite_wall_s=round(wall, 1), suite_first_failing_test=first)
            if rc in (1, 2) and first:
                crc, _, _, _ = pytest([*PYTEST, first], a.timeout)
                row["suite_kill_confirmed"] = row["killed_by_suite"] = crc == 0
            if rc not in (0, 1, 2):
                row["suite_tail"] = tail
            print(f"{row['id']:45s} suite: {verdict(rc):10s} {wall:7.1f}s {first or ''}", flush=True)
        save()
    return 0


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def write(rows: list[dict], stem: str, sessions: list[dict]) -> None:
    n = len(rows)
    by_expected = sum(r["killed_by_expected"] for r in rows)
    by_suite = sum(bool(r.get("killed_by_suite")) for r in rows)
    equivalent = sum("equivalent" in r and not r.get("killed_by_suite") for r in rows)
    pending = sum(r.get("killed_by_suite") is None and "equivalent" not in r for r in rows)
    summary = {
        "mutants": n, "killed_by_expected_tests": by_expected, "killed_by_whole_suite": by_suite,
        "equivalent": equivalent, "survived_whole_suite": n - by_suite - equivalent - pending,
        "not_run_against_whole_suite": pending,
        "wall_s": round(sum(s["wall_s"] for s in sessions), 1), "sessions": sessions,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other test campaigns; run under nice -n 10",
        "pytest": " ".join(PYTEST[3:]) + " EXPECTED_TESTS; survivors: the same with -n 2 --dist loadfile over the "
                  "whole suite; a kill counts only if its first failing test passes without the mutant",
        "commit": git("rev-parse", "HEAD").strip(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps({"summary": summary, "mutants": rows}, indent=2) + "\n")
    lines = [f"# Fresh hand-made mutants (commit {summary['commit'][:10]})", "",
             f"{n} mutants: killed by the expected tests {by_expected}/{n} ({100 * by_expected / max(n, 1):.0f} %), "
             f"by the whole suite {by_suite}/{n} ({100 * by_suite / max(n, 1):.0f} %), equivalent {equivalent}, "
             f"not yet run against the whole suite {pending}. Wall time {summary['wall_s'] / 60:.1f} min in "
             f"{len(sessions)} sitting(s) ({summary['machine']}; load averages in the JSON).", "",
             "| mutant | file | expected tests | whole suite | first failing test | s |", "|---|---|---|---|---|---|"]
    for r in rows:
        exp = "killed" if r["killed_by_expected"] else r["expected_verdict"] + (
            " (kill not confirmed)" if r.get("kill_confirmed") is False else "")
        suite = ("equivalent" if "equivalent" in r and not r.get("killed_by_suite") else
                 "killed" if r.get("killed_by_suite") else "not run" if r.get("killed_by_suite") is None else "survived")
        first = r.get("first_failing_test") if r["killed_by_expected"] else r.get("suite_first_failing_test")
        lines.append(f"| {r['id']} | `{r['file']}` | {exp} | {suite} | `{first or ''}` | "
                     f"{r['expected_wall_s']:.0f}{' + ' + format(r['suite_wall_s'], '.0f') if 'suite_wall_s' in r else ''} |")
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
