import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ptame import PTAME, LossWeights, TrainingDiverged, TrainSettings, train_explainer
from ptame.perturb import normalize
from ptame.training import make_optimizer, make_scheduler, training_step_loss

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


class AllClassesExplainer(torch.nn.Module):
    """Computes all K maps, then selects the requested ones: the reference design."""

    def __init__(self, explainer: PTAME) -> None:
        super().__init__()
        self.explainer = explainer

    def forward(self, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return self.explainer(pixels)[:, classes]


def blob_images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Dark images, each with one bright square at a random place."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, 3, size, size, generator=generator) * 0.2
    for image in images:
        top, left = torch.randint(0, size - 16, (2,), generator=generator).tolist()
        image[:, top : top + 16, left : left + 16] = torch.rand(3, 1, 1, generator=generator) * 0.5 + 0.5
    return images


@pytest.fixture
def classifier() -> torch.nn.Module:
    torch.manual_seed(3)
    return timm.create_model("resnet10t", num_classes=10).eval().requires_grad_(False)


def test_subset_loss_and_gradients_equal_all_classes(classifier: torch.nn.Module, explainer: PTAME) -> None:
    explainer.train()
    pixels = blob_images(6)
    weights = LossWeights()

    loss, _ = training_step_loss(classifier, explainer, pixels, MEAN, STD, weights)
    loss.backward()
    subset_grads = [p.grad.clone() for p in explainer.head.parameters()]
    explainer.head.zero_grad()

    reference, _ = training_step_loss(classifier, AllClassesExplainer(explainer), pixels, MEAN, STD, weights)
    reference.backward()
    full_grads = [p.grad.clone() for p in explainer.head.parameters()]

    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for got, want in zip(subset_grads, full_grads):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


class ClassMaps(torch.nn.Module):
    """An explainer whose raw map of class k is a known pattern: k - 2 plus a ramp across the image."""

    def forward(self, pixels: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-1.0, 1.0, 8)[None, None, None, :].expand(pixels.shape[0], len(classes), 8, 8)
        return classes.float()[None, :, None, None] - 2.0 + ramp * (classes.float()[None, :, None, None] + 1)


class FixedPredictions(torch.nn.Module):
    """A classifier that predicts the given classes for the batch's positions and records its inputs."""

    def __init__(self, predictions: list[int], classes: int = 5) -> None:
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(predictions), classes).float() * 5.0
        self.inputs: list[torch.Tensor] = []

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        self.inputs.append(normalised.detach().clone())
        return self.logits


def test_each_image_is_masked_by_the_map_of_its_own_prediction() -> None:
    """The masked image the loss classifies, built by hand from the method's text: image i times
    sigmoid(map of image i's predicted class), bilinearly upsampled, then normalised."""
    predictions = [2, 0, 4, 2]
    classifier = FixedPredictions(predictions)
    pixels = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    training_step_loss(classifier, ClassMaps(), pixels, MEAN, STD, LossWeights())
    clean, masked = classifier.inputs
    torch.testing.assert_close(clean, normalize(pixels, MEAN, STD))
    for image, target in enumerate(predictions):
        raw = ClassMaps()(pixels[image : image + 1], torch.tensor([target]))[0, 0]
        upsampled = torch.nn.functional.interpolate(
            torch.sigmoid(raw)[None, None], size=(32, 32), mode="bilinear", align_corners=False
        )[0, 0]
        torch.testing.assert_close(masked[image], normalize(pixels[image : image + 1] * upsampled, MEAN, STD)[0])


def test_gradients_reach_the_head_through_the_masked_image(classifier: torch.nn.Module, explainer: PTAME) -> None:
    explainer.train()
    only_ce = LossWeights(ce=1.0, area=0.0, smooth=0.0)
    loss, _ = training_step_loss(classifier, explainer, blob_images(4), MEAN, STD, only_ce)
    loss.backward()
    assert explainer.head.fuser.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in classifier.parameters())


def test_a_few_steps_lower_the_loss(classifier: torch.nn.Module, explainer: PTAME) -> None:
    batch = blob_images(8)
    settings = TrainSettings(lr=1e-2, log_every=5)
    history = train_explainer(classifier, explainer, [batch] * 30, MEAN, STD, settings, progress=False)
    assert [record["step"] for record in history] == [5, 10, 15, 20, 25, 30]
    assert history[-1]["loss"] < 0.8 * history[0]["loss"]
    assert not explainer.training


def test_labels_in_batches_are_ignored(classifier: torch.nn.Module, explainer: PTAME) -> None:
    batch = blob_images(4)
    history = train_explainer(
        classifier,
        explainer,
        [(batch, torch.tensor([9, 9, 9, 9]))] * 2,
        MEAN,
        STD,
        TrainSettings(log_every=1),
        progress=False,
    )
    assert len(history) == 2


def test_nan_loss_stops_with_a_clear_error(classifier: torch.nn.Module, explainer: PTAME) -> None:
    broken = blob_images(4)
    broken[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match="NaN/inf"):
        train_explainer(classifier, explainer, [broken] * 3, MEAN, STD, TrainSettings(log_every=1), progress=False)


@pytest.mark.parametrize("diverges", [False, True], ids=["returns", "raises"])
def test_the_classifiers_flags_and_mode_are_given_back(explainer: PTAME, diverges: bool) -> None:
    """A user's classifier comes back as it was (Grad-CAM on it afterwards needs its gradients)."""
    torch.manual_seed(3)
    classifier = timm.create_model("resnet10t", num_classes=10).train()
    classifier.fc.requires_grad_(False)  # a mix of flags and modes, all to be kept
    classifier.conv1.eval()
    before_flags = [p.requires_grad for p in classifier.parameters()]
    before_modes = [m.training for m in classifier.modules()]
    assert len(set(before_flags)) == 2 and len(set(before_modes)) == 2
    batch = blob_images(4)
    if diverges:
        batch[0, 0, 0, 0] = float("nan")
    seen = []
    classifier.register_forward_hook(
        lambda module, inputs, output: seen.append(
            (module.training, any(parameter.requires_grad for parameter in module.parameters()))
        )
    )
    try:
        train_explainer(classifier, explainer, [batch] * 2, MEAN, STD, TrainSettings(log_every=1), progress=False)
    except TrainingDiverged:
        assert diverges
    assert seen and not any(training or trainable for training, trainable in seen)  # frozen while training
    assert [p.requires_grad for p in classifier.parameters()] == before_flags
    assert [m.training for m in classifier.modules()] == before_modes


def test_resuming_with_the_same_optimizer_and_schedule_matches_an_uninterrupted_run(
    classifier: torch.nn.Module, explainer: PTAME
) -> None:
    batches = [blob_images(4, seed=seed) for seed in range(4)]
    settings = TrainSettings(lr=1e-2, log_every=1)
    initial = {key: value.clone() for key, value in explainer.head.state_dict().items()}
    train_explainer(classifier, explainer, batches, MEAN, STD, settings, progress=False)
    uninterrupted = {key: value.clone() for key, value in explainer.head.state_dict().items()}

    explainer.head.load_state_dict(initial)
    optimizer = make_optimizer(explainer, settings)
    scheduler = make_scheduler(optimizer, settings, total_steps=4)
    steps_seen = []
    options = dict(progress=False, optimizer=optimizer, scheduler=scheduler, after_step=steps_seen.append)
    first = train_explainer(classifier, explainer, batches[:2], MEAN, STD, settings, total_steps=2, **options)
    second = train_explainer(classifier, explainer, batches[2:], MEAN, STD, settings, start_step=2, **options)
    assert steps_seen == [1, 2, 3, 4]
    assert [record["step"] for record in first + second] == [1, 2, 3, 4]
    assert all(record["images_per_s"] > 0 and record["lr"] > 0 for record in first + second)
    for key, value in explainer.head.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key


def test_a_resumed_run_needs_its_optimizer_and_schedule(classifier: torch.nn.Module, explainer: PTAME) -> None:
    with pytest.raises(
        ValueError, match=r"^a resumed run \(start_step > 0\) needs its restored optimizer and scheduler$"
    ):
        train_explainer(classifier, explainer, [blob_images(2)], MEAN, STD, start_step=3, progress=False)


def test_processes_sharing_a_batch_optimise_the_global_batch_loss(
    classifier: torch.nn.Module, explainer: PTAME
) -> None:
    """What DistributedDataParallel does with two processes, in one: each process computes the
    loss of its half with all the batch's targets; the mean of the halves' losses and gradients
    is the whole batch's. (BatchNorm in eval mode: SyncBatchNorm's role is not tested here.)"""
    pixels = blob_images(6, seed=4)
    weights = LossWeights(ce=1.0, area=2.0, smooth=0.5)
    with torch.no_grad():
        targets = classifier(normalize(pixels, MEAN, STD)).argmax(dim=1)
    parameters = list(explainer.head.parameters())

    loss, _ = training_step_loss(classifier, explainer, pixels, MEAN, STD, weights)
    whole = torch.autograd.grad(loss, parameters)
    halves = []
    for half in (pixels[:3], pixels[3:]):
        half_loss, _ = training_step_loss(classifier, explainer, half, MEAN, STD, weights, lambda _: targets)
        halves.append((half_loss, torch.autograd.grad(half_loss, parameters)))

    assert (halves[0][0] + halves[1][0]).item() / 2 == pytest.approx(loss.item(), rel=1e-5)
    for index, want in enumerate(whole):
        got = (halves[0][1][index] + halves[1][1][index]) / 2
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("zero_fuser_start", [True, False])
def test_the_default_recipe_starts_the_fuser_at_zero_and_a_resumed_run_does_not(zero_fuser_start: bool) -> None:
    torch.manual_seed(0)
    explainer = PTAME(num_classes=3, auxiliary="test_resnet", pretrained_auxiliary=False)
    start = explainer.head.fuser.weight.detach().clone()
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 3))
    settings = TrainSettings(zero_fuser_start=zero_fuser_start)
    train_explainer(classifier, explainer, [], (0.5,) * 3, (0.5,) * 3, settings, progress=False)
    fuser = explainer.head.fuser.weight
    assert torch.equal(fuser, torch.zeros_like(fuser)) if zero_fuser_start else torch.equal(fuser, start)
    optimizer = torch.optim.SGD(explainer.head.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
    explainer.head.fuser.weight.data.fill_(0.25)
    train_explainer(
        classifier, explainer, [], (0.5,) * 3, (0.5,) * 3, settings, start_step=5, total_steps=5,
        optimizer=optimizer, scheduler=scheduler, progress=False,
    )  # fmt: skip
    assert torch.all(explainer.head.fuser.weight == 0.25)


def test_the_optimiser_is_adamw_with_amsgrad_over_the_head_at_the_settings_rate(explainer: PTAME) -> None:
    settings = TrainSettings(lr=3e-3, weight_decay=2e-4)
    optimizer = make_optimizer(explainer, settings)
    assert type(optimizer) is torch.optim.AdamW and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert group["amsgrad"] is True and group["lr"] == 3e-3 and group["weight_decay"] == 2e-4
    assert [id(p) for p in group["params"]] == [id(p) for p in explainer.head.parameters()]
    scheduler = make_scheduler(optimizer, settings, total_steps=1)
    assert type(scheduler) is torch.optim.lr_scheduler.OneCycleLR and scheduler.total_steps == 1
    assert optimizer.param_groups[0]["max_lr"] == 3e-3
    assert make_scheduler(make_optimizer(explainer, settings), settings, total_steps=0).total_steps == 1


def test_a_logged_record_is_the_mean_of_its_steps(classifier: torch.nn.Module, explainer: PTAME) -> None:
    """Records every 2 steps against records of every step, from the same start: means of pairs,
    the learning rate of the interval's last step."""
    batches = [blob_images(4, seed=seed) for seed in range(4)]
    initial = {key: value.clone() for key, value in explainer.head.state_dict().items()}
    every_step = train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(log_every=1), progress=False)
    explainer.head.load_state_dict(initial)
    pairs = train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(log_every=2), progress=False)
    assert [record["step"] for record in pairs] == [2, 4]
    for record, (first, second) in zip(pairs, (every_step[0:2], every_step[2:4])):
        for key in ("loss", "ce", "area", "smooth"):
            assert record[key] == pytest.approx((first[key] + second[key]) / 2, rel=1e-5), key
        assert record["lr"] == second["lr"] and first["lr"] != second["lr"]


def test_resuming_needs_both_the_optimizer_and_the_schedule_and_a_step_at_or_after_the_start(
    classifier: torch.nn.Module, explainer: PTAME
) -> None:
    optimizer = make_optimizer(explainer, TrainSettings())
    scheduler = make_scheduler(optimizer, TrainSettings(), total_steps=4)
    for options in ({}, {"optimizer": optimizer}, {"scheduler": scheduler}):
        with pytest.raises(ValueError, match="restored optimizer and scheduler"):
            train_explainer(classifier, explainer, [], MEAN, STD, start_step=1, progress=False, **options)
    both = {"optimizer": optimizer, "scheduler": scheduler, "progress": False}
    assert train_explainer(classifier, explainer, [], MEAN, STD, start_step=2, total_steps=2, **both) == []
    with pytest.raises(ValueError, match=r"total_steps \(1\) is before start_step \(2\)"):
        train_explainer(classifier, explainer, [], MEAN, STD, start_step=2, total_steps=1, **both)


def test_amp_is_off_on_the_cpu(classifier: torch.nn.Module, explainer: PTAME) -> None:
    """bf16 autocast is for CUDA only: on the CPU, amp=True trains exactly as fp32."""
    batches = [blob_images(4, seed=seed) for seed in range(2)]
    initial = {key: value.clone() for key, value in explainer.head.state_dict().items()}
    train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(amp=False), progress=False)
    fp32 = {key: value.clone() for key, value in explainer.head.state_dict().items()}
    explainer.head.load_state_dict(initial)
    train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(amp=True), progress=False)
    for key, value in explainer.head.state_dict().items():
        assert torch.equal(value, fp32[key]), key


def test_the_gatherer_receives_this_processs_own_targets() -> None:
    """Each process hands its own predictions to the gatherer (``all_gather_targets`` shares them)."""
    received: list[torch.Tensor] = []

    def gather(targets: torch.Tensor) -> torch.Tensor:
        received.append(targets.clone())
        return torch.cat([targets, torch.tensor([4, 2])])

    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    training_step_loss(FixedPredictions([2, 0]), ClassMaps(), pixels, MEAN, STD, LossWeights(), gather)
    assert len(received) == 1 and received[0].tolist() == [2, 0]


def test_a_record_is_the_loss_of_its_steps_by_hand_with_the_default_recipe(
    classifier: torch.nn.Module, explainer: PTAME
) -> None:
    """lr 0 keeps the fuser at its zero start, so every map is sigmoid(0) = 0.5 and each step's loss is
    known: the cross-entropy of the classifier on the half-bright image against its own prediction,
    area (0.5 + 0.0005) ** 0.3, smoothness from the constant maps' edges only. The batches run out before
    total_steps: the step after the last record is one last record. All in fp32 (no autocast on the CPU)."""
    batch = blob_images(2)
    with torch.no_grad():
        targets = classifier(normalize(batch, MEAN, STD)).argmax(dim=1)
        ce = torch.nn.functional.cross_entropy(classifier(normalize(batch * 0.5, MEAN, STD)), targets).item()
        height, width = explainer(batch).shape[-2:]
    area = 0.5005**0.3
    edges = (2 * height + 2 * width) * 0.5**2  # the first and last rows and columns of one map
    smooth = 0.3 * edges * (2 * 2) / (2.0 * 2)  # border 0.3, (b, B) = (2, 2) maps, / (power * b)
    settings = TrainSettings(lr=0.0, log_every=2)
    history = train_explainer(classifier, explainer, [batch] * 3, MEAN, STD, settings, total_steps=10, progress=False)
    assert [record["step"] for record in history] == [2, 3]
    for record in history:
        assert record["ce"] == pytest.approx(ce, rel=1e-6)
        assert record["area"] == pytest.approx(area, rel=1e-6)
        assert record["smooth"] == pytest.approx(smooth, rel=1e-6)
        assert record["loss"] == pytest.approx(ce + 2.0 * area + 0.01 * smooth, rel=1e-6)


def test_images_per_second_are_the_intervals_images_over_its_wall_time(
    classifier: torch.nn.Module, explainer: PTAME, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake clock that advances one second per batch drawn: 2 batches of 4 images per interval, 2 s,
    4 images/s in every interval; on_step gets each record with its step."""
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def batches() -> Iterator[torch.Tensor]:
        for seed in range(4):
            now[0] += 1.0
            yield blob_images(4, seed=seed)

    calls: list[tuple[int, dict[str, float]]] = []
    history = train_explainer(
        classifier, explainer, batches(), MEAN, STD, TrainSettings(log_every=2), total_steps=4, progress=False,
        on_step=lambda step, record: calls.append((step, record)),
    )  # fmt: skip
    assert [record["images_per_s"] for record in history] == [4.0, 4.0]
    assert calls == [(2, history[0]), (4, history[1])]


def test_training_stops_at_total_steps_when_there_are_more_batches(
    classifier: torch.nn.Module, explainer: PTAME
) -> None:
    """total_steps is the step to stop after, also in a resumed run (start_step + its remaining steps)."""
    batches = [blob_images(2, seed=seed) for seed in range(4)]
    steps: list[int] = []
    history = train_explainer(
        classifier, explainer, batches, MEAN, STD, total_steps=2, after_step=steps.append, progress=False
    )
    assert steps == [1, 2] and [record["step"] for record in history] == [2]
    optimizer = make_optimizer(explainer, TrainSettings())
    scheduler = make_scheduler(optimizer, TrainSettings(), total_steps=3)
    steps.clear()
    train_explainer(
        classifier, explainer, batches[:3], MEAN, STD, start_step=2, total_steps=3, optimizer=optimizer,
        scheduler=scheduler, after_step=steps.append, progress=False,
    )  # fmt: skip
    assert steps == [3]


def test_the_progress_bar_shows_the_steps_from_the_start_step_and_the_loss_terms(
    classifier: torch.nn.Module, explainer: PTAME, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default a bar (even when stderr is not a terminal): a run resumed at step 2 of 4 ends at 4/4, with
    the loss terms and images/s; progress=False writes nothing."""
    batches = [blob_images(2, seed=seed) for seed in range(2)]
    optimizer = make_optimizer(explainer, TrainSettings())
    scheduler = make_scheduler(optimizer, TrainSettings(), total_steps=4)
    options = dict(start_step=2, total_steps=4, optimizer=optimizer, scheduler=scheduler)
    train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(log_every=1), **options)
    last = capsys.readouterr().err.rstrip().split("\r")[-1]
    assert " 4/4 " in last, last
    for label in ("loss=", "ce=", "area=", "smooth=", "img/s="):
        assert label in last, (label, last)
    train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(log_every=1), progress=False, **options)
    assert capsys.readouterr().err == ""


class FakeCompiled(torch.nn.Module):
    """What torch.compile returns, for the wiring only: calls the module, keeps it as ``_orig_mod``."""

    def __init__(self, module: torch.nn.Module, calls: list[torch.nn.Module]) -> None:
        super().__init__()
        self._orig_mod = module
        self.calls = calls

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls.append(self._orig_mod)
        return self._orig_mod(*inputs)


@pytest.mark.parametrize("use_compile", [False, True])
def test_compile_runs_the_classifier_and_the_auxiliary_compiled_and_gives_the_auxiliary_back(
    classifier: torch.nn.Module, explainer: PTAME, monkeypatch: pytest.MonkeyPatch, use_compile: bool
) -> None:
    """settings.compile: torch.compile (here a stand-in) wraps the classifier and the auxiliary network for
    the run, and the explainer gets its own auxiliary network back; without it nothing is compiled."""
    calls: list[torch.nn.Module] = []
    compiled: list[torch.nn.Module] = []

    def fake_compile(module: torch.nn.Module) -> FakeCompiled:
        compiled.append(module)
        return FakeCompiled(module, calls)

    monkeypatch.setattr(torch, "compile", fake_compile)
    auxiliary = explainer.auxiliary
    settings = TrainSettings(compile=use_compile, log_every=1)
    train_explainer(classifier, explainer, [blob_images(2)], MEAN, STD, settings, progress=False)
    if use_compile:
        assert compiled == [classifier, auxiliary]
        assert [module is classifier for module in calls].count(True) == 2  # the clean and the masked images
        assert [module is auxiliary for module in calls].count(True) == 1
    else:
        assert compiled == [] and calls == []
    assert explainer.auxiliary is auxiliary


@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_runs_the_classifier_and_its_images_in_that_layout(
    classifier: torch.nn.Module, explainer: PTAME, channels_last: bool
) -> None:
    """The classifier's first convolution sees images and weights in the layout the settings ask for."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    first_conv = next(module for module in classifier.modules() if isinstance(module, torch.nn.Conv2d))
    seen: list[tuple[bool, bool]] = []
    first_conv.register_forward_pre_hook(
        lambda module, inputs: seen.append(
            (inputs[0].is_contiguous(memory_format=layout), module.weight.is_contiguous(memory_format=layout))
        )
    )
    settings = TrainSettings(channels_last=channels_last, log_every=1)
    train_explainer(classifier, explainer, [blob_images(2)], MEAN, STD, settings, progress=False)
    assert seen[0] == (True, True)  # the clean images and the classifier's weights


def test_a_distributed_explainer_of_one_process_trains_as_the_plain_one(
    classifier: torch.nn.Module, explainer: PTAME, tmp_path: Path
) -> None:
    """Wrapped in DistributedDataParallel (gloo, world size 1): targets gathered, terms averaged over the
    processes, the same head and records as without the wrapper."""
    batches = [blob_images(4, seed=seed) for seed in range(2)]
    initial = {key: value.clone() for key, value in explainer.head.state_dict().items()}
    plain = train_explainer(classifier, explainer, batches, MEAN, STD, TrainSettings(log_every=1), progress=False)
    trained = {key: value.clone() for key, value in explainer.head.state_dict().items()}
    explainer.head.load_state_dict(initial)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(explainer)
        history = train_explainer(classifier, wrapped, batches, MEAN, STD, TrainSettings(log_every=1), progress=False)
    finally:
        dist.destroy_process_group()
    for record, want in zip(history, plain, strict=True):
        for key in ("step", "loss", "ce", "area", "smooth", "lr"):
            assert record[key] == pytest.approx(want[key], rel=1e-6), key
    for key, value in explainer.head.state_dict().items():
        assert torch.allclose(value, trained[key], rtol=1e-5, atol=1e-7), key


def tiny_classifier_and_explainer() -> tuple[torch.nn.Module, PTAME]:
    """The same seeded pair in every process: a ResNet-10t classifier and a test_resnet explainer."""
    torch.manual_seed(3)
    classifier = timm.create_model("resnet10t", num_classes=10).eval().requires_grad_(False)
    return classifier, PTAME(num_classes=10, auxiliary="test_resnet", pretrained_auxiliary=False)


def _train_one_share(rank: int, world_size: int, store: str, out: str, batch: torch.Tensor) -> None:
    """One DistributedDataParallel process: its share of the global batch, twice; a clock of 1 s a batch."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        classifier, explainer = tiny_classifier_and_explainer()
        now = [0.0]
        time.perf_counter = lambda: now[0]  # this process only

        def shares() -> Iterator[torch.Tensor]:
            share = batch.shape[0] // world_size
            for _ in range(2):
                now[0] += 1.0
                yield batch[rank * share : (rank + 1) * share]

        settings = TrainSettings(lr=0.0, log_every=2)
        wrapped = DistributedDataParallel(explainer)
        history = train_explainer(classifier, wrapped, shares(), MEAN, STD, settings, total_steps=2, progress=False)
        torch.save(history, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_log_the_global_batchs_loss_by_hand_and_all_their_images(tmp_path: Path) -> None:
    """Two gloo processes, 2 of the 4 images each, lr 0 (every map stays sigmoid(0) = 0.5): each logs the
    global batch's terms (cross-entropy over all 4 images, smoothness of (2, 4) maps per process as its
    targets are gathered) and 8 images / 2 s = 4 images/s for both processes together."""
    classifier, explainer = tiny_classifier_and_explainer()
    batch = blob_images(4, size=32)
    with torch.no_grad():
        targets = classifier(normalize(batch, MEAN, STD)).argmax(dim=1)
        ce = torch.nn.functional.cross_entropy(classifier(normalize(batch * 0.5, MEAN, STD)), targets).item()
        height, width = explainer(batch).shape[-2:]
    area = 0.5005**0.3
    smooth = 0.3 * (2 * height + 2 * width) * 0.5**2 * (2 * 4) / (2.0 * 2)  # (b, B) = (2, 4) maps, / (power * b)
    out = str(tmp_path / "history")
    torch.multiprocessing.spawn(_train_one_share, args=(2, str(tmp_path / "store"), out, batch), nprocs=2, join=True)
    for rank in range(2):
        (record,) = torch.load(f"{out}.{rank}")
        assert record["step"] == 2 and record["images_per_s"] == 4.0
        assert record["ce"] == pytest.approx(ce, rel=1e-5)
        assert record["area"] == pytest.approx(area, rel=1e-6)
        assert record["smooth"] == pytest.approx(smooth, rel=1e-6)
        assert record["loss"] == pytest.approx(ce + 2.0 * area + 0.01 * smooth, rel=1e-5)
