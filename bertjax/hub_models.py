"""Hugging Face hub model ids as checkpoints and tokenizers: a model id such as
`google-bert/bert-base-uncased` (or `bert-base-uncased`) as init.checkpoint, as predict's or
export's checkpoint argument, or as tokenizer.path is downloaded into the Hugging Face cache
(HF_HOME, HF_HUB_CACHE; offline, HF_HUB_OFFLINE=1, they are read from there) and loaded like a
local Hugging Face BERT directory or tokenizer file. Only the config, safetensors weights and
tokenizer files are fetched: bertjax loads no pickle (pytorch_model.bin).
"""

import re
from pathlib import Path

from bertjax.errors import UserError
from bertjax.sources import quiet_hub

# transformers' names: the weights whole, or in shards with their index (not other variants)
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZERS = ("tokenizer.json", "vocab.txt")  # in the order they are preferred
TOKENIZER_FILES = [*TOKENIZERS, "tokenizer_config.json", "special_tokens_map.json"]
FILES = ["config.json", *WEIGHTS, "model-*.safetensors", *TOKENIZER_FILES]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # the hub's own rule, roughly


def looks_like_hub_id(path: Path) -> bool:
    """A relative name of one or two parts whose first part is not a local directory."""
    return (not path.is_absolute() and _HUB_ID.fullmatch(str(path)) is not None
            and not Path(path.parts[0]).exists())


def model_dir(model_id: str, not_local: str) -> Path:
    """The local snapshot of hub model `model_id`, its weights included."""
    folder = _download(model_id, not_local, FILES)
    if not any((folder / name).is_file() for name in WEIGHTS):
        raise UserError(f"the Hugging Face hub model {model_id} has no safetensors weights "
                        "(only pickled or other formats, which bertjax does not load); choose "
                        "a model that has model.safetensors, or convert it with transformers "
                        "(save_pretrained(dir)) and pass dir")
    return folder


def tokenizer_file(model_id: str, not_local: str) -> Path:
    """Hub model `model_id`'s tokenizer.json, else its vocab.txt (read with the
    tokenizer_config.json beside it), downloaded without the weights."""
    found = tokenizer_in(_download(model_id, not_local, TOKENIZER_FILES))
    if found is not None:
        return found
    raise UserError(f"the Hugging Face hub model {model_id} has no tokenizer.json or vocab.txt; "
                    "choose a model with a BERT tokenizer, or give a tokenizer file")


def tokenizer_in(folder: Path) -> Path | None:
    """`folder`'s tokenizer.json, else its vocab.txt (a hub snapshot, a local Hugging Face model
    directory, Google's BERT release folder); None when it holds neither."""
    return next((folder / name for name in TOKENIZERS if (folder / name).is_file()), None)


def file_of_tokenizer_path(path: Path) -> Path:
    """A local tokenizer.path as the file to read: itself, or a directory's tokenizer_in (a
    directory without one is a UserError)."""
    if not path.is_dir():
        return path
    found = tokenizer_in(path)
    if found is None:
        raise UserError(f"tokenizer.path={path} is a directory without a "
                        f"{' or '.join(TOKENIZERS)}; set tokenizer.path to one of those files")
    return found


def _download(model_id: str, not_local: str, files: list[str]) -> Path:
    """The local snapshot of `files` of hub model `model_id` (downloaded when missing or
    stale); a failure is a UserError that starts with `not_local` (why it was not taken as a
    local path)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hub

    try:
        with quiet_hub():
            return Path(snapshot_download(model_id, allow_patterns=files))
    except hub.LocalEntryNotFoundError as e:  # offline or unreachable, and not (all) cached
        reached = ("is switched off (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else
                   f"could not be reached ({type(e.__cause__ or e).__name__})")
        raise UserError(f"{not_local}; as a Hugging Face hub model it is not (complete) in the "
                        f"cache {constants.HF_HUB_CACHE} and the hub {reached}: download it "
                        f"where there is a network (`hf download {model_id} --local-dir DIR`) "
                        "and pass DIR") from None
    except hub.RepositoryNotFoundError as e:  # gated or private models too
        raise UserError(f"{not_local}, and the Hugging Face hub has no model {model_id} that "
                        f"this user can read ({type(e).__name__}); check the name (e.g. "
                        "google-bert/bert-base-uncased), or log in (`hf auth login`) for a "
                        "gated or private model") from None
    except Exception as e:  # noqa: BLE001 - the hub down, a connection cut mid-file, a name
        # the hub's rules refuse: a fault of the download (the call above is all this block
        # runs), said in one line; huggingface_hub keeps no partial file as complete
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{not_local}; downloading it from the Hugging Face hub failed "
                        f"({type(e).__name__}: {first}); check the name and the network, then "
                        "run the same command again") from None
