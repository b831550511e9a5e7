"""Reproduction band: one seed of the pinned recipe (configs/band*.yaml) must land inside the band
that bench/band.py measured over many seeds (tests/reproduction_band.json); inside that seed's own
band (what numerically equivalent runs of it moved its figures, widened) wherever the prepared
tokens are the ones it was measured on; and, on the machine type and versions the band file
names, reproduce that seed's figures bit for bit (the recipe's corpus and tokenizer are committed
files, so a fresh prepare gives the same tokens on any Python). Needs ../shared/data/glue/SST-2;
about 3 minutes on 2 quiet CPU cores.
"""

from importlib.metadata import version

import pytest
from band_mutations import MUTATIONS, ROOT
from reproduction import (
    BAND_FILE,
    FIGURES,
    PRETRAIN,
    data_sha256,
    load_band,
    machine_key,
    outside,
    outside_any,
    own_band,
    prepare,
    run_seed,
)

from bertjax import config
from bertjax.prepare import ensure_prepared


@pytest.mark.slow
def test_one_seed_stays_in_the_band(tmp_path, shared_data):
    glue_dir = shared_data / "glue"
    if not (glue_dir / "SST-2" / "dev.tsv").is_file():
        pytest.skip(f"{glue_dir}/SST-2 is not present")
    band = load_band()
    seed, exact = band["test_seed"], band["exact"]
    prepare(tmp_path / "data")
    figures = run_seed(seed, tmp_path / "data", glue_dir, tmp_path / f"seed{seed}")

    key = machine_key()
    same_machine = key == exact["key"]
    own = band["test_seed_band"]
    same_tokens = data_sha256(tmp_path / "data") == own["data_sha256"]
    lines = [f"seed {seed}; band from {band['source']} (mean ± {band['k']} std over "
             f"{len(band['seeds'])} seeds); seed {seed}'s own band from {own['source']}"]
    for name in FIGURES:
        lo, hi = band["band"][name]
        mine = (f", own [{own['band'][name][0]:.8g}, {own['band'][name][1]:.8g}]"
                if same_tokens else "")
        want = f", exact {exact['figures'][name]!r}" if same_machine else ""
        lines.append(f"  {name:18s} {figures[name]!r:22} band [{lo:.6g}, {hi:.6g}]{mine}{want}")
    if not same_tokens:  # corpus and vocabulary are committed: only tokenizers could differ
        lines.append("  own-band check off: the prepared tokens differ from the band's (tokenizers "
                     f"{key['tokenizers']}; the band file's exact figures are from tokenizers "
                     f"{exact['key']['tokenizers']})")
    if not same_machine:
        lines.append("  exact check off, other machine type or versions: " + ", ".join(
            f"{k} {key.get(k)!r} (band file: {v!r})" for k, v in exact["key"].items()
            if key.get(k) != v))
    print("\n".join(lines))
    problems = outside_any(figures, band, tmp_path / "data")
    if problems and not outside(figures, band):
        problems.append(f"inside the seeds' band, outside seed {seed}'s own: a bug too small for "
                        "the seeds' spread, or a change meant to alter numerics (then re-measure "
                        "the seed's band with `bench/band.py --test-seed-only --entry ...` and "
                        "say why in log.md)")
    if same_machine:  # CPU runs are deterministic: the same seed gives the same bits
        differ = [f"{name} = {figures[name]!r} differs from the exact {want!r} this machine "
                  "type gave" for name, want in exact["figures"].items() if figures[name] != want]
        if differ and not problems:
            differ.append("a change that reorders floating-point sums: refresh the exact figures "
                          "with `bench/band.py --exact-only --entry ...` and say why in log.md")
        problems += differ
    assert not problems, "\n".join([*problems, *lines])


def test_each_mutation_still_finds_the_line_it_breaks():
    """bench/band_mutations.py edits one line per deliberate bug; a refactor that moves a line
    must move the mutation with it, or the band's mutation table can no longer be re-measured."""
    stale = [f"{name}: {old!r} in {path}" for name, (path, old, _) in MUTATIONS.items()
             if (ROOT / path).read_text().count(old) != 1]
    assert not stale, "not found exactly once: " + "; ".join(stale)


def test_the_own_band_holds_only_for_the_tokens_it_was_measured_on(tmp_path):
    """A figure a few own-band widths off fails only where the prepared tokens are the band's
    (elsewhere the corpus differs, and only the seeds' band applies)."""
    for name in ("train.bin", "train.lengths", "validation.bin", "validation.lengths"):
        (tmp_path / name).write_bytes(name.encode())
    band = load_band()
    center = band["test_seed_band"]["figures"]
    variants = {"1 device": dict(center, val_mlm_loss=center["val_mlm_loss"] + 1e-4)}
    band["test_seed_band"] = own_band(center, variants, tmp_path, "here")
    assert band["test_seed_band"]["band"]["val_mlm_loss"] == pytest.approx(
        [center["val_mlm_loss"] - 1e-3, center["val_mlm_loss"] + 1e-3])
    off = dict(center, val_mlm_loss=center["val_mlm_loss"] + 3e-3)  # inside the seeds' band
    assert outside(off, band) == [] and outside_any(center, band, tmp_path) == []
    assert [line.split(" = ")[0] for line in outside_any(off, band, tmp_path)] == ["val_mlm_loss"]
    (tmp_path / "train.bin").write_bytes(b"other tokens")
    assert outside_any(off, band, tmp_path) == []


def test_the_band_corpus_prepares_to_the_tokens_the_band_was_measured_on(tmp_path, monkeypatch):
    """The recipe's corpus and vocabulary are committed, so on any Python a fresh prepare gives
    the band's tokens; a change to prepare or the corpus that alters them would otherwise turn
    the test seed's own band off without a failure (the slow test only says so)."""
    monkeypatch.chdir(ROOT)  # the recipe's paths are relative to the repository
    band = load_band()
    ensure_prepared(config.load([str(PRETRAIN)], [f"data.dir={tmp_path}"]))
    if version("tokenizers") != band["exact"]["key"]["tokenizers"]:
        pytest.skip(f"tokenizers {version('tokenizers')} here, the band's tokens are from "
                    f"tokenizers {band['exact']['key']['tokenizers']}")
    assert data_sha256(tmp_path) == band["test_seed_band"]["data_sha256"], (
        "the band recipe's tokens changed: re-measure the band (bench/band.py) and say why in "
        "log.md")



@pytest.mark.parametrize("mode", [["--exact-only"], ["--seeds", "8"]])
def test_a_dry_run_of_the_band_script_keeps_the_band_file(tmp_path, monkeypatch, capsys, mode):
    """bench/band.py --dry-run prints and writes nothing (with --exact-only it once rewrote the
    band file). The runs are replaced by the band's recorded figures, so no seed is trained."""
    import band as band_script  # bench/ is on the path through pyproject

    band_file = tmp_path / "band.json"
    band_file.write_bytes(BAND_FILE.read_bytes())
    band = load_band()
    monkeypatch.setattr(band_script.recipe, "BAND_FILE", band_file)
    monkeypatch.setattr(band_script.recipe, "prepare", lambda data: data.mkdir(parents=True))
    monkeypatch.setattr(band_script.recipe, "data_sha256", lambda data: "other tokens")
    monkeypatch.setattr(band_script.recipe, "run_seed",
                        lambda seed, *_: band["per_seed"].get(str(seed), band["exact"]["figures"]))
    monkeypatch.setattr(band_script, "measure_own_band", lambda *_: band["test_seed_band"])
    monkeypatch.setattr("sys.argv", ["band.py", "--entry", "a test", "--dry-run",
                                     f"--work={tmp_path / 'work'}", *mode])
    band_script.main()
    assert band_file.read_bytes() == BAND_FILE.read_bytes()
    assert "dry run: " in capsys.readouterr().out
