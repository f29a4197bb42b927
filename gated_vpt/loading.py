"""Loading gated_vpt adapters from a directory or the Hub, with errors that say what to do.

``PeftModel.from_pretrained`` works once ``gated_vpt`` has been imported (peft has no plugin discovery, so a
script that never imports it gets ``KeyError: 'GATED_VPT'``); ``load_adapter`` cannot be reached without that import,
which registers the method (this module lies below registration and does not call it).
Either way the files are checked before the model changes (``gated_vpt.layout``): the config is validated as at
construction, the weights must be exactly the adapter's own tensors, finite, and safetensors (pickles are refused).
Reading and checking the files needs no peft (only attaching an adapter to a model does), so ``gated-vpt info``
answers without loading it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .layout import check_tensors, expected_from_record
from .paths import is_local_path, missing_folder
from .settings import GatedPromptSettings

if TYPE_CHECKING:
    from peft import PeftModel

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# A classification adapter's class names, {"0": name, ...} as in transformers' id2label.
LABELS_NAME = "id2label.json"
# A segmentation adapter's decoder settings and class names (gated_vpt.segmentation).
HEAD_CONFIG_NAME = "segmentation_head.json"
# A training run's output folder holds its adapter in this subfolder.
RUN_ADAPTER_DIR = "adapter"
PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
# The largest JSON file an adapter may bring (its config, class names, head settings): class names for 100,000
# classes fit in a few megabytes.
MAX_JSON_BYTES = 16 * 2**20


def load_adapter(
    base_model: nn.Module,
    path_or_repo_id: Union[str, Path],
    adapter_name: str = "default",
    *,
    revision: Optional[str] = None,
    is_trainable: bool = False,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
) -> PeftModel:
    """Load a gated_vpt adapter onto ``base_model`` (a transformers model, or a ``PeftModel`` to add it to).

    ``path_or_repo_id`` is a local adapter directory (or a training run's output folder holding ``adapter/``) or a
    Hub repo id (``revision`` pins a branch, tag or commit).

    Example:

    ```py
    >>> from peft import get_peft_model
    >>> from transformers import ViTConfig, ViTForImageClassification
    >>> from gated_vpt import GatedPromptConfig, load_adapter
    >>> config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
    ...                    intermediate_size=64, num_labels=3)
    >>> get_peft_model(ViTForImageClassification(config), GatedPromptConfig()).save_pretrained("adapter")
    >>> model = load_adapter(ViTForImageClassification(config), "adapter")  # a folder, or a Hub id:
    >>> model = load_adapter(base, "user/mae-cub-gated", revision="v1")  # doctest: +SKIP
    ```
    """
    from peft import PeftModel


    directory = resolve_adapter_dir(path_or_repo_id, revision=revision, token=token, cache_dir=cache_dir)
    read_adapter_files(directory)
    # peft reads the config through GatedPromptConfig.from_pretrained, so GatedPromptModel checks the weights
    # against the model before it injects anything (the same check runs for a plain PeftModel.from_pretrained).
    if isinstance(base_model, PeftModel):
        base_model.load_adapter(str(directory), adapter_name=adapter_name, is_trainable=is_trainable)
        return base_model
    return PeftModel.from_pretrained(base_model, str(directory), adapter_name=adapter_name, is_trainable=is_trainable)


def resolve_adapter_dir(
    path_or_repo_id: Union[str, Path],
    *,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    subfolder: Optional[str] = None,
) -> Path:
    """A local directory holding the adapter's two files (a training run's ``adapter/`` when given the run's output
    folder), downloading them from the Hub when given a repo id."""
    path = Path(path_or_repo_id) / (subfolder or "")
    if path.is_dir():
        return run_adapter_dir(path)
    if path.exists():
        raise FileNotFoundError(f"{path_or_repo_id} is a file, not an adapter directory (a folder with {CONFIG_NAME}).")
    if is_local_path(path_or_repo_id):
        raise missing_folder(path_or_repo_id)
    from huggingface_hub import hf_hub_download  # only for Hub ids: a local folder is read without it
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = str(path_or_repo_id)
    try:
        download = dict(revision=revision, token=token, cache_dir=cache_dir, subfolder=subfolder)
        config_file = hf_hub_download(repo_id, CONFIG_NAME, **download)
        hf_hub_download(repo_id, WEIGHTS_NAME, **download)
    except LocalEntryNotFoundError as error:  # a subclass of EntryNotFoundError: test it first
        raise FileNotFoundError(
            f"Could not fetch {repo_id!r}: the Hub is unreachable (or HF_HUB_OFFLINE=1) and the adapter is not in the "
            "local cache. Connect once to download it, or pass a local adapter directory."
        ) from error
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"No local folder {repo_id!r} here and no Hub repository of that name (or it is private): check the "
            "path or id, or log in with `hf auth login` / pass token=... for a private repository."
        ) from error
    except RevisionNotFoundError as error:
        raise FileNotFoundError(f"Repository {repo_id!r} has no revision {revision!r}: use a branch, tag or commit it has.") from error
    except EntryNotFoundError as error:
        raise FileNotFoundError(
            f"Repository {repo_id!r} has no {CONFIG_NAME} and {WEIGHTS_NAME}; it does not hold a gated_vpt adapter "
            f"(at revision {revision or 'main'})."
        ) from error
    return Path(config_file).parent


def read_adapter_files(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read and check an adapter directory: its config holds valid gated_vpt settings
    (``GatedPromptSettings.from_saved``), its weights (``read_adapter_weights``) are exactly the tensors that config
    implies, all finite."""
    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not directory.exists():
        raise missing_folder(directory)
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; save adapters with model.save_pretrained(directory).")
    config = read_json(config_path, "adapter settings")
    settings = GatedPromptSettings.from_saved(config, str(config_path))
    state_dict = read_adapter_weights(directory)
    check_tensors(expected_from_record(settings, state_dict), state_dict, str(directory / WEIGHTS_NAME))
    return config, state_dict


def read_json(path: Path, what: Optional[str] = None) -> object:
    """A small JSON file that came with an adapter (a JSON object of ``what``, when given); ``ValueError`` when it is
    not valid JSON, larger than ``MAX_JSON_BYTES`` or nested too deeply to parse."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{path} is {size:,} bytes; an adapter's JSON files are small (at most {MAX_JSON_BYTES:,}), so it is not one.")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        problem = "nested too deeply" if isinstance(error, RecursionError) else str(error)
        raise ValueError(f"{path} is not valid JSON ({problem}); re-save or re-download the adapter.") from error
    if what is not None and not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, not an object of {what}; it is not an adapter's file.")
    return value


def read_adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter directory's safetensors file, which must hold gated_vpt parameters (a pickled
    ``adapter_model.bin`` is refused: unpickling runs code)."""
    weights_path = Path(directory) / WEIGHTS_NAME
    if not weights_path.is_file():
        pickled = [name for name in PICKLED_WEIGHTS if (Path(directory) / name).is_file()]
        hint = (
            f" It has {pickled[0]}, a pickle file, which gated_vpt does not load (unpickling runs code); re-save the "
            "adapter with save_pretrained(..., safe_serialization=True) where it was trained."
            if pickled
            else ""
        )
        raise FileNotFoundError(f"{directory} has no {WEIGHTS_NAME}.{hint}")
    try:
        state_dict = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{weights_path} is not a readable safetensors file ({error}); it may be truncated or corrupt. Re-save it "
            "or download it again."
        ) from error
    if not any(".gvpt_" in key for key in state_dict):
        raise ValueError(f"{weights_path} holds no gated_vpt parameters (gvpt_prompt, gvpt_gate, ...); it is not this adapter's file.")
    return state_dict


def run_adapter_dir(path: Union[str, Path]) -> Path:
    """``path``, or its ``adapter/`` subfolder when ``path`` is a training run's output folder."""
    path = Path(path)
    inner = path / RUN_ADAPTER_DIR
    if not (path / CONFIG_NAME).is_file() and (inner / CONFIG_NAME).is_file():
        return inner
    return path


def write_labels(directory: Union[str, Path], model: nn.Module) -> Optional[Path]:
    """Save a classifier's class names (its base model's ``config.id2label``) as ``id2label.json`` beside the
    adapter; None when the model has no classifier of that size or only placeholder names. ``gated-vpt predict``
    prints these names."""
    base = model.get_base_model()
    id2label = getattr(getattr(base, "config", None), "id2label", None)
    if not id2label or getattr(getattr(base, "classifier", None), "out_features", None) != len(id2label):
        return None
    if all(name == f"LABEL_{i}" for i, name in id2label.items()):  # transformers' placeholders name nothing
        return None
    path = Path(directory) / LABELS_NAME
    path.write_text(json.dumps({str(i): str(name) for i, name in sorted(id2label.items())}, indent=1) + "\n")
    return path


def read_labels(directory: Union[str, Path]) -> Optional[list[str]]:
    """The class names saved by ``write_labels``, in index order, or None when the adapter has none."""
    path = Path(directory) / LABELS_NAME
    if not path.is_file():
        return None
    try:
        names = read_json(path)
    except ValueError:
        names = None
    if not (
        isinstance(names, dict) and sorted(names) == sorted(map(str, range(len(names))))
        and all(isinstance(name, str) for name in names.values())
    ):
        raise ValueError(
            f"{path} is not a list of class names ({{\"0\": name, \"1\": name, ...}}, as write_labels saves them); "
            "delete it to show the base model's labels, or pass the names yourself (gated-vpt predict --labels)."
        )
    return [names[str(i)] for i in range(len(names))]
