"""Release bundles as they are read: manifest.json's format (each file's sha256 and size, the
tokenizer the weights were exported with) checked field by field, and every listed file verified
against it. export.py writes bundles in this format; pretrained.py loads them.
"""

import json
from pathlib import Path

from bertjax.errors import UserError
from bertjax.files import check_not_lfs_pointer, sha256_file

BUNDLE_FORMAT = "bertjax-bundle"
BUNDLE_VERSION = 1


def _missing_bundle_fix(path: Path) -> str:
    if path.name == "best" and path.parent.name.startswith("seed"):  # a GLUE seed's best epoch
        return (f"delete {path.parent} and run the same command again to fine-tune that seed "
                "anew")
    return "copy the whole bundle directory, or export it again with `python -m bertjax.export`"


def read_manifest(path: Path) -> dict:
    """manifest.json, checked to hold every field load_bundle reads, with the right types."""
    file = path / "manifest.json"
    if not file.is_file():
        raise UserError(f"{file} is missing, so {path} is no complete release bundle; "
                        f"{_missing_bundle_fix(path)}")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        check_not_lfs_pointer(file)
        raise UserError(f"{file} is not valid JSON; re-export the bundle "
                        "with `python -m bertjax.export`") from None

    def bad(what: str) -> UserError:
        return UserError(f"{file}: {what}; re-export the bundle with `python -m bertjax.export` "
                         "or download it again")

    if not isinstance(manifest, dict):
        raise bad(f"holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != BUNDLE_FORMAT or manifest.get("format_version") != BUNDLE_VERSION:
        raise UserError(f"{path} is not a {BUNDLE_FORMAT} version {BUNDLE_VERSION} (manifest says "
                        f"{manifest.get('format')} {manifest.get('format_version')}); re-export it")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("'files' (each file's sha256 and size) is missing or not an object")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and
                type(entry.get("size")) is int):
            raise bad(f"files[{name!r}] must be {{\"sha256\": text, \"size\": bytes}}, got "
                      f"{json.dumps(entry)[:80]}")
    for name in ("config.yaml", "model.safetensors"):
        if name not in files:
            raise bad(f"'files' does not list {name}")
    for key in ("summary", "heads", "tokenizer"):
        if not isinstance(manifest.get(key, {}), dict):
            raise bad(f"{key!r} is {json.dumps(manifest[key])[:40]}, not an object")
    record = manifest.get("tokenizer", {})
    if record and not (isinstance(record.get("sha256"), str) and
                       type(record.get("vocab_size")) is int and
                       isinstance(record.get("weights_sha256"), str)):
        raise bad("'tokenizer' must hold sha256, vocab_size and weights_sha256")
    return manifest


def verify_bundle(path: Path) -> dict:
    """manifest.json, with every listed file present, not an LFS pointer, and of the right
    size and sha256 (short, long and modified files get different messages)."""
    manifest = read_manifest(path)
    for name, entry in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise UserError(f"bundle file {file} is missing; copy the whole bundle directory")
        check_not_lfs_pointer(file)
        size, digest = file.stat().st_size, sha256_file(file)
        # Shorter may also be another file copied over it (a tokenizer.json from elsewhere):
        # without the original bytes there is no telling, so "truncated" is not claimed.
        if size < entry["size"]:
            raise UserError(f"{file} is shorter than the manifest lists: {size} of "
                            f"{entry['size']} bytes (sha256 expected {entry['sha256']}, actual "
                            f"{digest}), truncated or replaced by another file; download the "
                            "bundle again")
        if size > entry["size"]:
            raise UserError(f"{file} is not the file the manifest lists ({size} bytes, sha256 "
                            f"{digest}; expected {entry['size']} bytes, {entry['sha256']}): it "
                            "was replaced by another file; download the bundle again")
        if digest != entry["sha256"]:
            raise UserError(f"sha256 mismatch for {file}: expected {entry['sha256']}, actual "
                            f"{digest}; the file was modified or corrupted, download it again")
    return manifest
