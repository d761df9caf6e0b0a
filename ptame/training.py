"""Training a P-TAME explainer against a black-box classifier (method doc, "Training step").

Labels are never used: the classifier's own prediction is the target. The loop runs on one
device, or on several processes that together train on one global batch: wrap the explainer in
DistributedDataParallel and give each process its share of every batch.
"""

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ptame.errors import TrainingDiverged
from ptame.explainer import PTAME
from ptame.loss import LossWeights, ptame_loss
from ptame.perturb import masked_logits, normalize

Classifier = Callable[[torch.Tensor], torch.Tensor]
TargetGatherer = Callable[[torch.Tensor], torch.Tensor]


# The loss coefficients of the default recipe (docs/own-classifier.md, "How the default recipe was
# chosen"). Area 2, not 4: a classifier never trained on masked images needs larger maps.
DEFAULT_LOSS = LossWeights(ce=1.0, area=2.0, smooth=0.01)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings. The defaults are the recipe for a new domain, chosen by experiments
    on synthetic domains with trained and ImageNet-pretrained auxiliary networks
    (docs/own-classifier.md, "How the default recipe was chosen"): the fuser starts at zero, AdamW
    with amsgrad, OneCycle stepped per batch with max_lr 1e-3, weight decay 1e-4, loss ce 1,
    area 2, smooth 0.01, bf16 autocast on CUDA. The paper's ImageNet recipes are in
    ``train/recipes.py`` (max_lr 1e-4, random fuser start, their loss coefficients).

    lr: peak learning rate. weight_decay: AdamW's. loss: loss coefficients.
    zero_fuser_start: a run that starts at step 0 sets the fuser's weights to zero, so every
    map starts at sigmoid(0) = 0.5 and the masked image is the image at half brightness, which
    the classifier still recognises: the cross-entropy guides the head from the first step.
    False keeps the head's initialisation (the paper's).
    amp: bf16 autocast on CUDA (ignored on CPU). compile: torch.compile the classifier and the
    auxiliary network. log_every: steps between progress-bar updates and divergence checks
    (each one syncs with the device). channels_last: run the classifier and feed the images in
    channels-last memory layout (same function; faster convolutions with bf16 on CUDA).
    """

    lr: float = 1e-3
    weight_decay: float = 1e-4
    loss: LossWeights = DEFAULT_LOSS
    zero_fuser_start: bool = True
    amp: bool = True
    compile: bool = False
    log_every: int = 10
    channels_last: bool = False


def unwrap(explainer: PTAME | DistributedDataParallel) -> PTAME:
    """The PTAME itself, whether or not it is wrapped in DistributedDataParallel."""
    return explainer.module if isinstance(explainer, DistributedDataParallel) else explainer


def make_optimizer(explainer: PTAME | DistributedDataParallel, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with amsgrad over the head's parameters (the auxiliary network is frozen)."""
    return torch.optim.AdamW(
        unwrap(explainer).head.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, amsgrad=True
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """OneCycle schedule with max_lr = lr over ``total_steps`` optimiser steps (stepped per batch)."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr, total_steps=max(total_steps, 1))


def all_gather_targets(targets: torch.Tensor) -> torch.Tensor:
    """Every process's targets, concatenated in rank order.

    Args:
        targets: (b,) int64, this process's share of the batch; the same b on every process.

    Returns:
        (world_size * b,) int64, the global batch's targets. Needs torch.distributed initialised.
    """
    parts = [torch.empty_like(targets) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, targets)
    return torch.cat(parts)


def training_step_loss(
    classifier: Classifier,
    explainer: nn.Module,
    pixels: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    weights: LossWeights,
    gather_targets: TargetGatherer | None = None,
    target_counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one batch, differentiable w.r.t. the explainer's head.

    1. targets = argmax of the classifier on the clean images;
    2. sigmoid maps of the batch's target classes only (the fuser's other rows are not needed);
    3. each image masked in pixel space by its own target's map, re-normalised, classified;
    4. loss over the (b, B, h, w) maps ``maps[:, batch_targets]``.

    Args:
        classifier: normalised (b, 3, H, W) -> (b, K) logits; frozen, never looked inside.
        explainer: a PTAME (or a DistributedDataParallel wrapping one): (pixels, classes) ->
            (b, k, h, w) raw maps.
        pixels: (b, 3, H, W) in [0, 1].
        mean, std: the classifier's input normalisation.
        weights: loss coefficients.
        gather_targets: maps this process's (b,) targets to the global batch's (B,) targets
            (``all_gather_targets`` when several processes share a batch); None: B = b. Each
            image gets the maps of all B targets, so the mean of the processes' losses (what
            DistributedDataParallel's gradient averaging optimises) is the global batch's loss.
        target_counts: (K,) int64 or None; each class's count of the global batch's targets is
            added to it in place: the images whose loss trained that class's fuser row.

    Returns:
        (loss, terms): scalar loss; detached unweighted terms ``ce``, ``area``, ``smooth``.
    """
    with torch.no_grad():
        targets = classifier(normalize(pixels, mean, std)).argmax(dim=1)
    batch_targets = targets if gather_targets is None else gather_targets(targets)
    if target_counts is not None:
        target_counts += torch.bincount(batch_targets, minlength=target_counts.numel()).to(target_counts.device)
    unique, inverse = torch.unique(batch_targets, return_inverse=True)
    unique_maps = torch.sigmoid(explainer(pixels, unique))
    target_maps = unique_maps[:, inverse]
    own_maps = unique_maps[torch.arange(pixels.shape[0], device=pixels.device), torch.searchsorted(unique, targets)]
    logits = masked_logits(classifier, pixels, own_maps, mean, std)
    return ptame_loss(logits, targets, target_maps, weights)


def _images(batch: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    return batch if isinstance(batch, torch.Tensor) else batch[0]


def _interval_means(sums: dict[str, torch.Tensor], steps: int, distributed: bool) -> dict[str, float]:
    """Mean loss terms over the logged interval (and over the processes); syncs with the device."""
    keys = sorted(sums)
    values = torch.stack([sums[key] for key in keys]) / steps
    if distributed:
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(keys, values.tolist()))


def train_explainer(
    classifier: Classifier,
    explainer: PTAME | DistributedDataParallel,
    batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
    mean: Sequence[float],
    std: Sequence[float],
    settings: TrainSettings = TrainSettings(),
    *,
    total_steps: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    start_step: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    after_step: Callable[[int], None] | None = None,
    target_counts: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Train the explainer's head for one pass over ``batches`` (or until step ``total_steps``).

    Args:
        classifier: the black box, normalised (b, 3, H, W) -> (b, K) logits. If it is an
            nn.Module it is moved to ``device`` and, while training, put in eval mode without
            gradients; its modules' modes and parameters' ``requires_grad`` flags are given back
            when training returns or raises.
        explainer: the PTAME to train (its head; the auxiliary network stays frozen). Wrapped
            in DistributedDataParallel, each process trains on its (b, ...) share of a global
            batch of B = world_size * b images, and the result is that of training on the
            global batches (with SyncBatchNorm in the head; plain BatchNorm normalises each
            share by its own statistics).
        batches: pixel-space images (b, 3, H, W) in [0, 1], or (images, labels) tuples whose
            labels are ignored.
        mean, std: the classifier's input normalisation.
        settings: optimiser, schedule, loss and speed settings.
        total_steps: the step number to stop after; default ``start_step + len(batches)``.
            Also the schedule's length when no ``scheduler`` is given.
        device: where to train; bf16 autocast when it is CUDA and ``settings.amp``.
        progress: show a progress bar with the loss terms and images/s.
        on_step: called every ``settings.log_every`` steps (and after the last) with
            (step, record), the record as returned.
        start_step: steps already done (a resumed run): ``batches`` yields the remaining ones,
            and step numbers, progress and schedule continue from there. At 0, the fuser is
            zeroed first when ``settings.zero_fuser_start``.
        optimizer, scheduler: the optimiser and schedule to step (restored ones when resuming;
            required when ``start_step`` > 0); default ``make_optimizer`` / ``make_scheduler``.
        after_step: called with the step number after every optimiser step (e.g. to write
            checkpoints).
        target_counts: (K,) int64 or None; every step adds its global batch's targets per class
            (the same on every process): how many training images trained each class's fuser
            row (``ptame.class_coverage.record_trained_images``). A resumed run passes the
            checkpoint's counts.

    Returns:
        One record per logged interval: step, loss, ce, area, smooth (means over the interval
        and the processes), lr (of the interval's last step), images_per_s (all processes).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        ValueError: ``start_step`` > 0 without the restored optimizer and scheduler, or
            ``total_steps`` < ``start_step``.
    """
    device = torch.device(device)
    total_steps = _last_step(batches, start_step, total_steps, optimizer is not None and scheduler is not None)
    run = _set_up(classifier, explainer, settings, device, start_step, total_steps, optimizer, scheduler)
    bar = tqdm(total=total_steps, initial=start_step, desc="training P-TAME", unit="batch", disable=not progress)
    log = _IntervalLog(settings, run.distributed, bar, on_step, run.optimizer.param_groups[0]["lr"])
    step = start_step
    frozen = _freeze(classifier, device, run.memory_format)
    try:
        for step, batch in enumerate(itertools.islice(batches, total_steps - start_step), start=start_step + 1):
            run.step(batch, mean, std, log, target_counts)
            bar.update(1)
            if step % settings.log_every == 0 or step == total_steps:
                log.record(step)
            if after_step is not None:
                after_step(step)
        if log.steps > 0:
            log.record(step)
    finally:
        bar.close()
        _unfreeze(classifier, frozen)
        if settings.compile:
            run.model.auxiliary = run.model.auxiliary._orig_mod
    explainer.eval()
    return log.history


def _last_step(batches: Iterable[object], start_step: int, total_steps: int | None, restored: bool) -> int:
    """The step to stop after: ``total_steps``, or ``start_step + len(batches)``.

    Raises:
        ValueError: a resumed run (``start_step`` > 0) without its ``restored`` optimizer and
            scheduler, or ``total_steps`` before ``start_step``.
    """
    if start_step > 0 and not restored:
        raise ValueError("a resumed run (start_step > 0) needs its restored optimizer and scheduler")
    if total_steps is None:
        total_steps = start_step + len(batches)  # type: ignore[arg-type]
    if total_steps < start_step:
        raise ValueError(f"total_steps ({total_steps}) is before start_step ({start_step})")
    return total_steps


class _IntervalLog:
    """The loss terms summed over the steps since the last record, and the records made (one per
    logged interval, as ``train_explainer`` returns them)."""

    def __init__(
        self,
        settings: TrainSettings,
        distributed: bool,
        bar: tqdm,
        on_step: Callable[[int, dict[str, float]], None] | None,
        lr: float,
    ) -> None:
        self.settings, self.distributed, self.bar, self.on_step = settings, distributed, bar, on_step
        self.lr = lr  # the learning rate of the interval's last step
        self.history: list[dict[str, float]] = []
        self._start_interval()

    def _start_interval(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = self.images = 0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], images: int, lr: float) -> None:
        """Count one step: its loss and terms, its images (all processes') and learning rate."""
        for key, value in {"loss": loss.detach(), **terms}.items():
            self.sums[key] = self.sums.get(key, 0) + value.float()
        self.steps += 1
        self.images += images
        self.lr = lr

    def record(self, step: int) -> None:
        """Close the interval at ``step``: its means, shown, passed to ``on_step`` and kept.

        Raises:
            TrainingDiverged: the mean loss is NaN or infinite.
        """
        record = _interval_means(self.sums, self.steps, self.distributed)
        if not math.isfinite(record["loss"]):
            raise TrainingDiverged(
                f"the loss became {record['loss']} by step {step}: lower the learning rate "
                f"(now {self.settings.lr}) or check the input images for NaN/inf values"
            )
        record.update(step=step, lr=self.lr, images_per_s=self.images / (time.perf_counter() - self.start))
        self.history.append(record)
        self.bar.set_postfix(
            {
                **{key: f"{record[key]:.4f}" for key in ("loss", "ce", "area", "smooth")},
                "img/s": f"{record['images_per_s']:.0f}",
            }
        )
        if self.on_step is not None:
            self.on_step(step, record)
        self._start_interval()


@dataclass
class _Run:
    """What ``train_explainer`` trains with: the explainer (and its unwrapped PTAME), the classifier
    to call, the optimiser, schedule, autocast and memory format, and the processes' count."""

    explainer: PTAME | DistributedDataParallel
    model: PTAME
    forward_classifier: Classifier
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    autocast: torch.autocast
    memory_format: torch.memory_format
    device: torch.device
    loss: LossWeights
    distributed: bool
    world_size: int

    def step(
        self,
        batch: torch.Tensor | Sequence[torch.Tensor],
        mean: Sequence[float],
        std: Sequence[float],
        log: _IntervalLog,
        target_counts: torch.Tensor | None,
    ) -> None:
        """One optimiser step on ``batch``, counted in ``log`` (its targets in ``target_counts``)."""
        pixels = _images(batch).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with self.autocast:
            loss, terms = training_step_loss(
                self.forward_classifier,
                self.explainer,
                pixels,
                mean,
                std,
                self.loss,
                all_gather_targets if self.distributed else None,
                target_counts,
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        log.add(loss, terms, pixels.shape[0] * self.world_size, lr)


def _set_up(
    classifier: Classifier,
    explainer: PTAME | DistributedDataParallel,
    settings: TrainSettings,
    device: torch.device,
    start_step: int,
    total_steps: int,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
) -> _Run:
    """The explainer in training mode on ``device`` (its fuser zeroed at a fresh start when the
    settings say so), compiled if asked, with its optimiser and schedule (new unless given)."""
    model = unwrap(explainer)
    distributed = isinstance(explainer, DistributedDataParallel)
    explainer.to(device).train()
    if start_step == 0 and settings.zero_fuser_start:
        nn.init.zeros_(model.head.fuser.weight)
    forward_classifier = torch.compile(classifier) if settings.compile else classifier
    if settings.compile:
        model.auxiliary = torch.compile(model.auxiliary)
    optimizer = optimizer if optimizer is not None else make_optimizer(model, settings)
    scheduler = scheduler if scheduler is not None else make_scheduler(optimizer, settings, total_steps)
    autocast = torch.autocast(
        device_type=device.type, dtype=torch.bfloat16, enabled=settings.amp and device.type == "cuda"
    )
    return _Run(
        explainer=explainer,
        model=model,
        forward_classifier=forward_classifier,
        optimizer=optimizer,
        scheduler=scheduler,
        autocast=autocast,
        memory_format=torch.channels_last if settings.channels_last else torch.contiguous_format,
        device=device,
        loss=settings.loss,
        distributed=distributed,
        world_size=dist.get_world_size() if distributed else 1,
    )


def _freeze(
    classifier: object, device: torch.device, memory_format: torch.memory_format
) -> tuple[list[bool], list[bool]]:
    """Put a classifier module in eval mode without gradients, on ``device``.

    Returns:
        Each module's ``training`` and each parameter's ``requires_grad`` before, for ``_unfreeze``.
    """
    if not isinstance(classifier, nn.Module):
        return [], []
    modes = [module.training for module in classifier.modules()]
    flags = [parameter.requires_grad for parameter in classifier.parameters()]
    classifier.requires_grad_(False).eval().to(device, memory_format=memory_format)
    return modes, flags


def _unfreeze(classifier: object, state: tuple[list[bool], list[bool]]) -> None:
    """Give a classifier module back the modes and ``requires_grad`` flags ``_freeze`` recorded."""
    if not isinstance(classifier, nn.Module):
        return
    modes, flags = state
    for module, training in zip(classifier.modules(), modes):
        module.training = training
    for parameter, requires_grad in zip(classifier.parameters(), flags):
        parameter.requires_grad_(requires_grad)
