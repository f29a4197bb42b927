"""A semantic segmentation model: a (prompted) ViT-family backbone with SETR-PUP decode and auxiliary heads.

The model is a plain ``nn.Module`` that exposes the backbone's ``config`` and the backbone as ``base_model``, which
is all gated_vpt's tuner and peft need: ``get_segmentation_peft_model`` wraps the encoder blocks with gated
prompts and trains/saves ``decode_head`` and ``aux_heads`` through peft's ``modules_to_save``, so one
``adapter_model.safetensors`` holds the whole task adapter. The head settings travel next to it in
``segmentation_head.json``; without that file they are read off the saved head weights.

Intermediate block outputs for the auxiliary heads are taken with forward hooks on the encoder blocks, registered
for one forward call only. A hook on a gated block sees that block's output as the next block receives it (prompt
rows gated); the patch rows, the only ones the heads read, are the last ``grid_h * grid_w`` rows either way. This
does not depend on how a transformers version collects ``output_hidden_states``.
"""

from __future__ import annotations

import inspect
import json
import re
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch
from peft import PeftModel, get_peft_model
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SemanticSegmenterOutput

from ..backbones import resolve_backbone, without_head
from ..config import GatedPromptConfig
from ..layout import PEFT_PREFIX, Expected, check_tensors
from ..loading import HEAD_CONFIG_NAME, read_json
from ..settings import is_integer, is_number
from .setr import AuxiliaryHeads, Norm, ProgressiveUpsamplingHead, num_upsampling_stages

HEAD_MODULES = ("decode_head", "aux_heads")
# The head settings that decide which modules are built (and so which weights a saved adapter holds).
STRUCTURE = ("num_labels", "channels", "aux_blocks", "norm")
# The transformers class (and arguments) that loads a checkpoint's encoder without task heads, by model type:
# ViTMAE without random masking, ViT without the pooler, any other family through AutoModel.
BACKBONE_CLASSES = {"vit_mae": ("ViTMAEModel", {"mask_ratio": 0.0}), "vit": ("ViTModel", {"add_pooling_layer": False})}
DEFAULT_BACKBONE_CLASS = ("AutoModel", {})


@dataclass
class SegmentationHeadConfig:
    """Everything needed to rebuild the heads of a saved segmentation adapter.

    ``aux_blocks`` are 0-based encoder block indices (the paper: 5 and 9 of ViT-B's 12 blocks); each auxiliary
    loss is added with weight ``aux_loss_weight`` in training only. Pixels labelled ``ignore_index`` do not count.
    """

    num_labels: int
    aux_blocks: tuple[int, ...] = ()
    aux_loss_weight: float = 0.4
    channels: int = 512
    norm: Norm = "batch"
    ignore_index: int = 255
    id2label: Optional[dict[int, str]] = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.aux_blocks, (list, tuple)) or not all(is_integer(b) and b >= 0 for b in self.aux_blocks):
            raise ValueError(f"aux_blocks={self.aux_blocks!r} is invalid: use 0-based block indices, e.g. (5, 9).")
        self.aux_blocks = tuple(self.aux_blocks)
        if self.id2label is not None:
            if not isinstance(self.id2label, dict) or not all(str(k).isdigit() for k in self.id2label):
                raise ValueError(f"id2label={self.id2label!r} is invalid: use {{class id: name}}.")
            self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        for name in ("num_labels", "channels", "ignore_index"):
            if not is_integer(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: use an integer.")
        if not is_number(self.aux_loss_weight):
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight!r} is invalid: use a number >= 0 (SETR: 0.4).")
        if self.num_labels < 2:
            raise ValueError(f"num_labels={self.num_labels!r} is invalid: use the number of classes (at least 2).")
        if 0 <= self.ignore_index < self.num_labels:
            raise ValueError(
                f"ignore_index={self.ignore_index} is one of the {self.num_labels} class ids; use a value outside "
                f"0..{self.num_labels - 1} (255 is the usual choice)."
            )
        if self.aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight={self.aux_loss_weight} is invalid: use a weight >= 0 (SETR: 0.4).")
        if self.channels < 1:
            raise ValueError(f"channels={self.channels} is invalid: use a positive number of decoder channels (SETR-PUP: 512).")
        if self.norm not in ("batch", "group"):
            raise ValueError(f"norm={self.norm!r} is not supported: use 'batch' (SETR's choice) or 'group'.")
        if self.id2label is not None and sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(f"id2label must name the classes 0..{self.num_labels - 1}; got ids {sorted(self.id2label)}.")

    def save(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / HEAD_CONFIG_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SegmentationHeadConfig":
        path = Path(path)
        if path.is_dir():
            path = path / HEAD_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a segmentation adapter directory holds {HEAD_CONFIG_NAME} next to the adapter "
                "files (written by the segmentation training script or SegmentationHeadConfig.save)."
            )
        values = read_json(path)
        if not isinstance(values, dict):
            raise ValueError(f"{path} holds a JSON {type(values).__name__}, not an object of head settings.")
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in values)
        if unknown or missing:
            raise ValueError(f"{path} has unknown fields {unknown} or lacks {missing}; it was written by another version or by hand.")
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error


class SegmentationModel(nn.Module):
    """A ViT-family backbone with a SETR-PUP decode head on its last block and auxiliary heads on ``aux_blocks``.

    ``forward(pixel_values, labels=None)`` returns a ``SemanticSegmenterOutput`` with logits at the input resolution;
    with labels, the loss is the pixel cross-entropy (ignoring ``ignore_index``) plus the weighted auxiliary losses
    while the heads are in training mode. Any input size works: the patch grid is derived from the input and the
    position embeddings are interpolated.

    Example:

    ```py
    >>> from transformers import ViTMAEConfig, ViTMAEModel
    >>> backbone = ViTMAEModel(ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, mask_ratio=0.0))
    >>> model = SegmentationModel(backbone, SegmentationHeadConfig(num_labels=5, aux_blocks=(1, 2), channels=8))
    >>> peft_model = get_segmentation_peft_model(model, GatedPromptConfig(num_prompt_tokens=10, gate_init=10.0))
    >>> out = peft_model(torch.randn(2, 3, 32, 32), labels=torch.randint(0, 5, (2, 32, 32)))
    >>> out.logits.shape, out.loss.ndim  # (batch, labels, H, W) and a scalar loss
    (torch.Size([2, 5, 32, 32]), 0)
    ```
    """

    # transformers and peft look the backbone up under this attribute name, as on a transformers task model.
    base_model_prefix = "backbone"

    def __init__(self, backbone: nn.Module, head_config: SegmentationHeadConfig) -> None:
        super().__init__()
        encoder = without_head(backbone)
        spec = resolve_backbone(encoder)
        bad = [b for b in head_config.aux_blocks if not 0 <= b < spec.num_blocks]
        if bad:
            raise ValueError(
                f"aux_blocks={list(head_config.aux_blocks)} names blocks {bad} that this {spec.num_blocks}-block backbone "
                f"does not have; use 0-based indices from 0 to {spec.num_blocks - 1} (the paper: 5 and 9 for ViT-B)."
            )
        self.backbone = encoder
        self.config = encoder.config
        self.head_config = head_config
        self.patch_size = spec.patch_size
        hidden, labels = spec.hidden_size, head_config.num_labels
        self.decode_head = ProgressiveUpsamplingHead(
            hidden, labels, num_upsampling_stages(max(spec.patch_size)), head_config.channels, head_config.norm
        )
        self.aux_heads = AuxiliaryHeads(
            head_config.aux_blocks, hidden, labels, channels=head_config.channels, norm=head_config.norm
        )
        forward_parameters = inspect.signature(encoder.forward).parameters
        self._backbone_kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in forward_parameters else {}

    @property
    def base_model(self) -> nn.Module:
        """The backbone, where gated_vpt looks for the encoder blocks."""
        return self.backbone

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None) -> SemanticSegmenterOutput:
        height, width = pixel_values.shape[-2:]
        grid = (height // self.patch_size[0], width // self.patch_size[1])
        if min(grid) < 1:
            raise ValueError(f"Input of {height}x{width} pixels is smaller than one {self.patch_size} patch.")
        use_aux = labels is not None and self.aux_heads.training and len(self.head_config.aux_blocks) > 0
        block_outputs: dict[int, torch.Tensor] = {}
        with self._capture_blocks(self.head_config.aux_blocks if use_aux else (), block_outputs):
            outputs = self.backbone(pixel_values, **self._backbone_kwargs)
        logits = self.decode_head(outputs.last_hidden_state, grid, (height, width))
        loss = None
        if labels is not None:
            self._check_labels(labels, pixel_values)
            loss = self._pixel_loss(logits, labels)
            if use_aux:
                for aux_logits in self.aux_heads(block_outputs, grid, (height, width)).values():
                    loss = loss + self.head_config.aux_loss_weight * self._pixel_loss(aux_logits, labels)
        return SemanticSegmenterOutput(loss=loss, logits=logits)

    def _pixel_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, ignore_index=self.head_config.ignore_index)

    def _check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
        expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
        if tuple(labels.shape) != expected:
            raise ValueError(
                f"labels have shape {tuple(labels.shape)} but the images need {expected} (batch, height, width): "
                "resize or crop the masks together with the images."
            )
        num_labels, ignore = self.head_config.num_labels, self.head_config.ignore_index
        invalid = (labels != ignore) & ((labels < 0) | (labels >= num_labels))
        if invalid.any():
            values = sorted(set(labels[invalid].unique().tolist()))[:10]
            raise ValueError(
                f"labels contain values {values} outside the class range 0..{num_labels - 1} (ignore index {ignore}); "
                "check num_labels, or map the 'other' label to the ignore index (reduce_labels)."
            )

    @contextmanager
    def _capture_blocks(self, blocks: Sequence[int], store: dict[int, torch.Tensor]) -> Iterator[None]:
        if not blocks:
            yield
            return
        names = resolve_backbone(self.backbone).block_names
        handles = []
        for index in blocks:
            def keep(module: nn.Module, args: tuple, output: object, index: int = index) -> None:
                store[index] = output[0] if isinstance(output, tuple) else output

            handles.append(self.backbone.get_submodule(names[index]).register_forward_hook(keep))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def load_pretrained_backbone(model_name_or_path: Union[str, Path], **kwargs) -> nn.Module:
    """The encoder of a checkpoint without task heads (``BACKBONE_CLASSES``), ready for ``SegmentationModel``.

    Example:

    ```py
    >>> backbone = load_pretrained_backbone("facebook/vit-mae-base")  # doctest: +SKIP
    >>> from transformers import ViTMAEConfig, ViTMAEForPreTraining
    >>> ViTMAEForPreTraining(ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                                   intermediate_size=64)).save_pretrained("mae")  # a local checkpoint works too
    >>> backbone = load_pretrained_backbone("mae")
    >>> type(backbone).__name__, backbone.config.mask_ratio
    ('ViTMAEModel', 0.0)
    ```
    """
    import transformers

    model_type = transformers.AutoConfig.from_pretrained(model_name_or_path, **kwargs).model_type
    name, arguments = BACKBONE_CLASSES.get(model_type, DEFAULT_BACKBONE_CLASS)
    return getattr(transformers, name).from_pretrained(model_name_or_path, **arguments, **kwargs)


def get_segmentation_peft_model(
    model: SegmentationModel, config: GatedPromptConfig, adapter_name: str = "default"
) -> PeftModel:
    """``peft.get_peft_model`` with the decode and auxiliary heads trained and saved with the adapter.

    ``config.modules_to_save`` is set to ``["decode_head", "aux_heads"]`` when unset; a list that leaves either out
    is refused, since that head would stay at its random initialisation and be missing from the saved adapter.
    """
    if config.modules_to_save is None:
        config.modules_to_save = list(HEAD_MODULES)
    missing = [name for name in HEAD_MODULES if name not in config.modules_to_save]
    if missing:
        raise ValueError(
            f"GatedPromptConfig.modules_to_save={config.modules_to_save} leaves out {missing}: the segmentation heads "
            f"must be trained and saved with the adapter. Use modules_to_save={list(HEAD_MODULES)} or leave it unset."
        )
    return get_peft_model(model, config, adapter_name=adapter_name)


def save_segmentation_adapter(peft_model: PeftModel, directory: Union[str, Path]) -> Path:
    """Save the adapter (one safetensors file: prompts, gates, temperatures, heads) and its head settings."""
    directory = Path(directory)
    peft_model.save_pretrained(str(directory))
    segmentation_model = peft_model.get_base_model()
    segmentation_model.head_config.save(directory)
    return directory


def load_segmentation_adapter(
    backbone: nn.Module,
    path_or_repo_id: Union[str, Path],
    *,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    is_trainable: bool = False,
) -> PeftModel:
    """Rebuild the segmentation model around ``backbone`` from a saved adapter (a directory or a Hub repo id).

    The head settings come from ``segmentation_head.json`` when the adapter has one, else from the shapes of the
    saved head weights (training-only settings then take their defaults).

    Example:

    ```py
    >>> from transformers import ViTMAEConfig, ViTMAEModel
    >>> backbone = ViTMAEModel(ViTMAEConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4,
    ...     num_attention_heads=2, intermediate_size=64, mask_ratio=0.0))
    >>> head_config = SegmentationHeadConfig(num_labels=5, aux_blocks=(1, 2), channels=8)
    >>> trained = get_segmentation_peft_model(SegmentationModel(backbone, head_config),
    ...                                       GatedPromptConfig(num_prompt_tokens=10))
    >>> save_segmentation_adapter(trained, "adapter")  # doctest: +ELLIPSIS
    PosixPath('adapter')
    >>> model = load_segmentation_adapter(backbone, "adapter").eval()  # a folder, or a Hub id:
    >>> model = load_segmentation_adapter(backbone, "user/mae-ade20k-gated").eval()  # doctest: +SKIP
    ```
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    from ..loading import WEIGHTS_NAME, load_adapter, read_adapter_files, resolve_adapter_dir

    directory = resolve_adapter_dir(path_or_repo_id, revision=revision, token=token)
    head_file = directory / HEAD_CONFIG_NAME
    if not head_file.is_file() and not Path(path_or_repo_id).is_dir():
        try:
            head_file = Path(hf_hub_download(str(path_or_repo_id), HEAD_CONFIG_NAME, revision=revision, token=token))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            pass
    # The heads are built before their weights are loaded and checked: build only what the weights hold.
    tensors = read_adapter_files(directory)[1]
    implied = head_config_from_weights(tensors)
    head_config = SegmentationHeadConfig.load(head_file) if head_file.is_file() else implied
    disagreeing = [name for name in STRUCTURE if _structure(head_config, name) != _structure(implied, name)]
    if disagreeing:
        raise ValueError(
            f"{head_file} does not match the adapter's head weights: "
            + ", ".join(f"{name} {getattr(head_config, name)!r} vs {getattr(implied, name)!r} in the weights" for name in disagreeing)
            + ". Re-save the adapter with save_segmentation_adapter or download it again."
        )
    with torch.device("meta"):  # the heads these settings build, without allocating them
        skeleton = SegmentationModel(backbone, head_config)
    heads = {key: value for key, value in skeleton.state_dict().items() if key.split(".")[0] in HEAD_MODULES}
    check_tensors(
        {PEFT_PREFIX + key: Expected(tuple(value.shape), value.dtype, f"heads of {head_config.channels} channels") for key, value in heads.items()},
        {key: value for key, value in tensors.items() if key.removeprefix(PEFT_PREFIX).split(".")[0] in HEAD_MODULES},
        str(directory / WEIGHTS_NAME),
    )
    model = SegmentationModel(backbone, head_config)
    return load_adapter(model, directory, is_trainable=is_trainable)


def _structure(config: SegmentationHeadConfig, name: str) -> object:
    value = getattr(config, name)
    return tuple(sorted(value)) if name == "aux_blocks" else value


def head_config_from_weights(state_dict: dict[str, torch.Tensor]) -> SegmentationHeadConfig:
    """The head settings implied by saved adapter weights: classes and channels from the decode head's classifier,
    auxiliary blocks from the heads present, the norm from BatchNorm statistics (present or not)."""
    classifiers = [value for key, value in state_dict.items() if key.endswith("decode_head.classifier.weight")]
    if not classifiers:
        raise ValueError(
            "These adapter weights hold no segmentation decode head (decode_head.classifier.weight); the adapter was "
            "not trained with gated_vpt.segmentation, or its heads were left out of modules_to_save."
        )
    num_labels, channels = classifiers[0].shape[:2]
    aux_blocks = sorted({int(m.group(1)) for key in state_dict if (m := _AUX_HEAD_KEY.search(key))})
    norm = "batch" if any(key.endswith("norm.running_mean") for key in state_dict) else "group"
    return SegmentationHeadConfig(num_labels=int(num_labels), aux_blocks=tuple(aux_blocks), channels=int(channels), norm=norm)


_AUX_HEAD_KEY = re.compile(r"aux_heads\.heads\.(\d+)\.")

