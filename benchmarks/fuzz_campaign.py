"""Long fuzz campaign: run each fuzz target of the test suite for a wall-clock budget with fresh
random seeds (the CI runs them with fixed seeds and a bounded example count).

    python benchmarks/fuzz_campaign.py [--minutes 10] [--targets NAME,...] [--json OUT]

Prints each failure as it is found (hypothesis' shrunk, reproducible counterexample), then per
target the examples run, the seconds spent and the number of failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

BATCH = 2000
os.environ["LPEMU_FUZZ_RANDOM"] = "1"  # fresh random seeds on every call
os.environ["LPEMU_FUZZ_EXAMPLES"] = str(BATCH)


def targets() -> dict[str, object]:
    import test_checkpoint
    import test_fuzz

    out = {name: getattr(test_fuzz, name) for name in dir(test_fuzz)
           if name.startswith("test_") and hasattr(getattr(test_fuzz, name), "hypothesis")}
    for name in dir(test_checkpoint):
        if name.startswith("test_fuzz") and hasattr(getattr(test_checkpoint, name), "hypothesis"):
            out[f"checkpoint:{name}"] = getattr(test_checkpoint, name)
    return out


def run_target(fn: object, seconds: float) -> dict[str, object]:
    t0 = time.perf_counter()
    examples, failures = 0, []
    while time.perf_counter() - t0 < seconds:
        try:
            fn()  # type: ignore[operator]
        except Exception as e:  # a counterexample: report it at once, keep going
            notes = "\n".join(getattr(e, "__notes__", []))  # hypothesis' falsifying example
            failures.append(f"{type(e).__name__}: {e}\n{notes}"[:2000])
            print(f"  failure {len(failures)}: {failures[-1]}", flush=True)
        examples += BATCH
    return {"examples": examples, "seconds": time.perf_counter() - t0, "failures": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="wall time per target")
    ap.add_argument("--targets", help="comma-separated subset of target names")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    all_t = targets()
    if args.list:
        print("\n".join(all_t))
        return 0
    names = args.targets.split(",") if args.targets else list(all_t)
    unknown = [n for n in names if n not in all_t]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; --list shows the targets")
    results = {}
    for name in names:
        results[name] = run_target(all_t[name], 60 * args.minutes)
        r = results[name]
        print(f"{name}: {r['examples']:,} examples in {r['seconds']:.0f} s, "
              f"{len(r['failures'])} failures", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 1 if any(r["failures"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
