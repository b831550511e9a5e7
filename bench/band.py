"""Re-measure the reproduction band: run the pinned recipe (configs/band*.yaml) for N seeds, print
each seed's figures with their mean, std and band (mean ± k std), and write
tests/reproduction_band.json with the test seed's exact figures and the machine key they hold for.
    .venv/bin/python bench/band.py --seeds 10 --entry "2026-12-01 — ..."   (~2-3 min per seed)
"""

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reproduction as recipe  # noqa: E402


def band_of(runs, k: float) -> tuple[dict, dict]:
    """Per figure (mean, sample std) over the runs, and the band mean ± k std."""
    stats = {n: (statistics.mean(v := [f[n] for f in runs]), statistics.stdev(v))
             for n in recipe.FIGURES}
    return stats, {n: [m - k * s, m + k * s] for n, (m, s) in stats.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (at least 8)")
    p.add_argument("--k", type=float, default=6.0, help="band = mean ± k sample std "
                   "(6: late MLM figures have a heavy tail, LOG_issue20.md)")
    p.add_argument("--test-seed", type=int, default=0, help="the seed the test runs")
    p.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                             "data" / "glue"))
    p.add_argument("--work", default="runs/band", help="scratch directory (emptied first)")
    p.add_argument("--entry", required=True, help="log.md entry (date — title) the band is from")
    p.add_argument("--dry-run", action="store_true", help="print only; keep the band file")
    p.add_argument("--from-runs", action="store_true",
                   help="read the figures of runs already in --work instead of running")
    args = p.parse_args()
    work = Path(args.work).resolve()
    if not args.from_runs:
        shutil.rmtree(work, ignore_errors=True)
        recipe.prepare(work / "data")
    per_seed = {}
    for seed in range(args.seeds):
        out, start = work / f"seed{seed}", time.perf_counter()
        per_seed[seed] = recipe.figures(out) if args.from_runs else \
            recipe.run_seed(seed, work / "data", Path(args.glue_dir), out)
        print(f"seed {seed} ({time.perf_counter() - start:.0f} s): " +
              ", ".join(f"{k} {v:.5f}" for k, v in per_seed[seed].items()), flush=True)
    stats, band = band_of(per_seed.values(), args.k)
    names = list(recipe.FIGURES)
    print("| seed | " + " | ".join(names) + " |\n|---:|" + "---:|" * len(names))
    for seed, f in per_seed.items():
        print(f"| {seed} | " + " | ".join(f"{f[n]:.4f}" for n in names) + " |")
    for label, row in (("mean", [stats[n][0] for n in names]),
                       ("std", [stats[n][1] for n in names]),
                       ("band lo", [band[n][0] for n in names]),
                       ("band hi", [band[n][1] for n in names])):
        print(f"| {label} | " + " | ".join(f"{x:.4f}" for x in row) + " |")
    # Each seed against the band of the others: how often a correct run would have failed.
    misses = [f"seed {s}: {line}" for s, f in per_seed.items() for line in recipe.outside(
        f, {"band": band_of([g for t, g in per_seed.items() if t != s], args.k)[1]})]
    print(f"leave-one-out: {len(misses)} of {len(per_seed) * len(names)} figures outside",
          *misses, sep="\n  ")
    result = {"source": f"log.md, {args.entry}", "recipe": ["configs/band.yaml",
                                                             "configs/band_sst2.yaml"],
              "seeds": list(per_seed), "k": args.k, "figures": recipe.FIGURES,
              "mean": {n: s[0] for n, s in stats.items()},
              "std": {n: s[1] for n, s in stats.items()}, "band": band,
              "per_seed": {str(s): f for s, f in per_seed.items()}, "test_seed": args.test_seed,
              "exact": {"key": recipe.machine_key(), "figures": per_seed[args.test_seed]}}
    if not args.dry_run:
        recipe.BAND_FILE.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {recipe.BAND_FILE}")


if __name__ == "__main__":
    main()
