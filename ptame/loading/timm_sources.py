"""timm networks named by a config that may come from anyone: checked, then built.

A name is a timm registry name ("resnet18.tv_in1k"), "hf-hub:ORG/NAME[@REVISION]" (a Hub repo
holding timm's config.json and model.safetensors) or "local-dir:PATH" (a folder holding them);
``ptame.loading.network_names.locate_network`` finds its files, by the one rule of where a name
may lead, and weights only ever come from safetensors. A folder's config.json is read within
bounds and its architecture must be one timm knows; the network is then built within a budget
taken from its weights file's header (``ptame.loading.budget``), so that a config cannot ask for
more memory than its weights hold.
"""

from pathlib import Path

import timm
from torch import nn

from ptame.errors import CheckpointError, describe
from ptame.loading.budget import build_within_budget, weights_budget
from ptame.loading.config_bounds import check_timm_config
from ptame.loading.network_names import CONFIG_NAME, LOCAL_DIR_PREFIX, NetworkFiles
from ptame.loading.untrusted import read_json_object, read_safetensors_header

MAX_MODULES_PER_TENSOR = 10  # a network's modules, per tensor of its weights file (activations, pools...)
MAX_MODULES_WITHOUT_WEIGHTS = 20_000  # a network built without a weights file


def _check_folder_config(folder: Path) -> None:
    """A timm folder's config.json, read within bounds, must name an architecture timm knows, and
    its values must be within ``ptame.loading.config_bounds``'."""
    config = read_json_object(folder / CONFIG_NAME)
    architecture = config.get("architecture")
    if not isinstance(architecture, str) or not timm.is_model(architecture):
        raise CheckpointError(
            f"{folder / CONFIG_NAME} names the architecture {describe(architecture, 60)}, "
            "which is not a timm model (is it a timm folder?)"
        )
    if not isinstance(config.get("model_args", {}), dict) or not isinstance(config.get("pretrained_cfg", {}), dict):
        raise CheckpointError(f"{folder / CONFIG_NAME}: model_args and pretrained_cfg must be JSON objects")
    check_timm_config(config, folder / CONFIG_NAME)


def _input_side(model: nn.Module) -> int:
    """The side of the images a timm network declares (its pretrained config's input_size)."""
    return int(timm.data.resolve_data_config({}, model=model)["input_size"][-1])


def create_network(
    files: NetworkFiles, what: str, input_side: int | None = None, **timm_options: object
) -> nn.Module:
    """``timm.create_model`` of located files, its weights (if any) loaded from their safetensors.

    The budget (``ptame.loading.budget``): the bytes its weights file pays for
    (``weights_budget``), MAX_MODULES_PER_TENSOR modules per tensor of it, and the activations
    of one image of ``input_side`` pixels.

    Args:
        files: from ``locate_network``.
        what: names the network in errors ("the auxiliary network of ...").
        input_side: the side of the images it will see; None: the one its config declares.
        timm_options: passed to ``timm.create_model`` (features_only, out_indices, num_classes...).

    Raises:
        CheckpointError: a config that timm cannot use, a network over its budget, or weights
            that do not fit it.
    """
    if files.name.startswith(LOCAL_DIR_PREFIX):
        _check_folder_config(Path(files.name[len(LOCAL_DIR_PREFIX) :]))
    header, max_modules = None, MAX_MODULES_WITHOUT_WEIGHTS
    overlay = {}
    if files.weights is not None:
        header = read_safetensors_header(files.weights)
        max_modules = MAX_MODULES_PER_TENSOR * len(header.tensors) + 1000
        if not files.name.startswith(LOCAL_DIR_PREFIX):
            overlay = {"pretrained_cfg_overlay": {"file": str(files.weights)}}
    def build(pretrained: bool) -> nn.Module:
        return timm.create_model(files.name, pretrained=pretrained, **(overlay if pretrained else {}), **timm_options)

    try:
        return build_within_budget(
            lambda: build(files.pretrained),
            weights_budget(header),
            max_modules,
            what,
            architecture=lambda: build(False),
            input_side=lambda model: input_side or _input_side(model),
        )
    except CheckpointError:
        raise
    except Exception as error:  # timm raises many types for a config or weights it cannot use
        raise CheckpointError(f"cannot build {what}: {type(error).__name__}: {error}") from error
