"""A Hugging Face hub model id as a checkpoint (`init.checkpoint=org/name`) or a tokenizer
(`tokenizer.path=org/name`): read from the Hugging Face cache as huggingface_hub lays it out
(offline here: the tests run with HF_HUB_OFFLINE=1), and one line naming the fix when it is not
there or has no safetensors."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import jax
import numpy as np
import pytest
from conftest import bert_style_tokenizer, load_cfg, write_corpus
from test_hf import with_vocab_txt

from bertjax import prepare
from bertjax.errors import UserError
from bertjax.pretrained import load_pretrained

HF_TINY = Path(__file__).parent / "fixtures" / "hf_tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_model(cache: Path, model_id: str, source: Path) -> Path:
    """`source`'s files as huggingface_hub's cache holds a downloaded snapshot of `model_id`
    (models--org--name/refs/main naming the commit, snapshots/<commit>/ its files)."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(source, repo / "snapshots" / COMMIT)
    return repo / "snapshots" / COMMIT


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # a relative name is looked for here first
    return cache


def test_a_hub_id_loads_the_cached_model_like_its_directory(hub_cache):
    # A hub id was refused ("download it first"): it is now read through huggingface_hub.
    cached_model(hub_cache, "some-org/tiny-bert", HF_TINY / "mlm")
    from_hub, from_dir = load_pretrained("some-org/tiny-bert"), load_pretrained(HF_TINY / "mlm")
    assert from_hub.kind == "hf" and from_hub.model_cfg == from_dir.model_cfg
    for a, b in zip(jax.tree.leaves(from_hub.model), jax.tree.leaves(from_dir.model),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_hub_id_neither_local_nor_cached_names_the_cache_and_the_fix(hub_cache):
    with pytest.raises(UserError, match=(
            r"^checkpoint path some-org/absent does not exist \(in the current directory, .*\); "
            r"as a Hugging Face hub model it is not \(complete\) in the cache .*hub and the hub "
            r"is switched off \(HF_HUB_OFFLINE=1\): download it where there is a network \(`hf "
            r"download some-org/absent --local-dir DIR`\) and pass DIR$")):
        load_pretrained("some-org/absent")


def test_a_cached_hub_model_without_safetensors_is_refused(hub_cache, tmp_path):
    # A repo with pytorch_model.bin only: the download fetched its config.json alone.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(HF_TINY / "mlm" / "config.json", pickled)
    with_vocab_txt(pickled)
    cached_model(hub_cache, "bert-old", pickled)
    with pytest.raises(UserError, match=r"^the Hugging Face hub model bert-old has no "
                                        r"safetensors weights \(only pickled"):
        load_pretrained("bert-old")


def test_a_local_path_is_never_taken_for_a_hub_id(hub_cache, tmp_path):
    # runs/mini with runs/ present is a mistyped local path, not a hub model to look up
    (tmp_path / "runs").mkdir()
    cached_model(hub_cache, "runs/mini", HF_TINY / "mlm")
    with pytest.raises(UserError, match=r"^checkpoint path runs/mini does not exist .*; pass a "
                                        r"run directory"):
        load_pretrained("runs/mini")


def test_export_reads_a_hub_id_from_the_cache_on_the_command_line(tmp_path):
    # The user's path: HF_HUB_CACHE set, the CLI given the id.
    cache = tmp_path / "hub"
    with_vocab_txt(cached_model(cache, "some-org/tiny-bert", HF_TINY / "mlm"))
    done = subprocess.run(
        [sys.executable, "-m", "bertjax.export", "some-org/tiny-bert", str(tmp_path / "out"),
         "--format", "hf"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_a_name_the_hub_refuses_is_one_line(hub_cache):
    # huggingface_hub's own checks (here its repo id rules) fail as a download would: one line.
    with pytest.raises(UserError, match=r"^checkpoint path a\.\.b does not exist .*; downloading "
                                        r"it from the Hugging Face hub failed \(HFValidationError: "
                                        r"Cannot have -- or \.\. in repo_id"):
        load_pretrained("a..b")


def test_a_hub_id_as_tokenizer_path_prepares_with_that_models_tokenizer(hub_cache, tmp_path):
    # Pretraining from scratch with BERT's own vocabulary: tokenizer.path=google-bert/bert-base-
    # uncased was "tokenizer file ... does not exist". Its tokenizer file is downloaded alone.
    given = tmp_path / "given"
    given.mkdir()
    bert_style_tokenizer(given / "tokenizer.json")
    cached_model(hub_cache, "some-org/tiny-bert", given)
    write_corpus(tmp_path / "c.txt", 40)
    prepared = [prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "c.txt"], dir=tmp_path / d,
                                                 **{"tokenizer.path": path}))
                for d, path in (("by_id", "some-org/tiny-bert"),
                                ("by_file", given / "tokenizer.json"))]
    assert [(p / "train.bin").read_bytes() for p in prepared] == \
        [(prepared[1] / "train.bin").read_bytes()] * 2
    assert (prepared[0] / "tokenizer.json").read_bytes() == (given / "tokenizer.json").read_bytes()
    with pytest.raises(UserError, match=r"^tokenizer file other-org/absent does not exist \(in the "
                                        r"current directory, .*\); as a Hugging Face hub model it "
                                        r"is not \(complete\) in the cache"):
        prepare.ensure_prepared(load_cfg(tmp_path, [tmp_path / "c.txt"], dir=tmp_path / "none",
                                         **{"tokenizer.path": "other-org/absent"}))
    assert not (tmp_path / "none").exists()
