"""Does the reproduction band catch what it is for? Run the band's test seed under deliberate bugs
(each one edit to the code, in a throwaway git worktree of HEAD) and print which figures leave the
bands of tests/reproduction_band.json (the seeds', and the test seed's own). log.md (sessions 13,
14) has the table and what it means.
    .venv/bin/python bench/band_mutations.py [NAME ...]        (~2.6 min per mutation)
"""

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# name -> (file, the line as it is, the bug); each `old` must occur exactly once.
MUTATIONS = {
    "mask_rate_5pct": ("bertjax/masking.py", "rate=data_cfg.mask_rate,",
                       "rate=data_cfg.mask_rate / 3,"),
    "warmup_off": ("bertjax/optim.py", "warmup = int(cfg.warmup * total_steps)", "warmup = 0"),
    "one_batch_repeated": ("bertjax/pretrain_loop.py",
                           "first, size = self.position(step), ramp.batch(step)",
                           "first, size = 0, ramp.batch(step)"),
    "dropout_key_reused": ("bertjax/model.py",
                           "else jax.random.split(k_blocks, self.num_layers)",
                           "else jax.vmap(lambda _: k_blocks)(jnp.arange(self.num_layers))"),
    "loss_all_slots": ("bertjax/step.py", 'jnp.maximum(batch["weights"].sum(), 1.0)',
                       'jnp.asarray(float(batch["weights"].size))'),
    "loss_per_sequence": ("bertjax/step.py", 'jnp.maximum(batch["weights"].sum(), 1.0)',
                          "jnp.asarray(float(rows))"),
}


def load_recipe(root: Path):
    """tests/reproduction.py of the checkout at `root` (its runs use that checkout's code)."""
    spec = importlib.util.spec_from_file_location("reproduction", root / "tests" /
                                                  "reproduction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help=f"default: all of {', '.join(MUTATIONS)}")
    p.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    args = p.parse_args()
    if unknown := set(args.names) - set(MUTATIONS):
        p.error(f"unknown mutation(s) {', '.join(sorted(unknown))}; known: {', '.join(MUTATIONS)}")
    band = load_recipe(ROOT).load_band()
    seed = band["test_seed"]
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree)],
                       check=True)
        try:
            recipe = load_recipe(tree)
            recipe.prepare(Path(scratch) / "data")
            for name in args.names or MUTATIONS:
                path, old, new = MUTATIONS[name]
                source = (tree / path).read_text()
                if source.count(old) != 1:
                    sys.exit(f"{name}: {old!r} is not in {path} exactly once; update MUTATIONS")
                (tree / path).write_text(source.replace(old, new))
                start = time.perf_counter()
                figures = recipe.run_seed(seed, Path(scratch) / "data", Path(args.glue_dir),
                                          Path(scratch) / name)
                (tree / path).write_text(source)
                out = recipe.outside_any(figures, band, Path(scratch) / "data")
                print(f"{name} ({time.perf_counter() - start:.0f} s): " +
                      ", ".join(f"{k} {v:.4f}" for k, v in figures.items()), flush=True)
                print("  " + ("\n  ".join(out) if out else "INSIDE the band: not caught"),
                      flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                           check=False)


if __name__ == "__main__":
    main()
