"""Pushing adapters to the Hub and pulling them back, with a gated_vpt model card and errors that say what to do.

Every way of pushing uploads this package's card: ``push_adapter``, ``gated-vpt push``, the training scripts'
``--push_to_hub`` and peft's own ``model.push_to_hub(repo_id)`` on a gated_vpt model (``push_to_hub`` below; for
other peft methods peft's behaviour is unchanged). Tokens are passed to huggingface_hub only: they are never
printed, logged or written into a file. Pulling and reading adapters needs neither peft nor transformers: the push
side imports the card (which does) when it runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from huggingface_hub import CommitInfo, HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from torch import nn

from .loading import (
    CONFIG_NAME,
    HEAD_CONFIG_NAME,
    LABELS_NAME,
    WEIGHTS_NAME,
    read_adapter_files,
    resolve_adapter_dir,
    run_adapter_dir,
    write_labels,
)
from .tasks import TASKS
from .tokens import TOKEN_SOURCES, without_credentials

CARD_NAME = "README.md"
# Beside the adapter's config and weights: the card, the class names (a segmentation adapter's are in its head
# settings, with the ignore index) and the gate pictures.
SIDE_FILES = [CARD_NAME, LABELS_NAME, HEAD_CONFIG_NAME, "*.png"]
UPLOADED_FILES = [CONFIG_NAME, WEIGHTS_NAME, *SIDE_FILES]


def push_adapter(
    source: Union[nn.Module, str, Path],
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    commit_message: str = "Upload gated_vpt adapter",
    adapter_name: Optional[str] = None,
    revision: Optional[str] = None,
) -> str:
    """Upload an adapter (a ``PeftModel``, a directory saved by ``save_pretrained`` or a training run's output
    folder) to ``repo_id`` (branch ``revision``, default main) and return the new commit's sha. The repo is created
    when missing. From a model, ``adapter_name`` (default: the active one) is pushed with a new card and its class
    names; from a directory, its gated_vpt card is pointed at ``repo_id``, or a new card is written when it has
    none (or only peft's template).

    Example:

    ```py
    >>> from gated_vpt.hub import push_adapter
    >>> # the token comes from HF_TOKEN or `hf auth login`
    >>> sha = push_adapter("out/cub-gated", "user/mae-cub-gated")  # doctest: +SKIP
    ```
    """
    return _push(source, repo_id, token=token, private=private, commit_message=commit_message,
                 adapter_name=adapter_name, revision=revision).oid


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    commit_message: Optional[str] = None,
    commit_description: Optional[str] = None,
    private: Optional[bool] = None,
    token: Union[bool, str, None] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
    **unused: object,
) -> CommitInfo:
    """What peft's ``model.push_to_hub(repo_id, ...)`` does for a gated_vpt model (``gated_vpt`` routes the call
    here; transformers' own version would upload its empty template card): the active adapter, its card and class
    names, with transformers' arguments. Serialization arguments (``max_shard_size``, ``tags``) do not apply to a
    few-kilobyte adapter and are ignored."""
    return _push(
        model, repo_id, token=None if isinstance(token, bool) else token, private=private,
        commit_message=commit_message or "Upload gated_vpt adapter", commit_description=commit_description,
        revision=revision, create_pr=create_pr,
    )


def _push(
    source: Union[nn.Module, str, Path],
    repo_id: str,
    *,
    token: Optional[str],
    private: Optional[bool],
    commit_message: str,
    adapter_name: Optional[str] = None,
    commit_description: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
) -> CommitInfo:
    from .card import write_model_card

    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        if isinstance(source, nn.Module):
            adapter_name = adapter_name or source.active_adapter
            source.save_pretrained(staging, selected_adapters=[adapter_name])
            if adapter_name != "default":  # peft saves other names in a subfolder
                staging = staging / adapter_name
            for task in TASKS.values():  # e.g. a segmentation model's head settings (gated_vpt.tasks)
                if task.save_files is not None:
                    task.save_files(source, staging)
            write_labels(staging, source)
            write_model_card(staging, source, repo_id=repo_id, adapter_name=adapter_name)
        else:
            _stage_directory(run_adapter_dir(source), staging, repo_id)
        _portable_base_path(staging / CONFIG_NAME)
        token = token or get_token()
        if not token:
            raise PermissionError(
                f"Pushing to {repo_id!r} needs a Hugging Face token with write access: {TOKEN_SOURCES} (in Python "
                "you may also pass token=...)."
            )
        api = HfApi(token=token)
        with _hub_errors(repo_id, write=True):
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                folder_path=staging, repo_id=repo_id, commit_message=commit_message, allow_patterns=UPLOADED_FILES,
                commit_description=commit_description, revision=revision, create_pr=create_pr,
            )


def pull_adapter(
    repo_id: str,
    revision: Optional[str] = None,
    local_dir: Optional[Union[str, Path]] = None,
    *,
    token: Optional[str] = None,
) -> Path:
    """Download an adapter (its config, weights, card, segmentation head settings and gate pictures) and check its
    files. Returns the cache snapshot, or ``local_dir`` with copies of the files when given. Works offline from the
    cache.

    Example:

    ```py
    >>> from gated_vpt.hub import pull_adapter
    >>> path = pull_adapter("user/mae-cub-gated", revision="v1", local_dir="adapters/cub")  # doctest: +SKIP
    ```
    """
    if Path(repo_id).is_dir():
        raise ValueError(f"{repo_id!r} is a local directory; pull takes a Hub repo id such as user/mae-cub-gated.")
    directory = fetch_adapter(repo_id, revision=revision, token=token)
    if not constants.HF_HUB_OFFLINE:
        with _hub_errors(repo_id, revision=revision):
            snapshot_download(repo_id, revision=directory.name, allow_patterns=SIDE_FILES, token=token)
    if local_dir is None:
        return directory
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    for file in directory.iterdir():
        if file.is_file():
            shutil.copyfile(file, local_dir / file.name)
    return local_dir


def fetch_adapter(path_or_repo_id: Union[str, Path], revision: Optional[str] = None, token: Optional[str] = None) -> Path:
    """The local directory of an adapter given as a directory, a training run's output folder or a Hub repo id, its
    files checked."""
    with _hub_errors(str(path_or_repo_id), revision=revision):
        directory = resolve_adapter_dir(path_or_repo_id, revision=revision, token=token)
    read_adapter_files(directory)
    return directory


def _stage_directory(directory: Path, staging: Path, repo_id: str) -> None:
    from .card import is_gated_vpt_card, set_adapter_id, write_model_card

    read_adapter_files(directory)
    files = [file for pattern in UPLOADED_FILES for file in directory.glob(pattern)]
    links = [file.name for file in files if file.is_symlink() or not file.is_file()]
    if links:  # a link may point anywhere, e.g. at the stored Hub token: only the folder's own files are published
        raise ValueError(
            f"{directory} holds {', '.join(sorted(links))}, which {'is' if len(links) == 1 else 'are'} not a regular "
            "file (a symbolic link, or a folder); push uploads only the folder's own files. Replace each with the "
            "file itself, or remove it."
        )
    for file in files:
        shutil.copyfile(file, staging / file.name, follow_symlinks=False)
    card = staging / CARD_NAME
    if card.is_file() and is_gated_vpt_card(card.read_text()):
        card.write_text(set_adapter_id(card.read_text(), repo_id))
    else:
        write_model_card(staging, repo_id=repo_id)


def _portable_base_path(config_path: Path) -> None:
    """Keep this machine's absolute paths out of the pushed config: a local base is named as the card names it
    (relative to this repository or the working directory, else by its folder; ``gated-vpt predict`` then finds it
    from a checkout, or asks for ``--base``)."""
    from .card import portable_name

    config = json.loads(config_path.read_text())
    name = config.get("base_model_name_or_path")
    if name and portable_name(name) != name:
        config["base_model_name_or_path"] = portable_name(name)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextmanager
def _hub_errors(repo_id: str, revision: Optional[str] = None, write: bool = False) -> Iterator[None]:
    """Turn network failures into messages naming the endpoint and the fix (missing repos and revisions get their
    messages from ``gated_vpt.loading``); the token never appears in them."""
    try:
        yield
    except Exception as error:
        chain = [error, error.__cause__, error.__context__]
        where = f"{repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        if constants.HF_HUB_OFFLINE and any(isinstance(e, (OfflineModeIsEnabled, LocalEntryNotFoundError)) for e in chain):
            raise ConnectionError(
                f"HF_HUB_OFFLINE=1 is set and {where} is not in the local cache ({constants.HF_HUB_CACHE}). Download it "
                "once while online (e.g. `gated-vpt pull`), or unset HF_HUB_OFFLINE."
            ) from error
        if any(_is_transport_error(e) or isinstance(e, LocalEntryNotFoundError) for e in chain):
            cached = "" if write else ", and it is not in the local cache"
            raise ConnectionError(
                f"Could not reach the Hub at {without_credentials(constants.ENDPOINT)} for {where}{cached}. Check your "
                "network connection and the HF_ENDPOINT variable, or use a local adapter directory."
            ) from error
        if write and isinstance(error, HfHubHTTPError) and error.response.status_code in (401, 403):
            raise PermissionError(
                f"The Hub refused the token for {repo_id!r} (HTTP {error.response.status_code}): use a token with "
                "write access to that namespace (https://huggingface.co/settings/tokens) or run `hf auth login`."
            ) from error
        raise


def _is_transport_error(error: Optional[BaseException]) -> bool:
    """A connection-level failure of huggingface_hub's HTTP client (httpx or httpx2, by hub version)."""
    return error is not None and any(cls.__name__ == "TransportError" for cls in type(error).__mro__)
