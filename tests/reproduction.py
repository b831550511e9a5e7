"""The reproduction-band recipe (configs/band.yaml, configs/band_sst2.yaml) for one seed, and the
band file that tests/test_reproduction.py and bench/band.py share. Every stage runs as
`python -m bertjax.{prepare,train}` in a subprocess whose environment is pinned here (8 forced
CPU devices, strict promotion, offline), so the test and the bench measure the same numbers.
A "seed" s is train.seed=s for pretraining and glue.seeds=[s] for fine-tuning.

Two bands: the seeds' band (mean ± k std over many seeds: what any correct run lands in) and the
test seed's own band (its figures ± what numerically equivalent runs of that same seed move
them: ~800 times narrower in the pretraining figures, so it also sees bugs too small for the
seeds' spread).
"""

import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BAND_FILE = ROOT / "tests" / "reproduction_band.json"
PRETRAIN, FINETUNE = ROOT / "configs" / "band.yaml", ROOT / "configs" / "band_sst2.yaml"
# name -> what it is; every figure of one seed's run
FIGURES = {
    "val_mlm_loss": "pretraining: validation MLM loss (results.json)",
    "val_mlm_accuracy": "pretraining: validation MLM accuracy (results.json)",
    "early_mlm_loss": "pretraining: training MLM loss of the first logged window (warm-up)",
    "early_grad_norm": "pretraining: gradient norm (before clipping), first logged window",
    "train_mlm_loss": "pretraining: training MLM loss of the last logged window",
    "grad_norm": "pretraining: gradient norm (before clipping), mean of the later windows",
    "sst2_dev_accuracy": "fine-tuning: SST-2 dev accuracy after one epoch",
    "sst2_train_loss": "fine-tuning: SST-2 training loss over the epoch",
}
XLA_FLAGS = "--xla_force_host_platform_device_count=8"
# Runs of the test seed that only reorder floating-point sums, as another CPU type, XLA version or
# a harmless refactor would: the gradient reduced over fewer devices, XLA's fusion changed.
VARIANTS = {"1 device": "--xla_force_host_platform_device_count=1",
            "2 devices": "--xla_force_host_platform_device_count=2",
            "XLA -O0": f"{XLA_FLAGS} --xla_backend_optimization_level=0"}
# The test seed's band: its figure ± max(MARGIN x the variants' largest deviation, a floor of
# 1e-4 relative, or 0.5 % for an accuracy: a few dev examples, ~60 MLM predictions), because
# the three variants cannot show every other machine's rounding (log.md, session 14).
MARGIN, RELATIVE_FLOOR, ACCURACY_FLOOR = 10.0, 1e-4, 0.005
SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "asimd")


def pinned_env(xla_flags: str = XLA_FLAGS) -> dict[str, str]:
    """The test suite's environment (tests/conftest.py), pinned: no inherited JAX/XLA settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu",
               JAX_NUMPY_DTYPE_PROMOTION="strict", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="true", PYTHONHASHSEED="0")
    return env


def machine_key() -> dict:
    """What a bit-exact result holds for: CPU model and SIMD flags, core count, and the versions
    that could decide the numbers (tokenizers encodes the corpus)."""
    info = {}
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = (s.strip() for s in line.partition(":"))
            info.setdefault(name, value)
    flags = set(info.get("flags", info.get("Features", "")).split())
    return {"cpu": info.get("model name", platform.processor() or "unknown"),
            "cpu_family_model_stepping": "/".join(info.get(k, "?") for k in
                                                  ("cpu family", "model", "stepping")),
            "simd": sorted(flags & set(SIMD_FLAGS)), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            **{p: version(p) for p in ("jax", "jaxlib", "numpy", "tokenizers")},
            "xla_flags": pinned_env()["XLA_FLAGS"]}


def _run(args: list[str], log: Path, xla_flags: str = XLA_FLAGS) -> None:
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=pinned_env(xla_flags),
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"{' '.join(args[:2])} failed (exit {done.returncode}):\n{tail}")


def prepare(data_dir: Path) -> None:
    """The committed corpus through the committed vocabulary (configs/band.yaml): the same tokens
    for every seed, on any Python."""
    data_dir.mkdir(parents=True, exist_ok=True)
    _run(["bertjax.prepare", str(PRETRAIN), f"data.dir={data_dir}"], data_dir / "prepare.log")


def data_sha256(data_dir: Path) -> str:
    """The prepared tokens' fingerprint: the test seed's band holds only for the tokens it was
    measured on (another tokenizers version could encode the corpus differently)."""
    digest = hashlib.sha256()
    for name in ("train.bin", "train.lengths", "validation.bin", "validation.lengths"):
        digest.update((data_dir / name).read_bytes())
    return digest.hexdigest()


def run_seed(seed: int, data_dir: Path, glue_dir: Path, out: Path,
             xla_flags: str = XLA_FLAGS) -> dict[str, float]:
    """Pretrain + fine-tune one seed into out/pretrain and out/sst2; returns its figures."""
    pre, ft = out / "pretrain", out / "sst2"
    out.mkdir(parents=True, exist_ok=True)
    _run(["bertjax.train", str(PRETRAIN), f"data.dir={data_dir}", f"train.run_dir={pre}",
          f"train.seed={seed}"], out / "pretrain.log", xla_flags)
    _run(["bertjax.train", str(FINETUNE), f"init.checkpoint={pre}", f"glue.data_dir={glue_dir}",
          f"train.run_dir={ft}", f"glue.seeds=[{seed}]"], out / "sst2.log", xla_flags)
    return figures(out)


def figures(out: Path) -> dict[str, float]:
    """A seed's figures, read from the files its two runs wrote (see FIGURES)."""
    val = json.loads((out / "pretrain" / "results.json").read_text())["validation"]
    rows = [json.loads(x) for x in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    first, *later = [r for r in rows if "grad_norm" in r]  # one row per log_every steps
    glue = json.loads((out / "sst2" / "results.json").read_text())["seeds"][0]["history"][-1]
    return {"val_mlm_loss": val["val_loss"], "val_mlm_accuracy": val["val_accuracy"],
            "early_mlm_loss": first["loss"], "early_grad_norm": first["grad_norm"],
            "train_mlm_loss": later[-1]["loss"],
            "grad_norm": sum(r["grad_norm"] for r in later) / len(later),
            "sst2_dev_accuracy": glue["dev"]["dev"]["accuracy"],
            "sst2_train_loss": glue["train_loss"]}


def load_band() -> dict:
    return json.loads(BAND_FILE.read_text())


def own_band(center: dict[str, float], variants: dict[str, dict[str, float]], data_dir: Path,
             source: str) -> dict:
    """The test seed's band from its default run (`center`) and its VARIANTS' runs."""
    deviation = {n: max(abs(v[n] - center[n]) for v in variants.values()) for n in FIGURES}
    half = {n: max(MARGIN * deviation[n], ACCURACY_FLOOR if "accuracy" in n else
                   RELATIVE_FLOOR * abs(center[n])) for n in FIGURES}
    return {"source": source, "data_sha256": data_sha256(data_dir), "margin": MARGIN,
            "relative_floor": RELATIVE_FLOOR, "accuracy_floor": ACCURACY_FLOOR,
            "figures": center, "variants": {name: {"xla_flags": VARIANTS[name], "figures": v}
                                            for name, v in variants.items()},
            "deviation": deviation,
            "band": {n: [center[n] - half[n], center[n] + half[n]] for n in FIGURES}}


def outside(figures: dict[str, float], band: dict, which: str = "the seeds' band") -> list[str]:
    """One line per figure outside `band` (the band file, or its "test_seed_band")."""
    return [f"{name} = {figures[name]:.6g} is outside {which} [{lo:.6g}, {hi:.6g}]"
            for name, (lo, hi) in ((n, band["band"][n]) for n in FIGURES)
            if not lo <= figures[name] <= hi]


def outside_any(figures: dict[str, float], band: dict, data_dir: Path) -> list[str]:
    """Lines for the seeds' band, and for the test seed's band when it holds here (same tokens);
    the caller runs the test seed."""
    tight = band.get("test_seed_band")
    lines = outside(figures, band)
    if tight and data_sha256(data_dir) == tight["data_sha256"]:
        lines += outside(figures, tight, f"seed {band['test_seed']}'s own band")
    return lines
