"""PTAME: a frozen auxiliary feature extractor + a trainable attention head, Hub-loadable."""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn
from torch.fx.experimental.optimization import fuse as fold_batchnorm

from ptame.errors import CheckpointError, describe
from ptame.head import AttentionHead
from ptame.loading.checkpoint import (
    MAX_AUXILIARY_SIZE,
    MIN_AUXILIARY_SIZE,
    WEIGHTS_NAME,
    checkpoint_files,
    read_config,
    read_head_header,
    read_head_weights,
    write_head_weights,
)
from ptame.loading.hub import is_folder_source
from ptame.loading.network_names import LOCAL_DIR_PREFIX, SourceFolder, locate_network
from ptame.loading.timm_sources import create_network
from ptame.maps import normalize_maps
from ptame.perturb import IMAGENET_MEAN, IMAGENET_STD, normalize

CUSTOM_PREFIX = "custom:"
PROBE_SIZE = 64  # side of the dummy image that reveals a custom auxiliary network's channels
MAX_PROBE_SIZE = 256  # the load probe's side, whatever the auxiliary network's input size
PROBE_CLASSES = 16  # the load probe's classes, whatever the class count


def _encode_module(module: nn.Module) -> str:
    """config.json's record of a custom auxiliary network: its class name (its weights are the user's)."""
    return CUSTOM_PREFIX + type(module).__qualname__


def _custom_module_error(value: str) -> nn.Module:
    """A custom auxiliary network cannot be rebuilt from its name: say how to pass it instead."""
    raise CheckpointError(
        f"this explainer was trained on a custom auxiliary network ({value.removeprefix(CUSTOM_PREFIX)}); "
        "pass the same network: PTAME.from_pretrained(path, auxiliary=your_module)"
    )


def _source_folder(root: str | Path | SourceFolder | None) -> SourceFolder | None:
    if root is None or isinstance(root, SourceFolder):
        return root
    return SourceFolder(Path(root))


def build_auxiliary(
    name: str, feature_levels: Sequence[int], pretrained: bool, source: str | Path | SourceFolder | None = None
) -> nn.Module:
    """A timm model as a multi-level feature extractor.

    Args:
        name: a timm model name ("resnet18.tv_in1k"), "hf-hub:org/name", or
            "local-dir:PATH" (a relative PATH is taken from ``source``), found by the one rule
            of ``ptame.loading.network_names.locate_network``.
        feature_levels: timm ``out_indices`` (1..4 = ResNet layer1..layer4).
        pretrained: load the weights named by ``name`` (from safetensors only).
        source: where the name was written: the explainer checkpoint's folder (relative
            local-dir paths start there), or a ``SourceFolder`` (a Hub repo's paths stay inside
            it; offline reading); None: the working directory.

    Returns:
        A frozen module in eval mode mapping normalised (B, 3, H, W) images to a list of
        (B, c_l, h_l, w_l) maps. Its BatchNorm layers are folded into the preceding convolutions
        (torch.fx): the same function up to float rounding, ~1 ms faster per image on CPU.

    Raises:
        CheckpointError: a custom network's name, a name or path that cannot be used, a network
            over its budget (``ptame.loading.timm_sources.create_network``), or weights that do not fit.
    """
    if name.startswith(CUSTOM_PREFIX):
        _custom_module_error(name)
    files = locate_network(name, pretrained, _source_folder(source))
    model = create_network(
        files, f"the auxiliary network {describe(name)}", features_only=True, out_indices=tuple(feature_levels)
    ).eval()
    try:
        folded = fold_batchnorm(model)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError):
        return model  # torch.fx cannot trace this architecture: run it unfolded
    folded.feature_info = model.feature_info
    folded.pretrained_cfg = model.pretrained_cfg
    return folded


class PTAME(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="ptame",
    tags=["explainability", "saliency", "p-tame", "image-classification"],
    license="apache-2.0",
    paper_url="https://arxiv.org/abs/2501.17813",
    coders={nn.Module: (_encode_module, _custom_module_error)},
):
    """P-TAME explainer (Ntrougkas, Mezaris, Patras, 2025) for one classifier.

    Inputs are pixel-space images, (B, 3, H, W) in [0, 1]; the explainer normalises them for its
    auxiliary network itself. The auxiliary network is frozen, always in eval mode, and not part
    of the saved weights: ``config.json`` names it, ``model.safetensors`` holds the head only.

    Args:
        num_classes: K, the classifier's number of classes.
        auxiliary: a timm model name (with "hf-hub:" / "local-dir:" sources), used through
            ``features_only``; or any ``nn.Module`` mapping normalised images to a list of
            feature maps (a custom network for another domain).
        feature_levels: timm ``out_indices`` of a named auxiliary network.
        auxiliary_mean, auxiliary_std: the auxiliary network's input normalisation; None: a
            named network's own (its timm pretrained config: a local folder's config.json),
            ImageNet's for an ``nn.Module``. config.json records the values used.
        pretrained_auxiliary: load the named network's weights (False: random, for tests).
        auxiliary_size: the shorter side, in pixels, of the images the auxiliary network sees:
            every image is bilinearly resized to it (aspect kept) before the auxiliary network,
            while the classifier keeps its own input. None: the images as they come. An
            ImageNet-pretrained network sees a 96-pixel image as a thumbnail; fed at twice the
            size, its features and the maps are finer (docs/own-classifier.md, issue 26's
            experiments), at about four times the auxiliary network's cost.
        class_names: optional K display names.
        auxiliary_root: the folder a relative "local-dir:" auxiliary path starts from, saved
            relative (``from_pretrained`` passes the checkpoint's ``SourceFolder``: a Hub repo's
            paths stay inside it). Default: the current directory, and the path is saved
            absolute. Not saved itself.
        head_channels: the channels per level that the head must have (``from_pretrained``
            passes its weights file's): the auxiliary network must give exactly these, checked
            before the head is built. None: whatever it gives. Not saved.
        trained_images: K counts, the training images whose prediction (a training target) was each class
            (``ptame.class_coverage``; a class with 0 has the class-agnostic map). None: not recorded.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        auxiliary: str | nn.Module = "resnet18.tv_in1k",
        feature_levels: Sequence[int] = (1, 2, 3, 4),
        auxiliary_mean: Sequence[float] | None = None,
        auxiliary_std: Sequence[float] | None = None,
        pretrained_auxiliary: bool = True,
        auxiliary_size: int | None = None,
        class_names: Sequence[str] | None = None,
        auxiliary_root: str | Path | SourceFolder | None = None,
        head_channels: Sequence[int] | None = None,
        trained_images: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        if trained_images is not None and len(trained_images) != num_classes:
            raise ValueError(f"{len(trained_images)} training image counts for {num_classes} classes")
        self.trained_images = list(trained_images) if trained_images is not None else None
        if isinstance(auxiliary, nn.Module):
            self.auxiliary_name = _encode_module(auxiliary)
            self.auxiliary = auxiliary
        else:
            if auxiliary_root is None and auxiliary.startswith(LOCAL_DIR_PREFIX):
                # A relative path starts at the working directory: saved absolute, so that the
                # checkpoint (whose relative paths start at its own folder) finds the same network.
                auxiliary = LOCAL_DIR_PREFIX + str(Path(auxiliary[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve())
            self.auxiliary_name = auxiliary
            self.auxiliary = build_auxiliary(auxiliary, feature_levels, pretrained_auxiliary, auxiliary_root)
        # channels_last: the convolutions of a CNN auxiliary network run ~15% faster on CPU
        # (measured by ptame.bench.overhead), and faster with bf16 on CUDA; the values do not change.
        self.auxiliary.requires_grad_(False).eval().to(memory_format=torch.channels_last)
        self.feature_levels = tuple(feature_levels)
        if auxiliary_size is not None and not MIN_AUXILIARY_SIZE <= auxiliary_size <= MAX_AUXILIARY_SIZE:
            bounds = f"{MIN_AUXILIARY_SIZE} to {MAX_AUXILIARY_SIZE}"
            raise ValueError(f"auxiliary_size must be None or {bounds} pixels, got {auxiliary_size}")
        self.auxiliary_size = auxiliary_size
        config = getattr(self.auxiliary, "pretrained_cfg", None) or {}
        self.auxiliary_mean = tuple(auxiliary_mean or config.get("mean", IMAGENET_MEAN))
        self.auxiliary_std = tuple(auxiliary_std or config.get("std", IMAGENET_STD))
        self.class_names = list(class_names) if class_names is not None else None
        channels = self._auxiliary_channels()
        if head_channels is not None and tuple(channels) != tuple(head_channels):
            raise CheckpointError(
                f"the auxiliary network {describe(self.auxiliary_name)} gives {len(channels)} feature levels of "
                f"{tuple(channels)} channels, the head's weights expect {tuple(head_channels)}"
            )
        self.head = AttentionHead(channels, num_classes)
        if self._hub_mixin_config is not None:
            self._hub_mixin_config.pop("auxiliary_root", None)
            self._hub_mixin_config.pop("head_channels", None)
            self._hub_mixin_config["auxiliary"] = self.auxiliary_name
            self._hub_mixin_config["auxiliary_mean"] = list(self.auxiliary_mean)
            self._hub_mixin_config["auxiliary_std"] = list(self.auxiliary_std)

    def _auxiliary_channels(self) -> list[int]:
        feature_info = getattr(self.auxiliary, "feature_info", None)
        if feature_info is not None and hasattr(feature_info, "channels"):
            return list(feature_info.channels())
        with torch.no_grad():
            probe = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE)
            return [f.shape[1] for f in self.auxiliary(probe)]

    def set_trained_images(self, counts: Sequence[int]) -> None:
        """Record K counts of training images per class (``trained_images``), saved in config.json."""
        if len(counts) != self.num_classes:
            raise ValueError(f"{len(counts)} training image counts for {self.num_classes} classes")
        self.trained_images = list(counts)
        if self._hub_mixin_config is not None:
            self._hub_mixin_config["trained_images"] = self.trained_images

    @property
    def num_classes(self) -> int:
        """K, the number of classes (one map each)."""
        return self.head.num_classes

    def train(self, mode: bool = True) -> "PTAME":
        """Set the head's mode; the auxiliary network stays in eval mode."""
        super().train(mode)
        self.auxiliary.eval()
        return self

    def auxiliary_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """The images as the auxiliary network sees them: the shorter side resized to
        ``auxiliary_size`` (bilinear; antialiased when shrinking), or unchanged for None.

        Args:
            pixels: (B, 3, H, W) in [0, 1].

        Returns:
            (B, 3, H', W') in [0, 1], min(H', W') = auxiliary_size.
        """
        height, width = pixels.shape[-2:]
        if self.auxiliary_size is None or min(height, width) == self.auxiliary_size:
            return pixels
        scale = self.auxiliary_size / min(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
        return resized.clamp(0.0, 1.0)

    def features(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Auxiliary feature maps, no gradient.

        Args:
            pixels: (B, 3, H, W) in [0, 1], resized by ``auxiliary_input`` before the network.

        Returns:
            One (B, c_l, h_l, w_l) tensor per level.
        """
        with torch.no_grad():
            return self._features_at(self.auxiliary_input(pixels))

    def _features_at(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The auxiliary network's feature maps of (B, 3, H, W) pixels in [0, 1], at their size."""
        normalized = normalize(pixels, self.auxiliary_mean, self.auxiliary_std)
        return list(self.auxiliary(normalized.contiguous(memory_format=torch.channels_last)))

    def forward(self, pixels: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Raw class maps (before sigmoid or min-max).

        Args:
            pixels: (B, 3, H, W) in [0, 1].
            classes: (k,) int64 class indices, or None for all K.

        Returns:
            (B, k, h, w) real values, at the finest feature level's resolution (56x56 for a
            224x224 input and a ResNet auxiliary network; of the resized input when
            ``auxiliary_size`` is set).
        """
        return self.head(self.features(pixels), classes)

    def explain(self, pixels: torch.Tensor, classes: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Saliency maps of the given classes, one per image, at the input's resolution.

        Only the requested classes' rows of the fuser are evaluated.

        Args:
            pixels: (B, 3, H, W) in [0, 1].
            classes: (B,) int64, the class to explain for each image.

        Returns:
            (B, H, W) in [0, 1], each map min-max normalised.
        """
        classes = torch.as_tensor(classes, dtype=torch.long, device=pixels.device).reshape(-1)
        if classes.numel() != pixels.shape[0]:
            raise ValueError(f"{classes.numel()} classes for {pixels.shape[0]} images")
        unique, inverse = torch.unique(classes, return_inverse=True)
        raw = self(pixels, unique)
        own = raw[torch.arange(pixels.shape[0], device=pixels.device), inverse]
        return normalize_maps(own, tuple(pixels.shape[-2:]))

    def identity(self) -> dict[str, str]:
        """What the head's weights fit: auxiliary network, feature levels, channels, class count."""
        return {
            "auxiliary": self.auxiliary_name,
            "feature_levels": ",".join(map(str, self.feature_levels)),
            "channels": ",".join(map(str, self.head.channels)),
            "num_classes": str(self.num_classes),
        }

    def _save_pretrained(self, save_directory: Path) -> None:
        """Write the head's weights, with the explainer's identity as metadata (the Hub mixin writes config.json)."""
        write_head_weights(Path(save_directory) / WEIGHTS_NAME, self.head.state_dict(), self.identity())

    def check_probe(self) -> None:
        """Refuse an explainer whose maps are not finite on a probe image (NaN or huge weights,
        statistics or normalisation values that passed every other check).

        The probe: seeded uniform noise at the auxiliary network's input size (64 pixels for a
        network that declares none; at most MAX_PROBE_SIZE, whatever ``auxiliary_size`` is), the
        maps of the first PROBE_CLASSES classes (the head's weights are checked finite when read:
        NaN maps come from the auxiliary network or the normalisation, the same for every class).

        Raises:
            CheckpointError: NaN or infinite raw maps.
        """
        input_size = (getattr(self.auxiliary, "pretrained_cfg", None) or {}).get("input_size") or (3, PROBE_SIZE)
        side = min(int(max(input_size[1:])), MAX_PROBE_SIZE)
        device = next(self.head.parameters()).device
        probe = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
        classes = torch.arange(min(self.num_classes, PROBE_CLASSES), device=device)
        with torch.no_grad():
            maps = self.head(self._features_at(probe), classes)
        if not torch.isfinite(maps).all():
            raise CheckpointError(
                "this explainer's maps of a probe image are NaN or infinite: its weights, BatchNorm "
                "statistics or normalisation values cannot give usable maps"
            )

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        map_location: str | torch.device = "cpu",
        **model_kwargs: object,
    ) -> "PTAME":
        """Load an explainer from a local folder or a Hub repo (config.json + model.safetensors).

        Everything is checked before it is built: config.json's values against their types and
        bounds, and against the weights file's header (class count, levels, channels), read
        without loading a tensor; the auxiliary network within the budget of its own weights
        (``ptame.loading.timm_sources``). A Hub repo's config may name its auxiliary network by a timm
        name, "hf-hub:ORG/NAME", or "local-dir:SUBFOLDER" of the same repo (fetched at the same
        revision), never a path outside it. The loaded explainer must give finite maps on a
        probe image (``check_probe``).

        Args:
            pretrained_model_name_or_path: folder, or Hub repo id.
            revision: branch, tag or commit of a Hub repo.
            cache_dir, force_download, token, local_files_only: as in ``hf_hub_download``;
                ``local_files_only`` also holds for the auxiliary network's files.
            map_location: device of the loaded weights.
            model_kwargs: override config.json values (e.g. ``auxiliary=my_module``).

        Returns:
            The explainer, in eval mode.

        Raises:
            CheckpointError: files missing or unreadable, a config out of bounds, weights that
                do not match the explainer the config describes (names the mismatching part),
                or maps that are not finite. Every failure is a CheckpointError.
        """
        source = str(pretrained_model_name_or_path)
        hub_options = {"cache_dir": cache_dir, "force_download": force_download, "token": token}
        config_path, weights_path = checkpoint_files(
            pretrained_model_name_or_path, revision=revision, local_files_only=local_files_only, **hub_options
        )
        allowed = set(cls._hub_mixin_init_parameters) - {"self", "auxiliary_root", "head_channels"}
        config = read_config(config_path, allowed)
        described = {**config, **model_kwargs}
        named = isinstance(described.get("auxiliary", ""), str) and not described.get("auxiliary", "").startswith(
            CUSTOM_PREFIX
        )
        try:
            channels = read_head_header(
                weights_path,
                described.get("num_classes", 1000),
                described.get("feature_levels", (1, 2, 3, 4)) if named else None,
            )
            root = SourceFolder(
                path=weights_path.parent,
                hub_repo=None if is_folder_source(source) else source,
                revision=revision,
                local_files_only=local_files_only,
            )
            model = cls(**{"auxiliary_root": root, "head_channels": channels, **config, **model_kwargs})
            model.head.load_state_dict(
                read_head_weights(weights_path, model.identity(), model.head.state_dict(), map_location)
            )
            model.eval().check_probe()
        except CheckpointError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever a config makes timm or torch raise is a CheckpointError
            raise CheckpointError(
                f"cannot build the explainer described by {config_path}: {type(error).__name__}: {error}"
            ) from error
        return model
