"""Re-measure the reproduction band: run the pinned recipe (configs/band*.yaml) for N seeds, print
each seed's figures with their mean, std and band (mean ± k std); run the test seed again under
the numerically equivalent variants (reproduction.VARIANTS) for its own band; and write
tests/reproduction_band.json with both bands, and the test seed's exact figures with the machine
key they hold for.
    .venv/bin/python bench/band.py --seeds 10 --entry "2026-12-01 — ..."   (~2.6 min per run)
A change meant to alter numerics re-measures the test seed only (its exact figures, own band):
    .venv/bin/python bench/band.py --test-seed-only --entry "2026-12-01 — ..."   (4 runs)
A change that only reorders sums (or a new machine type) refreshes only the exact figures:
    .venv/bin/python bench/band.py --exact-only --entry "2026-12-01 — ..."   (1 run)
"""

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

from scipy import stats as scipy_stats  # (a dependency of jax)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reproduction as recipe  # noqa: E402


def band_of(runs, k: float) -> tuple[dict, dict]:
    """Per figure (mean, sample std) over the runs, and the band mean ± k std."""
    stats = {n: (statistics.mean(v := [f[n] for f in runs]), statistics.stdev(v))
             for n in recipe.FIGURES}
    return stats, {n: [m - k * s, m + k * s] for n, (m, s) in stats.items()}


def false_alarm(k: float, n: int) -> float:
    """P(a new correct run's figure is outside mean ± k std of n seeds) for normal figures:
    (x - mean) / (std sqrt(1 + 1/n)) is then Student-t with n - 1 degrees of freedom."""
    return float(2 * scipy_stats.t.sf(k / math.sqrt(1 + 1 / n), n - 1))


def measure_own_band(work: Path, glue_dir: Path, seed: int, center: dict, entry: str,
                     from_runs: bool) -> dict:
    """Run (or read) `seed` under each of reproduction.VARIANTS; its band around `center`."""
    variants = {}
    for name, flags in recipe.VARIANTS.items():
        out, start = work / f"seed{seed}-{name.replace(' ', '-')}", time.perf_counter()
        variants[name] = recipe.figures(out) if from_runs else \
            recipe.run_seed(seed, work / "data", glue_dir, out, flags)
        print(f"seed {seed}, {name} ({time.perf_counter() - start:.0f} s): " +
              ", ".join(f"{k} {v!r}" for k, v in variants[name].items()), flush=True)
    own = recipe.own_band(center, variants, work / "data", f"log.md, {entry}")
    print(f"| figure | seed {seed} | largest deviation | own band |\n|---|---:|---:|---|")
    for n in recipe.FIGURES:
        lo, hi = own["band"][n]
        print(f"| {n} | {center[n]:.8g} | {own['deviation'][n]:.3g} | [{lo:.8g}, {hi:.8g}] |")
    return own


def refresh_test_seed(work: Path, glue_dir: Path, entry: str, own: bool, dry_run: bool) -> None:
    """Run the test seed and replace the band file's exact figures and machine key (and, with
    `own`, its own band); nothing is written when the new figures leave the seeds' band (then
    re-measure everything), or, without `own`, the seed's own band, or on a dry run."""
    band = recipe.load_band()
    seed = band["test_seed"]
    figures = recipe.run_seed(seed, work / "data", glue_dir, work / f"seed{seed}")
    print(f"seed {seed}: " + ", ".join(f"{k} {v!r}" for k, v in figures.items()))
    if problems := recipe.outside(figures, band):
        raise SystemExit("not written: the new figures leave the seeds' band; re-measure it\n" +
                         "\n".join(problems))
    if own:
        band["test_seed_band"] = measure_own_band(work, glue_dir, seed, figures, entry, False)
    elif problems := recipe.outside_any(figures, band, work / "data"):
        raise SystemExit("not written: the new figures leave the test seed's own band; "
                         "re-measure it with --test-seed-only\n" + "\n".join(problems))
    band["exact"] = {"key": recipe.machine_key(), "figures": figures, "source": f"log.md, {entry}"}
    if dry_run:
        print(f"dry run: {recipe.BAND_FILE} kept")
        return
    recipe.BAND_FILE.write_text(json.dumps(band, indent=2) + "\n")
    print(f"wrote the exact figures{' and own band' if own else ''} into {recipe.BAND_FILE}")


def print_band(per_seed: dict, stats: dict, band: dict, k: float) -> None:
    """The seeds' figures, their mean, std and band as a markdown table, then how many figures
    fall outside the band when each seed is held out."""
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
        f, {"band": band_of([g for t, g in per_seed.items() if t != s], k)[1]})]
    print(f"leave-one-out: {len(misses)} of {len(per_seed) * len(names)} figures outside",
          *misses, sep="\n  ")
    alarm = false_alarm(k, len(per_seed))
    print(f"a correct run outside, if the figures were normal: {alarm:.2g} per figure, at most "
          f"{len(names) * alarm:.2g} per run")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (at least 8)")
    p.add_argument("--k", type=float, default=6.0, help="band = mean ± k sample std "
                   "(6: late MLM figures have a heavy tail, log.md)")
    p.add_argument("--test-seed", type=int, default=0, help="the seed the test runs")
    p.add_argument("--glue-dir", default=str(Path(__file__).resolve().parents[2] / "shared" /
                                             "data" / "glue"))
    p.add_argument("--work", default="runs/band", help="scratch directory (emptied first)")
    p.add_argument("--entry", required=True, help="log.md entry (date — title) the band is from")
    p.add_argument("--dry-run", action="store_true", help="print only; keep the band file")
    p.add_argument("--from-runs", action="store_true",
                   help="read the figures of runs already in --work instead of running")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--exact-only", action="store_true",
                      help="run the test seed only and replace the exact figures (bands kept)")
    only.add_argument("--test-seed-only", action="store_true",
                      help="run the test seed and its variants; replace its exact figures and "
                           "own band (the seeds' band kept)")
    args = p.parse_args()
    work = Path(args.work).resolve()
    if not args.from_runs:
        shutil.rmtree(work, ignore_errors=True)
        recipe.prepare(work / "data")
    if args.exact_only or args.test_seed_only:
        return refresh_test_seed(work, Path(args.glue_dir), args.entry, args.test_seed_only,
                                 args.dry_run)
    per_seed = {}
    for seed in range(args.seeds):
        out, start = work / f"seed{seed}", time.perf_counter()
        per_seed[seed] = recipe.figures(out) if args.from_runs else \
            recipe.run_seed(seed, work / "data", Path(args.glue_dir), out)
        print(f"seed {seed} ({time.perf_counter() - start:.0f} s): " +
              ", ".join(f"{k} {v:.5f}" for k, v in per_seed[seed].items()), flush=True)
    stats, band = band_of(per_seed.values(), args.k)
    print_band(per_seed, stats, band, args.k)
    result = {"source": f"log.md, {args.entry}", "recipe": ["configs/band.yaml",
                                                             "configs/band_sst2.yaml"],
              "seeds": list(per_seed), "k": args.k, "figures": recipe.FIGURES,
              "mean": {n: s[0] for n, s in stats.items()},
              "std": {n: s[1] for n, s in stats.items()}, "band": band,
              "per_seed": {str(s): f for s, f in per_seed.items()}, "test_seed": args.test_seed,
              "exact": {"key": recipe.machine_key(), "figures": per_seed[args.test_seed],
                        "source": f"log.md, {args.entry}"},
              "test_seed_band": measure_own_band(work, Path(args.glue_dir), args.test_seed,
                                                 per_seed[args.test_seed], args.entry,
                                                 args.from_runs)}
    if not args.dry_run:
        recipe.BAND_FILE.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {recipe.BAND_FILE}")
    else:
        print(f"dry run: {recipe.BAND_FILE} kept")


if __name__ == "__main__":
    main()
