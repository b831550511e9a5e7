"""Release bundles and load_pretrained: run dir -> bundle -> model gives identical outputs; bf16
bundles; LFS pointers, truncated, tampered and corrupt files each get their own one-line error;
`python -m bertjax.export` exits 2 with one stderr line on a bad path."""

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from make_hf_export_fixture import VOCAB, make_tokenizer  # noqa: E402
from tokenizers import normalizers

from bertjax import config, output_dirs
from bertjax import export as export_lib
from bertjax.bundle import read_manifest
from bertjax.checkpoint import Checkpoints
from bertjax.errors import UserError
from bertjax.export import export_run, main, save_bundle
from bertjax.hf import import_hf
from bertjax.model import Bert, param_count
from bertjax.optim import make_optimizer
from bertjax.pretrained import load_pretrained
from bertjax.starting_points import load_start
from bertjax.step import init_state
from bertjax.weights import state_dict

ROOT = Path(__file__).resolve().parents[1]
HF_TINY = Path(__file__).parent / "fixtures" / "hf_tiny"
STEP, TOTAL, TOKENS = 6, 10, 6 * 4 * 16
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\noid sha256:"
               "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


def make_config(tmp: Path) -> config.Config:
    return config.load([], [f"model.vocab_size={len(VOCAB)}", "model.hidden_size=32",
                            "model.num_heads=2", "model.intermediate_size=48",
                            "model.max_position_embeddings=32", "data.objective=mlm+nsp",
                            f"data.dir={tmp / 'data'}", f"train.run_dir={tmp / 'run'}"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A pretraining-like run directory: one Orbax checkpoint, tokenizer, results.json."""
    tmp = tmp_path_factory.mktemp("pretrain")
    cfg = make_config(tmp)
    (tmp / "data").mkdir()
    make_tokenizer().save(str(tmp / "data" / "tokenizer.json"))
    model = Bert(cfg.model, key=jax.random.key(3), nsp=True)
    optimizer = make_optimizer(cfg.optim, eqx.filter(model, eqx.is_array))
    checkpoints = Checkpoints(tmp / "run")
    checkpoints.save(STEP, init_state(model, optimizer, cfg.precision),
                     {"config_yaml": config.to_yaml(cfg), "total_steps": TOTAL,
                      "tokens_seen": TOKENS})
    checkpoints.close()
    validation = {"val_loss": 4.25, "val_accuracy": 0.125}
    (tmp / "run" / "results.json").write_text(json.dumps({"steps": STEP, "validation":
                                                          validation}))
    return tmp / "run", model, cfg


def outputs(model: Bert) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, len(VOCAB), (2, 10)), jnp.int32)
    mask = jnp.arange(10)[None] < jnp.array([[10], [6]])
    hidden = model(ids, jnp.zeros_like(ids), mask)
    return {"hidden": np.asarray(hidden), "mlm": np.asarray(model.mlm_logits(hidden)),
            "nsp": np.asarray(model.pair_logits(hidden))}


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory):
    return export_run(run[0], tmp_path_factory.mktemp("bundles") / "b32")


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def test_bundle_round_trip_gives_identical_outputs(run, bundle):
    run_dir, model, cfg = run
    loaded = load_pretrained(bundle)
    assert loaded.kind == "bundle" and loaded.model_cfg == cfg.model and loaded.config == cfg
    assert loaded.tokenizer_path == bundle / "tokenizer.json" and loaded.tokens_seen == TOKENS
    for key, ours in outputs(model).items():
        np.testing.assert_array_equal(outputs(loaded.model)[key], ours, err_msg=key)
    names = set(state_dict(loaded.model))
    assert "encoder.blocks.attn.qkv.weight" in names and "nsp.weight" in names
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "config.yaml", "tokenizer.json"}
    assert manifest["parameters"] == param_count(model)
    assert manifest["summary"]["step"] == STEP and manifest["summary"]["tokens_seen"] == TOKENS
    assert manifest["summary"]["validation"]["val_loss"] == 4.25
    assert manifest["heads"] == {"mlm": True, "nsp": True, "num_labels": 0}
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_run_and_checkpoint_directories_load_the_same_model(run):
    run_dir, model, cfg = run
    for path, kind in ((run_dir, "run"), (run_dir / "checkpoints" / str(STEP), "checkpoint")):
        loaded = load_pretrained(path)
        assert loaded.kind == kind and loaded.config == cfg and loaded.tokens_seen == TOKENS
        assert loaded.tokenizer_path == Path(cfg.data.dir) / "tokenizer.json"
        np.testing.assert_array_equal(outputs(loaded.model)["mlm"], outputs(model)["mlm"])


def test_exporting_the_same_model_again_writes_the_same_bytes(run, bundle, tmp_path):
    """The weights file was not reproducible: safetensors writes its header metadata in hash
    order, which changes from call to call, so two metadata keys came out in either order."""
    run_dir, model, cfg = run
    again = [save_bundle(model, cfg, make_tokenizer(), tmp_path / str(i)) for i in range(12)]
    for out in again:
        for name in ("model.safetensors", "tokenizer.json"):
            assert (out / name).read_bytes() == (bundle / name).read_bytes(), (out, name)


def test_bfloat16_bundle_is_half_the_size_and_close(run, bundle, tmp_path):
    run_dir, model, _ = run
    half = export_run(run_dir, tmp_path / "b16", dtype="bfloat16")
    ratio = (half / "model.safetensors").stat().st_size / (bundle / "model.safetensors").stat(
    ).st_size
    assert 0.49 < ratio < 0.52
    loaded = load_pretrained(half).model
    for key, ours in state_dict(model).items():
        theirs = state_dict(loaded)[key]
        assert theirs.dtype == np.float32  # loaded into the configured param dtype
        np.testing.assert_allclose(theirs, ours, rtol=2**-8, atol=1e-30, err_msg=key)
    assert not np.array_equal(state_dict(loaded)["mlm.transform.weight"],
                              state_dict(model)["mlm.transform.weight"])  # really rounded
    np.testing.assert_allclose(outputs(loaded)["mlm"], outputs(model)["mlm"], atol=0.05)


def test_lfs_pointer_is_named_with_the_fix(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path)
    (copy / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(UserError, match=r"model.safetensors is a git LFS pointer.*"
                                        r"`git lfs install && git lfs pull`") as e:
        load_pretrained(copy)
    assert "\n" not in str(e.value)


def test_truncated_file_says_shorter_with_both_digests(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path)
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    expected = json.loads((copy / "manifest.json").read_text())["files"]["model.safetensors"]
    with pytest.raises(UserError, match=rf"shorter than the manifest lists: {len(data) // 2} of "
                                        rf"{len(data)} bytes \(sha256 expected "
                                        rf"{expected['sha256']}, actual .*\), truncated or "
                                        r"replaced by another file; download the bundle again"):
        load_pretrained(copy)


def test_a_longer_file_in_its_place_is_not_called_truncated_or_modified(bundle, tmp_path):
    """A tokenizer.json copied over a bundle's was called "truncated" (it was smaller); a larger
    one is not the manifest's file either, and says so with both sizes and digests."""
    copy = copy_bundle(bundle, tmp_path)
    tokenizer_json = copy / "tokenizer.json"
    expected = json.loads((copy / "manifest.json").read_text())["files"]["tokenizer.json"]
    tokenizer_json.write_text(tokenizer_json.read_text() + " ")  # another, longer file
    with pytest.raises(UserError, match=rf"tokenizer.json is not the file the manifest lists "
                                        rf"\({expected['size'] + 1} bytes, sha256 \w+; expected "
                                        rf"{expected['size']} bytes, {expected['sha256']}\): it "
                                        r"was replaced by another file") as e:
        load_pretrained(copy)
    assert "\n" not in str(e.value) and "truncated" not in str(e.value)


def test_tampered_file_gives_a_sha256_mismatch(bundle, tmp_path):
    copy = copy_bundle(bundle, tmp_path)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # same size, one bit of one weight flipped
    (copy / "model.safetensors").write_bytes(bytes(data))
    import hashlib

    actual = hashlib.sha256(bytes(data)).hexdigest()
    expected = json.loads((copy / "manifest.json").read_text())["files"]["model.safetensors"]
    with pytest.raises(UserError, match=rf"sha256 mismatch for .*model.safetensors: expected "
                                        rf"{expected['sha256']}, actual {actual}"):
        load_pretrained(copy)


def test_corrupt_safetensors_header_and_lfs_pointer_in_a_hf_directory(tmp_path):
    import shutil

    d = Path(shutil.copytree(HF_TINY / "mlm", tmp_path / "hf"))
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(UserError, match="not a valid safetensors file"):
        load_pretrained(d)
    (d / "model.safetensors").write_text(LFS_POINTER)
    with pytest.raises(UserError, match="git LFS pointer"):
        load_pretrained(d)


@pytest.mark.parametrize("damage, fragment", [
    ("int", r"holds int32 values, not floats; the file is damaged"),
    ("nan", r"holds NaN or infinite values, which make every prediction NaN"),
    ("shape", r"has shape \[31\], but config.json's sizes need \[32\]; config.json does not "
              "belong to these weights"),
])
def test_weights_that_are_not_finite_floats_are_refused(tmp_path, damage, fragment):
    """An integer tensor was cast to float without a word (a bias rounded to whole numbers);
    a NaN one loaded, and predict printed NaN probabilities with exit 0; a wrong-shaped one
    raised numpy's ValueError from joining query | key | value. Each is named by the HF file's
    own tensor name (it was bertjax's)."""
    import shutil

    from safetensors.numpy import load_file, save_file

    d = Path(shutil.copytree(HF_TINY / "mlm", tmp_path / "hf"))
    arrays = load_file(d / "model.safetensors")
    name = "bert.encoder.layer.1.attention.self.key.bias"
    arrays[name] = {"int": lambda a: a.astype(np.int32), "nan": lambda a: np.full_like(a, np.nan),
                    "shape": lambda a: a[1:].copy()}[damage](arrays[name])
    save_file(arrays, d / "model.safetensors")
    with pytest.raises(UserError, match=rf"/hf: {re.escape(name)} {fragment}"):
        load_pretrained(d)


def test_unrecognisable_paths_say_what_was_expected(tmp_path, run):
    with pytest.raises(UserError, match="does not exist; pass a run directory"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="nothing recognisable .* release bundle"):
        load_pretrained(tmp_path / "empty")
    # A GLUE fine-tuning run holds one bundle per seed (seedN/best), not a checkpoint itself.
    (tmp_path / "glue" / "seed0" / "best").mkdir(parents=True)
    (tmp_path / "glue" / "seed0" / "best" / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match=r"fine-tuning run .* e\.g\. .*seed0/best"):
        load_pretrained(tmp_path / "glue")
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no complete checkpoint"):
        load_pretrained(tmp_path / "fresh")
    (tmp_path / "weights.safetensors").write_text(LFS_POINTER)
    with pytest.raises(UserError, match="git LFS pointer"):
        load_pretrained(tmp_path / "weights.safetensors")


def test_glue_model_bundle_keeps_its_classifier(tmp_path):
    cfg = make_config(tmp_path)
    model = Bert(cfg.model, key=jax.random.key(5), mlm=False, num_labels=3,
                 classifier_dropout=cfg.glue.classifier_dropout)
    save_bundle(model, cfg, make_tokenizer(), tmp_path / "best", summary={"best_score": 0.5})
    save_bundle(model, cfg, make_tokenizer(), tmp_path / "best")  # a better epoch replaces it
    loaded = load_pretrained(tmp_path / "best").model
    assert loaded.mlm is None and loaded.classifier.bias.shape == (3,)
    ids = jnp.ones((1, 4), jnp.int32)
    args = (ids, jnp.zeros_like(ids), jnp.ones((1, 4), bool))
    np.testing.assert_array_equal(loaded.classify(loaded(*args)), model.classify(model(*args)))


def test_glue_bundle_keeps_mean_pooling_and_is_readable_by_all(tmp_path):
    cfg = config.load([], [f"model.vocab_size={len(VOCAB)}", "model.hidden_size=32",
                           "model.num_heads=2", "model.intermediate_size=48",
                           "model.max_position_embeddings=32", "glue.pooling=mean"])
    model = Bert(cfg.model, key=jax.random.key(6), mlm=False, num_labels=2, pooling="mean")
    save_bundle(model, cfg, make_tokenizer(), tmp_path / "best")
    loaded = load_pretrained(tmp_path / "best").model
    assert loaded.pooling == "mean"
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "best").iterdir()} == {0o644}
    ids = jnp.array([[2, 5, 6, 3, 0, 0]], jnp.int32)
    args = (ids, jnp.zeros_like(ids), ids != 0)
    np.testing.assert_array_equal(loaded.classify(loaded(*args), args[2]),
                                  model.classify(model(*args), args[2]))


@pytest.mark.slow
def test_cli_refuses_bad_paths_and_non_empty_output(run, tmp_path, capsys):
    proc = subprocess.run([sys.executable, "-m", "bertjax.export", str(tmp_path / "missing"),
                           str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run directory") and "missing" in lines[0]
    main([str(run[0]), str(tmp_path / "out")])
    (tmp_path / "out" / "x").write_text("stale")
    with pytest.raises(UserError, match="not empty; pass --force"):
        main([str(run[0]), str(tmp_path / "out")])
    main([str(run[0]), str(tmp_path / "out"), "--force", "--dtype", "bfloat16"])  # a bundle
    assert not (tmp_path / "out" / "x").exists() and (tmp_path / "out" / "manifest.json").exists()
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(UserError, match="invalid choice.*usage: python -m bertjax.export"):
        main([str(run[0]), str(tmp_path / "o2"), "--dtype", "float16"])


def test_bundle_export_names_the_bundle_to_load(run, tmp_path, capsys):
    """Its closing line ends with init.checkpoint=OUT, ready to paste (it once ended at `=`),
    and says when the run is unfinished (it said only "step 6")."""
    main([str(run[0]), str(tmp_path / "b")])
    out = capsys.readouterr().out.strip()
    assert out.endswith(f"init.checkpoint={tmp_path / 'b'}")
    assert f"step {STEP} of {TOTAL} (the run is unfinished);" in out, out


@pytest.mark.parametrize("argv", [["", "out"], ["run", ""], ["run", "out", "--tokenizer", ""]])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(argv, tmp_path,
                                                                     monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="an empty path .*give a path; usage: python -m"):
        main(argv)
    assert not any(tmp_path.iterdir())


def test_help_describes_both_formats(capsys):
    """--help's description was the docstring's first line only, which stops mid-sentence at
    "[--force]`;" before the --format hf form."""
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("Hugging Face directories: `python -m bertjax.export CHECKPOINT OUT_DIR --format hf"
            in out)


# ---- issue 19: weights bound to their tokenizer, malformed manifests, disk full, bad checkpoints
def swap_tokenizer(bundle: Path) -> None:
    """Another tokenizer of the same size (two ids swapped) and a re-hashed manifest."""
    import hashlib

    spec = json.loads((bundle / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = [t for t in vocab if not t.startswith("[")][-2:]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (bundle / "tokenizer.json").write_text(json.dumps(spec))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (bundle / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_bundle_refuses_a_tokenizer_it_was_not_exported_with(bundle, tmp_path):
    pair = json.loads((bundle / "manifest.json").read_text())["tokenizer"]
    assert pair["vocab_size"] == len(VOCAB) and len(pair["sha256"]) == len(pair[
        "weights_sha256"]) == 64
    copy = copy_bundle(bundle, tmp_path)
    swap_tokenizer(copy)
    with pytest.raises(UserError, match=r"tokenizer.json and model.safetensors were not exported "
                                        r"together .*sha256 .* recorded.*--allow-tokenizer-"
                                        r"mismatch") as e:
        load_pretrained(copy)
    assert "\n" not in str(e.value)
    assert load_pretrained(copy, allow_tokenizer_mismatch=True).kind == "bundle"  # said so
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["tokenizer"]  # a bundle exported before the pair was recorded still loads
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_pretrained(copy).kind == "bundle"
    released = read_manifest(ROOT / "checkpoints" / "tiny_corpus_mini")  # is such a bundle
    assert "tokenizer" not in released


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.pop("files"), "'files' .* is missing or not an object"),
    (lambda m: m["files"]["model.safetensors"].update(size="big"),
     r"files\['model.safetensors'\] must be"),
    (lambda m: m["files"].pop("config.yaml"), "'files' does not list config.yaml"),
    (lambda m: m.update(summary=5), "'summary' is 5, not an object"),
    (lambda m: m.update(tokenizer={"sha256": 1}), "'tokenizer' must hold sha256"),
    (lambda m: [m], "holds a JSON list, not an object"),
])
def test_a_malformed_manifest_is_one_line(bundle, tmp_path, edit, fragment):
    copy = copy_bundle(bundle, tmp_path)
    manifest = json.loads((copy / "manifest.json").read_text())
    edited = edit(manifest)  # in place, or a new value (the list)
    manifest = edited if isinstance(edited, list) else manifest
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=fragment):
        load_pretrained(copy)


def test_disk_full_while_exporting_leaves_the_old_bundle(run, bundle, tmp_path, monkeypatch):
    import errno

    out = copy_bundle(bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(arrays, path, metadata=None):
        Path(path).write_bytes(b"part of the weights")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(export_lib, "save_file", full)
    with pytest.raises(UserError, match="no space left on the disk holding .* the release bundle"):
        export_run(run[0], out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no staging directory left


def test_disk_full_at_a_checkpoint_removes_orbax_temporaries(run, tmp_path):
    import shutil

    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    checkpoints = Checkpoints(run_dir)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())

    def full(step, args, force):  # what orbax + tensorstore raise once the disk is full
        (checkpoints.directory / f"{step}.orbax-checkpoint-tmp" / "state").mkdir(parents=True)
        raise ValueError("RESOURCE_EXHAUSTED: Error writing ... Failed to write 1 bytes: No "
                         "space left on device [os_error_code='28']")

    checkpoints.manager.save = full
    with pytest.raises(UserError, match="no space left .* checkpoint 7; nothing was half-written"):
        checkpoints.save(7, {"x": jnp.zeros(3)}, {})
    checkpoints.close()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_a_disk_without_room_for_the_latest_checkpoints_size_is_refused_before_writing(
        run, tmp_path, monkeypatch):
    import collections
    import shutil

    from bertjax import checkpoint as checkpoint_lib

    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    checkpoints = Checkpoints(run_dir)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    latest = checkpoints.directory / str(checkpoints.latest_step())
    size = sum(f.stat().st_size for f in latest.rglob("*") if f.is_file())
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint_lib.shutil, "disk_usage", lambda _: usage(0, 0, size - 1))
    checkpoints.manager.save = lambda *a, **k: pytest.fail("wrote despite the full disk")
    with pytest.raises(UserError, match=r"for checkpoint 7: it needs about .* MiB \(checkpoint "
                                        r"\d+ does\), .* free; nothing was written"):
        checkpoints.save(7, {"x": jnp.zeros(3)}, {})
    monkeypatch.setattr(checkpoint_lib.shutil, "disk_usage", lambda _: usage(0, 0, size))
    with pytest.raises(pytest.fail.Exception, match="wrote despite"):  # room: it writes
        checkpoints.save(7, {"x": jnp.zeros(3)}, {})
    checkpoints.close()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


def test_a_write_finishing_after_the_disk_full_error_leaves_no_temporaries(run, tmp_path):
    """Orbax raises at the first failed write while tensorstore still finishes others, which
    re-create the temporary directory after a first removal: the save waits them out."""
    import shutil
    import threading

    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    checkpoints = Checkpoints(run_dir)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    late = checkpoints.directory / "7.orbax-checkpoint-tmp" / "state" / "d"

    def finish_late():  # a write still in flight when the error is raised
        time.sleep(0.2)
        late.mkdir(parents=True, exist_ok=True)
        (late / "chunk").write_bytes(b"x")
    writer = threading.Thread(target=finish_late)

    def full(step, args, force):
        writer.start()
        raise ValueError("Failed to write: No space left on device [os_error_code='28']")

    checkpoints.manager.save = full
    with pytest.raises(UserError, match="no space left .* checkpoint 7"):
        checkpoints.save(7, {"x": jnp.zeros(3)}, {})
    writer.join()
    checkpoints.close()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("damage", ["arrays", "meta", "meta type"])
def test_a_damaged_checkpoint_names_its_directory_and_the_fix(run, tmp_path, damage):
    import shutil

    run_dir = Path(shutil.copytree(run[0], tmp_path / "run"))
    step = run_dir / "checkpoints" / str(STEP)
    if damage == "arrays":
        for f in (step / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
    else:
        (step / "meta" / "metadata").write_text("{not json" if damage == "meta" else "[1]")
    with pytest.raises(UserError, match=rf"checkpoint {step}[ :].*delete {step} to fall back") as e:
        load_pretrained(run_dir)
    assert "\n" not in str(e.value)


# ---- --force replaces a previous bundle only; uncreatable outputs; a bad --tokenizer
def tree(path: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None
            for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize("out, fragment", [
    ("parent/run1", "is the directory being exported"),
    ("parent/run1/../run1/.", "is the directory being exported"),
    ("parent", "contains the directory .* would delete"),
    ("link", "contains the directory"),  # a symlink to the parent
    ("parent/run1/checkpoints", "lies inside .*checkpoints, the checkpoints a run manages"),
    ("parent/notes", "not a previous release bundle .*choose an empty or new directory"),
])
def test_force_never_replaces_the_run_what_holds_it_or_a_non_bundle(run, tmp_path, out,
                                                                     fragment):
    import shutil

    parent = tmp_path / "parent"
    shutil.copytree(run[0], parent / "run1")
    (parent / "other.txt").write_text("mine")
    (parent / "notes").mkdir()
    (parent / "notes" / "a.txt").write_text("mine too")
    (tmp_path / "link").symlink_to(parent)
    before = tree(parent)
    with pytest.raises(UserError, match=fragment) as e:
        export_run(parent / "run1", tmp_path / out, force=True)
    assert "\n" not in str(e.value)
    assert tree(parent) == before
    if out == "parent/notes":  # the library's save_bundle (fine-tuning's best/) refuses too
        with pytest.raises(UserError, match="not a previous release bundle"):
            save_bundle(run[1], run[2], make_tokenizer(), tmp_path / out)
        assert tree(parent) == before


@pytest.mark.parametrize("source, out", [
    ("run", "run/checkpoints/99"),  # a step's name: resume and export took it for a checkpoint
    ("run", "run/checkpoints/6/bundle"),  # inside a checkpoint Orbax deletes later
    (f"run/checkpoints/{STEP}", "run/checkpoints/hf"),  # --format hf of one of its checkpoints
    ("run", "glue/seed0/checkpoints/7"),  # a GLUE seed's (a start-over deletes them)
])
def test_an_export_inside_a_runs_checkpoints_is_refused(run, tmp_path, source, out):
    import shutil

    shutil.copytree(run[0], tmp_path / "run")
    (tmp_path / "run" / "config.yaml").write_text(config.to_yaml(run[2]))
    (tmp_path / "glue" / "seed0" / "checkpoints").mkdir(parents=True)
    before = tree(tmp_path)
    export = export_run if source == "run" else export_lib.export_hf_dir
    with pytest.raises(UserError, match="lies inside .*checkpoints, the checkpoints a run "
                                        "manages.*choose a directory outside it"):
        export(tmp_path / source, tmp_path / out)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("out, fragment", [
    ("keep.txt/sub", r"OUT_DIR=.*keep.txt/sub cannot be created: .*keep.txt is a file"),
    ("keep.txt", r"OUT_DIR=.*keep.txt is a file, not a directory"),
    ("/proc/bertjax-bundle", r"cannot create OUT_DIR=/proc/bertjax-bundle \(.*\); set OUT_DIR "
                             "to a directory you can write"),
])
@pytest.mark.parametrize("export", [export_run, export_lib.export_hf_dir], ids=["bundle", "hf"])
def test_an_output_path_that_cannot_be_created_is_one_line(run, tmp_path, out, fragment,
                                                           export):
    """--format hf called it out_dir (the Python argument), the CLI's OUT_DIR elsewhere."""
    if out.startswith("/proc") and not Path("/proc/self").exists():
        pytest.skip("needs Linux /proc")
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=fragment):
        export(run[0], tmp_path / out)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("content, fragment", [
    (None, "does not exist; pass --tokenizer PATH"),
    ("{not json", "is not a valid tokenizer.json .*; pass --tokenizer PATH"),
    (LFS_POINTER, "git LFS pointer"),
    (json.dumps({"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0},
                                             "unk_token": "a"}}), "has no \\[PAD\\]"),
])
def test_a_bad_tokenizer_flag_names_the_users_file(run, tmp_path, content, fragment):
    tok = tmp_path / "tok.json"
    if content is not None:
        tok.write_text(content)
    with pytest.raises(UserError, match=rf"{tok}.*{fragment}") as e:
        export_run(run[0], tmp_path / "out", tokenizer=tok)
    assert ".tmp" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_a_damaged_tokenizer_json_in_a_run_says_how_to_replace_it(run, tmp_path):
    """Export, predict and a fine-tune's start all said "set tokenizer.path to a tokenizer.json
    or null to train one" for a run's own tokenizer.json: a key none of them reads there."""
    import shutil

    from bertjax import predict

    copy = Path(shutil.copytree(run[0], tmp_path / "run"))
    (copy / "tokenizer.json").write_text("{not json")  # the run's copy is read first
    damaged = rf"{copy}/tokenizer.json is not a valid tokenizer.json \(.*\); "
    with pytest.raises(UserError, match=damaged + "pass --tokenizer PATH to the tokenizer.json "
                                                  "the model was trained with"):
        export_run(copy, tmp_path / "out")
    for read in (lambda: predict.main(["fill-mask", str(copy), "a [MASK] b"]),
                 lambda: load_start(config.load([], [f"init.checkpoint={copy}",
                                                     "glue.task=sst2"]))):
        with pytest.raises(UserError, match=damaged + "replace it with a copy of the "
                                                      "tokenizer.json the run was trained with"):
            read()


@pytest.mark.parametrize("export", [export_run, export_lib.export_hf_dir])
def test_a_tokenizer_larger_than_the_vocabulary_is_refused(run, tmp_path, export):
    # --tokenizer of another model (8,192 tokens for these 30-odd rows) wrote the bundle, exit 0.
    big = ROOT / "configs" / "tokenizer_mini.json"
    with pytest.raises(UserError, match=rf"^--tokenizer {big} has 8192 tokens but the model's "
                                        rf"vocabulary has {len(VOCAB)} rows: they do not belong "
                                        "together; .*drop --tokenizer"):
        export(run[0], tmp_path / "out", tokenizer=big)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("export", [export_run, export_lib.export_hf_dir])
def test_a_tokenizer_flag_with_another_vocabulary_than_the_weights_own_is_said(run, tmp_path,
                                                                              export):
    """It was exported without a word, and the bundle then records the pair as the weights'
    own, so the loading check passes it too. The same vocabulary: nothing to say."""
    import warnings

    same = tmp_path / "same.json"
    make_tokenizer().save(str(same))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export(run[0], tmp_path / "a", tokenizer=same)
    vocab = make_tokenizer().get_vocab()
    cat, dog = vocab["cat"], vocab["dog"]
    other_json = json.loads(same.read_text())
    other_json["model"]["vocab"] = {**other_json["model"]["vocab"], "cat": dog, "dog": cat}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(other_json))
    with pytest.warns(UserWarning, match=rf"--tokenizer {other} has another vocabulary than .*"
                                         r"tokenizer.json, the tokenizer found with the weights"):
        export(run[0], tmp_path / "b", tokenizer=other)


def test_a_vocab_txt_as_tokenizer_flag_is_exported_as_its_tokenizer_json(run, tmp_path):
    """A BERT vocab.txt given as --tokenizer: the bundle holds the tokenizer.json it stands for
    (it was copied byte for byte: a bundle whose tokenizer.json was a word list)."""
    from bertjax import tokenizer

    ids = make_tokenizer().get_vocab()
    pieces = {i: piece for piece, i in ids.items()}
    vocab = tmp_path / "vocab.txt"  # the run's pieces; its unused ids as BERT's [unusedN]
    lines = (pieces.get(i, f"[unused{i}]") for i in range(max(ids.values()) + 1))
    vocab.write_text("".join(f"{line}\n" for line in lines))
    with pytest.warns(UserWarning, match="has another vocabulary"):  # the [unusedN] pieces
        export_run(run[0], tmp_path / "out", tokenizer=vocab)
    written = (tmp_path / "out" / "tokenizer.json").read_bytes()
    assert written == tokenizer.file_bytes(vocab, tokenizer.load(vocab))
    text = "the cat sat on the mat"
    assert tokenizer.load(tmp_path / "out" / "tokenizer.json").encode(text).ids == \
        make_tokenizer().encode(text).ids
    assert load_pretrained(tmp_path / "out").tokenizer_path == tmp_path / "out" / "tokenizer.json"


def test_a_full_disk_when_staging_is_the_disk_full_line(run, tmp_path, monkeypatch):
    import errno

    def full(**_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output_dirs.tempfile, "mkdtemp", full)
    with pytest.raises(UserError, match="no space left on the disk holding .* the release bundle"):
        export_run(run[0], tmp_path / "out")


def test_a_fine_tuning_run_or_one_of_its_seeds_points_to_a_seeds_best_bundle(tmp_path):
    for seed in (0, 2, 10):
        (tmp_path / f"seed{seed}" / "best").mkdir(parents=True)
        (tmp_path / f"seed{seed}" / "best" / "manifest.json").write_text("{}")
    for path in (tmp_path, tmp_path / "seed0"):  # no results.json (yet): the first seed's
        with pytest.raises(UserError, match=r"fine-tuning run .* e\.g\. .*seed0/best$"):
            load_pretrained(path)
    # With results.json: the best seed's, whose model wrote the submission files (the first of
    # equals, as the run chose it); it named seed 0's, whatever the scores.
    scores = {0: 0.5092, 10: 0.5149, 2: 0.5149}
    (tmp_path / "results.json").write_text(json.dumps({"seeds": [
        {"seed": seed, "best_score": score} for seed, score in scores.items()]}))
    best = rf"{tmp_path}/seed10/best \(the best seed's, which wrote the submission files\)$"
    with pytest.raises(UserError, match=rf"fine-tuning run .* e\.g\. {best}"):
        load_pretrained(tmp_path)
    with pytest.raises(UserError, match=rf"GLUE fine-tuning run: .* \(e\.g\. {best[:-1]}\): use"):
        main([str(tmp_path), str(tmp_path / "out")])
    (tmp_path / "results.json").write_text('{"seeds": [{"seed": 0}]}')  # damaged: the first
    with pytest.raises(UserError, match=r"fine-tuning run .* e\.g\. .*seed0/best$"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("source, fragment", [
    ("glue", r"it is a GLUE fine-tuning run: its best epochs are release bundles already "
             r"\(e\.g\. .*glue/seed0/best\): use or copy it .*--format hf"),
    ("glue/seed0/best", r"it is a release bundle already: use or copy it .*--format hf"),
])
def test_a_bundle_export_of_a_fine_tuning_run_or_a_bundle_says_it_is_one_already(
        tmp_path, source, fragment):
    """Was "pass a pretraining run directory": no word that the user's model is a bundle."""
    (tmp_path / "glue" / "seed0" / "best").mkdir(parents=True)
    (tmp_path / "glue" / "seed0" / "best" / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match=rf"has no checkpoints/ directory; {fragment}"):
        main([str(tmp_path / source), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_of_a_run_is_told_to_pass_the_run(run, tmp_path):
    """runs/demo/checkpoints/50 said "has no checkpoints/ directory; pass a pretraining run
    directory", not which one."""
    run_dir = run[0]
    step = next(p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    for path, what in ((step, f"checkpoint {step.name} of"), (step.parent, "the checkpoints of")):
        with pytest.raises(UserError, match=rf"; it is {what} the pretraining run {run_dir}: "
                                            rf"pass {run_dir} \(export takes its newest"):
            main([str(path), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_fine_tuning_run_with_no_finished_seed_says_to_finish_it(tmp_path):
    (tmp_path / "seed0" / "checkpoints" / "3").mkdir(parents=True)  # interrupted in seed 0
    with pytest.raises(UserError, match=r"GLUE fine-tuning run with no finished seed yet .* "
                                        r"rerun its command .* then pass .*/seedN/best$"):
        load_pretrained(tmp_path)


# ---- --format hf: any checkpoint -> a directory transformers loads (tests/test_hf.py checks
# export_hf's files against transformers itself; here: the CLI, the class the heads pick, and
# that the directory reads back as the same model)
def test_hf_export_of_a_run_reads_back_as_the_same_model(run, tmp_path, capsys):
    run_dir, model, cfg = run  # pre-LN, MLM + NSP: RoBERTa-PreLN has no pretraining class
    main([str(run_dir), str(tmp_path / "hf"), "--format", "hf"])
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {tmp_path / 'hf'}: RobertaPreLayerNormForMaskedLM")
    assert "its NSP/SOP head is left out" in out and "right-padded" in out
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt"} <= \
        {p.name for p in (tmp_path / "hf").iterdir()}
    back, back_cfg, tokenizer_path = import_hf(tmp_path / "hf")
    assert back_cfg.norm == "pre" and back.nsp is None and tokenizer_path is not None
    ours, theirs = outputs(model), outputs(with_pair_head_of(back, model))
    for key in ("hidden", "mlm"):
        np.testing.assert_allclose(theirs[key], ours[key], rtol=1e-5, atol=1e-5, err_msg=key)


def with_pair_head_of(model: Bert, source: Bert) -> Bert:
    """`model` with `source`'s pooler and NSP head (so `outputs` can run; they are not compared)."""
    return eqx.tree_at(lambda m: (m.pooler, m.nsp), model, (source.pooler, source.nsp),
                       is_leaf=lambda x: x is None)


@pytest.mark.parametrize("norm, heads, architecture", [
    ("post", {"mlm": False, "num_labels": 3}, "BertForSequenceClassification"),  # a GLUE best/
    ("pre", {"mlm": False, "num_labels": 3}, "RobertaPreLayerNormForSequenceClassification"),
    ("post", {"nsp": True}, "BertForPreTraining")])
def test_hf_export_of_a_bundle_picks_the_class_of_its_heads(tmp_path, norm, heads,
                                                            architecture):
    cfg = config.load([], [f"model.vocab_size={len(VOCAB)}", "model.hidden_size=32",
                           "model.num_heads=2", "model.intermediate_size=48",
                           "model.max_position_embeddings=32", f"model.norm={norm}",
                           "glue.task=mnli"])
    model = Bert(cfg.model, key=jax.random.key(5), **heads)
    save_bundle(model, cfg, make_tokenizer(), tmp_path / "seed0" / "best")
    main([str(tmp_path / "seed0" / "best"), str(tmp_path / "hf"), "--format", "hf"])
    hf_config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == [architecture]
    if model.classifier:  # GLUE's class names in GLUE's order (they were LABEL_0..2)
        assert hf_config["id2label"] == {"0": "contradiction", "1": "entailment", "2": "neutral"}
        assert hf_config["label2id"] == {"contradiction": 0, "entailment": 1, "neutral": 2}
    back = import_hf(tmp_path / "hf")[0]
    ids = jnp.array([[2, 5, 6, 7, 3, 0]], jnp.int32)  # right-padded
    args = (ids, jnp.zeros_like(ids), ids != 0)
    theirs, ours = back(*args), model(*args)
    pairs = [(back.classify(theirs), model.classify(ours))] if model.classifier else \
        [(back.mlm_logits(theirs), model.mlm_logits(ours)),
         (back.pair_logits(theirs), model.pair_logits(ours))]
    for a, b in pairs:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_hf_export_refusals_write_nothing(run, tmp_path):
    cfg = config.load([], [f"model.vocab_size={len(VOCAB)}", "model.hidden_size=32",
                           "model.num_heads=2", "model.intermediate_size=48",
                           "model.max_position_embeddings=32", "glue.pooling=mean"])
    model = Bert(cfg.model, key=jax.random.key(6), mlm=False, num_labels=2, pooling="mean")
    save_bundle(model, cfg, make_tokenizer(), tmp_path / "mean")
    with pytest.raises(UserError, match="pools with glue.pooling='mean'"):
        main([str(tmp_path / "mean"), str(tmp_path / "hf"), "--format", "hf"])
    with pytest.raises(UserError, match="--format hf writes float32 weights"):
        main([str(run[0]), str(tmp_path / "hf"), "--format", "hf", "--dtype", "bfloat16"])
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a previous Hugging Face directory"):
        main([str(run[0]), str(tmp_path / "hf"), "--format", "hf", "--force"])
    with pytest.raises(UserError, match="is the directory being exported"):
        main([str(run[0]), str(run[0]), "--format", "hf", "--force"])
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_a_tokenizer_path_beside_a_checkpoint_with_its_own_is_said_to_be_unused(bundle, tmp_path,
                                                                               recwarn):
    # The checkpoint's tokenizer wins (its ids are the weights'); tokenizer.path used to be
    # dropped without a word.
    other, tok = tmp_path / "other.json", make_tokenizer()
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)  # another tokenizer, same size
    tok.save(str(other))
    start = [f"init.checkpoint={bundle}", "glue.task=sst2"]
    with pytest.warns(UserWarning, match=rf"tokenizer.path={other} is not used: .*carries the "
                                         "tokenizer its weights were trained with"):
        load_start(config.load([], [*start, f"tokenizer.path={other}"]))
    with pytest.warns(UserWarning, match="is not used"):  # not there at all: said, no traceback
        load_start(config.load([], [*start, f"tokenizer.path={tmp_path / 'missing.json'}"]))
    recwarn.clear()
    load_start(config.load([], [*start, f"tokenizer.path={bundle / 'tokenizer.json'}"]))
    assert not [w for w in recwarn if "tokenizer.path" in str(w.message)]


def test_a_directory_as_tokenizer_path_of_the_baseline_is_its_tokenizer_file():
    """The no-pretraining baseline read tokenizer.path as a file only: a BERT release folder
    was "no init.checkpoint given and no tokenizer at DIR" (pretraining read it: prepare)."""
    folder = ROOT / "tests" / "fixtures" / "vocab_txt" / "uncased"
    _, _, tok = load_start(config.load([], ["glue.task=sst2", f"tokenizer.path={folder}"]))
    words = (folder / "vocab.txt").read_text().splitlines()
    assert tok.get_vocab() == {word: i for i, word in enumerate(words)}


def test_a_full_disk_during_a_hf_export_is_one_line_and_leaves_nothing(run, tmp_path,
                                                                      monkeypatch):
    import errno

    from bertjax import hf

    def full(state, path, metadata=None):
        Path(path).write_bytes(b"part of the weights")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(hf, "save_file", full)
    with pytest.raises(UserError, match="no space left on the disk holding .* while writing the "
                                        "Hugging Face directory"):
        main([str(run[0]), str(tmp_path / "hf"), "--format", "hf"])
    assert list(tmp_path.iterdir()) == []  # no staging directory left


# A writer killed where `stop_at` is first called: after filling its staging directory (at the
# chmod of its files), or halfway through replacing a previous export (between moving it aside
# and renaming the new one into place).
KILLED_WRITER = """
import os, pathlib, sys, time
from bertjax import output_dirs
stop_at = getattr(pathlib.Path, sys.argv[2])
def stop(self, *args):
    print("ready", flush=True)
    time.sleep(600)
setattr(pathlib.Path, sys.argv[2], stop)
with output_dirs.staged_dir(sys.argv[1], force=True) as tmp:
    (tmp / "model.safetensors").write_bytes(b"half a new export")
"""


def kill_a_writer(out: Path, stop_at: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out), stop_at],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.kill()
    proc.wait()


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_a_killed_exports_temporaries_go_and_a_live_ones_stay(run, bundle, tmp_path):
    """A SIGKILL while staging left a hidden `.OUT.*.tmp` for good; the next export to OUT
    removes it, but not one a live writer holds (its flock), which could be a concurrent export."""
    out = tmp_path / "out"
    kill_a_writer(out, "chmod")
    assert [name.endswith(".tmp") for name in hidden(tmp_path)] == [True]
    with contextlib.ExitStack() as live:
        live_tmp = live.enter_context(output_dirs.staged_dir(tmp_path / "out", force=True))
        (live_tmp / "weights").write_bytes(b"being written")
        export_run(run[0], out)
        assert hidden(tmp_path) == [live_tmp.name]
        live.pop_all().__exit__(UserError, UserError("stop"), None)  # the live one gives up
    assert hidden(tmp_path) == []
    assert read_manifest(out)["files"].keys() == read_manifest(bundle)["files"].keys()


def test_force_onto_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    """export --force onto a link to a previous export replaced the link with a directory and
    left the target holding the old files."""
    (tmp_path / "disk" / "out").mkdir(parents=True)
    (tmp_path / "disk" / "out" / "old").write_text("previous")
    (tmp_path / "out").symlink_to(tmp_path / "disk" / "out")
    with output_dirs.staged_dir(tmp_path / "out", force=True) as tmp:
        (tmp / "new").write_text("this export")
    assert (tmp_path / "out").is_symlink()
    assert sorted(p.name for p in (tmp_path / "disk" / "out").iterdir()) == ["new"]
    assert hidden(tmp_path / "disk") == [] and hidden(tmp_path) == []
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserError, match="a symlink that points back to itself"), \
            output_dirs.staged_dir(tmp_path / "a", force=True):
        pass


@pytest.mark.slow
def test_a_replacement_killed_halfway_puts_the_previous_export_back(run, bundle, tmp_path):
    """Killed between moving the previous export aside and renaming the new one in, a writer
    left OUT missing, its bundle under a hidden `.OUT.*.old/previous`."""
    out = copy_bundle(bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    kill_a_writer(out, "rename")
    assert not out.exists() and len(hidden(tmp_path)) == 2
    with pytest.warns(UserWarning, match="put back .*copy"), \
            pytest.raises(UserError, match="exists and is not empty; pass --force"):
        export_run(run[0], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert hidden(tmp_path) == []


def test_a_run_that_replaces_its_checkpoint_while_it_is_read_is_read_again(run, tmp_path,
                                                                          monkeypatch):
    """Export, predict or a fine-tune of a run still training: the run saves step N+1 and
    deletes N (train.keep_checkpoints) while N is read. That was "checkpoint N is incomplete or
    corrupt ...; delete it", advice that deletes a live run's checkpoint."""
    import shutil

    from bertjax.pretrained import restore_model

    copy = Path(shutil.copytree(run[0], tmp_path / "run"))
    original, reads = Checkpoints.restore_model, []

    def saved_meanwhile(self, step, abstract, times):
        reads.append(step)
        if len(reads) <= times:  # what the training run does meanwhile
            shutil.copytree(self.directory / str(step), self.directory / str(step + 1))
            shutil.rmtree(self.directory / str(step))
        return original(self, step, abstract)

    monkeypatch.setattr(Checkpoints, "restore_model",
                        lambda *a: saved_meanwhile(*a, times=1))
    assert restore_model(copy, None)[2]["step"] == STEP  # the copy's meta: read from STEP + 1
    assert reads == [STEP, STEP + 1]
    monkeypatch.setattr(Checkpoints, "restore_model",
                        lambda *a: saved_meanwhile(*a, times=99))
    with pytest.raises(UserError, match=rf"^{copy} is still training: its newest checkpoint was "
                                        r"replaced while being read, 5 times; .*do not delete"):
        export_run(copy, tmp_path / "out")
    assert not (tmp_path / "out").exists()
