"""Registering gated prompt tuning as a peft method.

peft keeps its methods in the closed ``PeftType`` enum and refuses to register a name that is not a member, so
the member is added first (``gated_vpt.peft_type``, which the config uses too), then ``register_peft_method`` is
called. Both steps are idempotent: importing the package twice (or reloading it) leaves peft in the same state.

peft's ``model.push_to_hub`` is transformers' ``PushToHubMixin.push_to_hub``, which writes its empty template card
over the one peft saved, and offers no hook in between. ``register(push_to_hub=...)`` is handed the push that
uploads this package's card (the Hub layer's ``gated_vpt.hub.push_to_hub``, which lies above this module): the
package's ``__init__`` hands it on every import, importing the Hub layer only when a push runs (an extension point
filled when ``gated_vpt.hub`` is imported would leave a script that never imports it with the template card). For a
model whose active adapter is gated_vpt the call goes there; every other model, or any model before a push was
handed, keeps peft's behaviour.

peft's ``PeftModel.__init__`` reads transformers' deprecated ``is_gradient_checkpointing`` property of the base
model, which warns ``FutureWarning`` about peft's code whenever a model is wrapped (``get_peft_model``,
``PeftModel.from_pretrained``). For a gated_vpt config the constructor runs without that one warning
(``gated_vpt.quiet.peft_wrapping``); the property still warns anywhere else, and other methods are unchanged.

A gated_vpt config read from files notes where they are (``_note_read_configs``), so that the tuner reads and checks
the weights before it changes the model, whoever asked: ``PeftModel.from_pretrained``, ``PeftModel.load_adapter``
and transformers' own adapter loading (``model.load_adapter(path)``, ``AutoModel*.from_pretrained(adapter_dir)``
and the pipelines built on it), which all read the config through ``PeftConfig.from_pretrained``. A config passed
by the caller skips that loader: ``PeftModel.from_pretrained(model, path, config=...)`` and transformers'
``model.load_adapter(path, peft_config=...)`` note the files themselves, and
``model.load_adapter(peft_config=..., adapter_state_dict=...)`` checks the given tensors
(``_note_given_configs``, ``_check_transformers_loads``); every other call is peft's or transformers' own.

Adapter files name tensors independently of a TimmWrapper's ``timm_model.`` (``layout.saved_key``), so that one file
serves a timm model and its wrapper. peft maps block parameters through the tuner (``_remove_adapter_name_from_key``),
but looks up the saved modules (the classifier) by their path in the model before the tuner sees the weights; for a
gated_vpt adapter, ``_load_saved_modules_by_saved_name`` renames those keys to the model's paths first.
"""

from __future__ import annotations

import copy
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

from peft import PeftModel
from peft.utils.peft_types import PeftType, register_peft_method

from .layout import saved_module_keys_to_model
from .loading import read_json
from .peft_type import extend_peft_type
from .quiet import peft_wrapping
from .settings import METHOD_NAME, PREFIX


def register(push_to_hub: Optional[Callable[..., Any]] = None) -> PeftType:
    """Make ``GatedPromptConfig`` / ``GatedPromptModel`` known to peft (safe to call more than once).
    ``push_to_hub(model, repo_id, **kwargs)``: what ``model.push_to_hub`` of a gated_vpt model runs (see the module
    notes); None keeps the one handed before."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    from .config import GatedPromptConfig
    from .model import GatedPromptModel

    peft_type = extend_peft_type(METHOD_NAME)
    if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is not GatedPromptModel:
        if peft_type in PEFT_TYPE_TO_TUNER_MAPPING:
            _forget(peft_type)
        register_peft_method(
            name=METHOD_NAME, config_cls=GatedPromptConfig, model_cls=GatedPromptModel, prefix=PREFIX
        )
    _route_push_to_hub(push_to_hub)
    _note_read_configs()
    _note_given_configs()
    _check_transformers_loads()
    _refuse_pickled_saves()
    _wrap_without_deprecation_warning()
    _load_saved_modules_by_saved_name()
    return peft_type


def _route_push_to_hub(push: Optional[Callable[..., Any]]) -> None:
    """Send ``PeftModel.push_to_hub`` of gated_vpt models to ``push`` (see the module notes). The push is kept on
    the installed wrapper, not in this module, so that reloading the module keeps it."""
    def wrap(original):
        def push_to_hub(self, repo_id: str, *args, **kwargs):
            gated = getattr(self.peft_config.get(self.active_adapter), "peft_type", None) == METHOD_NAME.upper()
            if gated and not args and push_to_hub.gated_vpt_push is not None:
                return push_to_hub.gated_vpt_push(self, repo_id, **kwargs)
            return original(self, repo_id, *args, **kwargs)

        push_to_hub.gated_vpt_push = None
        return push_to_hub

    installed = _install_once(PeftModel, "push_to_hub", wrap)
    installed.gated_vpt_push = push or installed.gated_vpt_push


def _note_given_configs() -> None:
    """Have ``PeftModel.from_pretrained`` note the files of a gated_vpt config passed as ``config=`` (see the module
    notes)."""
    def wrap(original):
        signature = inspect.signature(original)

        def from_pretrained(cls, *args, **kwargs):
            arguments = signature.bind(cls, *args, **kwargs).arguments
            config = arguments.get("config")
            if _is_gated_vpt(config):  # the files are model_id's, wherever the config came from
                config.note_source(arguments["model_id"], config_given=True, **arguments.get("kwargs", {}))
            return original(cls, *args, **kwargs)

        return from_pretrained

    _install_once(PeftModel, "from_pretrained", wrap)


def _note_read_configs() -> None:
    """Have peft's config loader note the files of every gated_vpt config it reads (see the module notes), and
    read every adapter config (of any peft method) within ``read_json``'s bounds."""
    from peft.config import PeftConfigMixin

    def wrap_from_pretrained(original):
        def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder=None, **kwargs):
            config = original(cls, pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
            if _is_gated_vpt(config):
                config.note_source(pretrained_model_name_or_path, subfolder, config_given=False, **kwargs)
            return config

        return from_pretrained

    def wrap_from_json_file(original):
        def from_json_file(cls, path_json_file: str, **kwargs):
            # peft's json.load raises RecursionError on deep nesting, and a non-object fails later with a TypeError.
            read_json(Path(path_json_file), "adapter settings")
            return original(cls, path_json_file, **kwargs)

        return from_json_file

    _install_once(PeftConfigMixin, "from_pretrained", wrap_from_pretrained)
    _install_once(PeftConfigMixin, "from_json_file", wrap_from_json_file)


def _check_transformers_loads() -> None:
    """Have transformers' ``model.load_adapter`` check a gated_vpt adapter whose config the caller passes (see the
    module notes)."""
    from transformers.integrations.peft import PeftAdapterMixin

    def wrap(original):
        signature = inspect.signature(original)

        def load_adapter(self, *args, **kwargs):
            arguments = signature.bind(self, *args, **kwargs).arguments
            config = arguments.get("peft_config")
            if _is_gated_vpt(config):
                if arguments.get("adapter_state_dict") is not None:
                    from .model import check_given_weights

                    check_given_weights(copy.deepcopy(config), arguments["adapter_state_dict"], self, "adapter_state_dict")
                elif arguments.get("peft_model_id"):
                    download = {**(arguments.get("adapter_kwargs") or {}), **arguments.get("kwargs", {})}
                    subfolder = download.pop("subfolder", None)
                    config.note_source(arguments["peft_model_id"], subfolder, config_given=True, **download)
            return original(self, *args, **kwargs)

        return load_adapter

    _install_once(PeftAdapterMixin, "load_adapter", wrap)


def _refuse_pickled_saves() -> None:
    """Refuse ``save_pretrained(..., safe_serialization=False)`` for a model holding a gated_vpt adapter: it would
    write a pickle, which every gated_vpt loader refuses to read (unpickling runs code)."""
    def wrap(original):
        signature = inspect.signature(original)

        def save_pretrained(self, *args, **kwargs):
            arguments = signature.bind(self, *args, **kwargs).arguments
            if arguments.get("safe_serialization", True) is False and any(map(_is_gated_vpt, self.peft_config.values())):
                raise ValueError(
                    "gated_vpt adapters are saved as safetensors only: safe_serialization=False would write a pickle "
                    "(adapter_model.bin), which gated_vpt does not load since unpickling runs code. Leave "
                    "safe_serialization at its default, True."
                )
            return original(self, *args, **kwargs)

        return save_pretrained

    _install_once(PeftModel, "save_pretrained", wrap)


def _is_gated_vpt(config: object) -> bool:
    return getattr(config, "peft_type", None) == METHOD_NAME.upper()


def _install_once(owner: object, name: str, wrap: Callable[[Callable], Callable]) -> Callable:
    """Replace ``owner.name`` (a function, method or classmethod of peft or transformers) by ``wrap(original)`` and
    return the installed wrapper; a second call (importing or reloading gated_vpt again) keeps the first one."""
    static = inspect.getattr_static(owner, name)
    original = static.__func__ if isinstance(static, classmethod) else getattr(owner, name)
    if getattr(original, "routes_gated_vpt", False):
        return original
    wrapper = functools.wraps(original)(wrap(original))
    wrapper.routes_gated_vpt = True
    setattr(owner, name, classmethod(wrapper) if isinstance(static, classmethod) else wrapper)
    return wrapper


def _wrap_without_deprecation_warning() -> None:
    """Have ``PeftModel.__init__`` wrap a model for a gated_vpt config without transformers' warning about peft's use
    of ``is_gradient_checkpointing`` (see the module notes)."""
    def wrap(original):
        def __init__(self, model, peft_config, *args, **kwargs):
            if not _is_gated_vpt(peft_config):
                return original(self, model, peft_config, *args, **kwargs)
            with peft_wrapping():
                return original(self, model, peft_config, *args, **kwargs)

        return __init__

    _install_once(PeftModel, "__init__", wrap)


def _forget(peft_type: PeftType) -> None:
    """Drop an older registration (e.g. after ``importlib.reload``) so the current classes can take its place."""
    from peft import mapping

    for table in (
        mapping.PEFT_TYPE_TO_CONFIG_MAPPING,
        mapping.PEFT_TYPE_TO_TUNER_MAPPING,
        mapping.PEFT_TYPE_TO_MIXED_MODEL_MAPPING,
        mapping.PEFT_TYPE_TO_PREFIX_MAPPING,
    ):
        table.pop(peft_type, None)


def _load_saved_modules_by_saved_name() -> None:
    """Have ``PeftModel.load_adapter`` find a gated_vpt adapter's saved modules under their names in the file (see the
    module notes)."""
    from peft import peft_model

    def wrap(original):
        def set_peft_model_state_dict(model, peft_model_state_dict, adapter_name="default", *args, **kwargs):
            if _is_gated_vpt(model.peft_config.get(adapter_name)):
                peft_model_state_dict = saved_module_keys_to_model(model, peft_model_state_dict)
            return original(model, peft_model_state_dict, adapter_name, *args, **kwargs)

        return set_peft_model_state_dict

    _install_once(peft_model, "set_peft_model_state_dict", wrap)
