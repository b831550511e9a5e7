"""The wheels a GPU call carries: what bertjax imports that the GPU image may lack. The image has
jax, equinox, optax, torch and transformers (and so numpy, PyYAML, tokenizers, safetensors,
jaxtyping); a run also needs OmegaConf and Orbax, and Orbax needs more than jax brings.

    python bench/gpu_wheels.py download [--dir .whl]      # here, once: the versions this
                                                          # environment has, for Python 3.12
    python3 bench/gpu_wheels.py install [--dir .whl] [--target /tmp/site]   # on the GPU machine

`install` installs a carried wheel only where the machine has no distribution of that name, and
without dependencies: pip's own resolution into --target would install jax and numpy again,
over the image's (it ignores what is installed). matplotlib (a run's curves.png) is left out: a
run without it skips the plot and says so.
"""

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

# omegaconf, then orbax-checkpoint 0.12.8 and the requirements its metadata declares that the
# image's packages do not bring (its etils[epath] adds zipp, and fsspec, which transformers has).
CARRIED = ("omegaconf", "orbax-checkpoint", "tensorstore", "absl-py", "etils", "zipp", "msgpack",
           "protobuf", "humanize", "simplejson", "aiofiles", "psutil", "uvloop",
           "prometheus-client")
# The GPU image: CPython 3.12 on x86-64 Linux (log.md); a wheel built for any of these glibc
# levels will do.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64")


def normalized(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def download(folder: Path) -> None:
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, "-d", str(folder), *pins], check=True)
    size = sum(p.stat().st_size for p in folder.glob("*.whl"))
    print(f"{folder}: {len(pins)} wheels pinned ({', '.join(pins)}), {size / 2**20:.1f} MiB")


def install(folder: Path, target: Path) -> None:
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        print(f"error: no wheels in {folder}; run `python bench/gpu_wheels.py download` on the "
              f"CPU machine and carry {folder}", file=sys.stderr)
        sys.exit(2)
    missing, carried, present = [], [], []
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        try:
            present.append(f"{name} {importlib.metadata.version(normalized(name))}")
        except importlib.metadata.PackageNotFoundError:
            missing.append(str(wheel))
            carried.append(f"{name} {version}")
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
                        *missing], check=True)
    print(f"wheels: installed into {target}: {', '.join(carried) or 'none'}; already here: "
          f"{', '.join(present) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["download", "install"])
    parser.add_argument("--dir", type=Path, default=Path(".whl"), help="the wheels' folder")
    parser.add_argument("--target", type=Path, default=Path("/tmp/site"),
                        help="install: where (then put it first on PYTHONPATH)")
    args = parser.parse_args()
    if args.action == "download":
        download(args.dir)
    else:
        install(args.dir, args.target)


if __name__ == "__main__":
    main()
