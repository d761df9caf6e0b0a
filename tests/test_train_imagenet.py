import argparse
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ptame.training
from ptame import PTAME
from ptame.bench.app import free_port
from ptame.head import FeatureLevel
from ptame.training import TrainSettings, make_optimizer
from tests.conftest import TINY_RUN, make_image_tree, run_command, train_tiny, with_class_agnostic_rows
from train import recipes
from train.checkpointing import read_checkpoint_info
from train.commands import explainer, imagenet
from train.data import image_files
from train.runs import CHECKPOINT_NAME
from train.shards import pack_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def finished_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "uninterrupted"
    train_tiny(data, out)
    return out


def head_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "explainer" / "model.safetensors"))


def assert_same_weights(run: Path, reference: Path) -> None:
    got, want = head_weights(run), head_weights(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    got_state, want_state = load_file(str(run / CHECKPOINT_NAME)), load_file(str(reference / CHECKPOINT_NAME))
    for key in want_state:
        if key.startswith("optimizer."):
            assert torch.equal(got_state[key], want_state[key]), key


def test_a_full_run_writes_explainer_log_checkpoint_and_config(finished_run: Path) -> None:
    records = [json.loads(line) for line in (finished_run / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4]
    for record in records:
        assert {"loss", "ce", "area", "smooth", "lr", "images_per_s", "elapsed_s"} <= record.keys()
        assert record["images_per_s"] > 0

    config = json.loads((finished_run / "run.json").read_text())
    assert config["classifier"] == "test_resnet" and config["num_images"] == 18 and config["total_steps"] == 4
    assert config["recipe"]["batch_size"] == 4 and config["recipe"]["seed"] == 12345
    assert config["transform"] == {"resize": 40, "crop": 32, "interpolation": "bilinear"}
    assert read_checkpoint_info(finished_run / CHECKPOINT_NAME).step == 4
    manifest = tomllib.loads((finished_run / "manifest.toml").read_text())
    assert manifest["models"] == [
        {
            "key": "uninterrupted",
            "display_name": f"test_resnet ({finished_run})",
            "classifier": "test_resnet",
            "explainer": "explainer",
        }
    ]

    explainer = PTAME.from_pretrained(finished_run / "explainer")
    assert explainer.num_classes == 1000 and explainer.auxiliary_name == "test_resnet"
    trained = load_file(str(finished_run / CHECKPOINT_NAME))
    trained["head.fuser.weight"] = with_class_agnostic_rows(trained["head.fuser.weight"], explainer.trained_images)
    for key, value in explainer.head.state_dict().items():
        assert torch.equal(value, trained[f"head.{key}"])
    untrained = PTAME(num_classes=1000, auxiliary="test_resnet", pretrained_auxiliary=False)
    assert not torch.equal(untrained.head.fuser.weight, explainer.head.fuser.weight)


def test_stopping_and_resuming_gives_the_uninterrupted_result(data: Path, finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "stopped"
    train_tiny(data, out, "--stop-after", "1")
    assert read_checkpoint_info(out / CHECKPOINT_NAME).step == 1
    assert not (out / "explainer").exists()
    train_tiny(data, out, "--resume", "--checkpoint-every", "3")
    assert_same_weights(out, finished_run)
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 4]


def test_a_killed_run_resumes_from_its_last_checkpoint(
    data: Path, finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    step_loss = ptame.training.training_step_loss

    def crash_at_third_step(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step_loss(*args, **kwargs)

    monkeypatch.setattr(ptame.training, "training_step_loss", crash_at_third_step)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_tiny(data, out)
    monkeypatch.setattr(ptame.training, "training_step_loss", step_loss)
    assert read_checkpoint_info(out / CHECKPOINT_NAME).step == 2
    assert not list(out.glob(".*.tmp"))

    train_tiny(data, out, "--resume")
    assert_same_weights(out, finished_run)


def test_an_existing_run_is_not_overwritten_and_resumes_only_itself(
    data: Path, finished_run: Path, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match="--resume"):
        train_tiny(data, finished_run)
    with pytest.raises(SystemExit, match="no training checkpoint"):
        train_tiny(data, tmp_path / "nothing", "--resume")
    with pytest.raises(SystemExit, match="no image files"):
        train_tiny(tmp_path, tmp_path / "no-images")
    out = tmp_path / "other"
    train_tiny(data, out, "--stop-after", "1")
    with pytest.raises(SystemExit, match="different run.*recipe"):
        train_tiny(data, out, "--resume", "--lr", "0.5")


def test_recipe_flags_override_the_paper_recipe() -> None:
    parser = argparse.ArgumentParser()
    imagenet.add_arguments(parser)
    args = parser.parse_args(
        ["--backbone", "resnet50", "--data", "d", "--out", "o", "--area", "0.5", "--batch-size", "64", "--no-amp"]
    )
    recipe = explainer.resolve_recipe(args, recipes.recipe_for(args.classifier, paper_schedule=True))
    assert recipe.loss.area == 0.5 and recipe.loss.ce == 0.161429 and recipe.zero_fuser_start is False
    assert recipe.batch_size == 64 and recipe.amp is False
    assert recipe.weight_decay == 0.000242666 and recipe.crop == 224


def _train_as_rank(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    """One torchrun-like process: the environment torchrun sets, then the command."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    run_command(imagenet, argv)


PROCESSES = 2


def forward_share_by_share(original: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """PTAME.forward as PROCESSES processes sharing a batch compute it, in one process.

    While training, each share of the batch goes through the head alone, so BatchNorm normalises it
    by its own statistics (plain BatchNorm in each process), and the running statistics keep only
    the first share's update (DistributedDataParallel gives every process rank 0's buffers before
    each forward pass, and rank 0 writes the checkpoint).
    """

    def forward(self: PTAME, pixels: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return original(self, pixels, classes)
        first, *others = pixels.chunk(PROCESSES)
        outputs = [original(self, first, classes)]
        first_update = [
            (module, {name: buffer.clone() for name, buffer in module.named_buffers(recurse=False)})
            for module in self.head.modules()
        ]
        outputs += [original(self, share, classes) for share in others]
        for module, buffers in first_update:
            for name, buffer in buffers.items():
                setattr(module, name, buffer)
        return torch.cat(outputs)

    return forward


def optimizer_prefixes(state: dict[str, torch.Tensor]) -> tuple[PTAME, dict[str, str]]:
    """A PTAME holding a training checkpoint's head, and each head parameter's key prefix in the
    checkpoint's optimiser state: {"head.<name>": "optimizer.<index>."}.

    save_checkpoint names the state by torch's index of the parameter in optimizer.state_dict(); the
    indices are read off an optimiser built as training builds it (make_optimizer), so they follow
    any change of its parameters or groups. The head is loaded strictly and every moment's shape
    checked against its parameter's, so a mapping gone stale fails here instead of comparing the
    wrong tensors.
    """
    explainer = PTAME(
        num_classes=state["head.fuser.weight"].shape[0], auxiliary="test_resnet", pretrained_auxiliary=False
    )
    explainer.head.load_state_dict(
        {key.removeprefix("head."): value for key, value in state.items() if key.startswith("head.")}
    )
    optimizer = make_optimizer(explainer, TrainSettings())
    names = {id(parameter): f"head.{name}" for name, parameter in explainer.head.named_parameters()}
    prefixes = {}
    for group, saved in zip(optimizer.param_groups, optimizer.state_dict()["param_groups"], strict=True):
        for parameter, index in zip(group["params"], saved["params"], strict=True):
            prefixes[names[id(parameter)]] = f"optimizer.{index}."
            assert state[f"optimizer.{index}.exp_avg"].shape == parameter.shape, names[id(parameter)]
    assert prefixes.keys() == set(names.values())
    return explainer, prefixes


# Tight: elementwise rtol, plus an atol of RTOL times the tensor's largest value, at most ATOL (an
# absolute 1e-6 alone would pass any optimiser second moment: they are about 1e-7 here).
RTOL, ATOL = 1e-4, 1e-6
# An AdamW step moves a parameter by lr * |m^|/(sqrt(v^) + eps) plus lr * weight_decay * |p|: at most
# lr at the first step, sqrt(2) lr at the second, below 2 lr up to the fourth (betas 0.9, 0.999;
# amsgrad only lowers it), whatever the gradient.
ADAM_STEP = 2.0
# A rounding-only gradient, relative to a real one: measured 2e-5 to 1e-4 here; a bias with a real
# gradient (added after the BatchNorm instead of before it) gave 0.26 to 6.
ROUNDING = 1e-2


def assert_close(key: str, got: torch.Tensor, want: torch.Tensor, extra_atol: float = 0.0) -> None:
    got, want = got.double(), want.double()
    atol = min(ATOL, RTOL * want.abs().max().item()) + extra_atol
    assert torch.allclose(got, want, rtol=RTOL, atol=atol), (key, (got - want).abs().max().item(), atol)


def moment_scale(name: str, moment: torch.Tensor) -> float:
    """The largest value of an optimiser moment, in gradient units (square root of a squared one)."""
    largest = moment.double().abs().max().item()
    return largest**0.5 if name.endswith("_sq") else largest


def assert_same_training(path: Path, reference: Path) -> None:
    """The checkpoints of two runs trained on the same global batches hold the same training.

    Each feature level's convolution bias sits right before a BatchNorm, which in training mode
    subtracts the batch mean and so cancels any per-channel constant: the bias's true gradient is
    zero, and what it gets is rounding noise, which Adam scales up to steps of about the learning
    rate, in directions that depend on the summation order (two processes' all-reduce against one
    process's backward pass). Its value and moments are noise, not training, so instead of
    matching them this checks what training determines: in both runs its gradient is
    rounding-sized (its moments against its level's convolution weight's), and the two runs'
    values, moved from the same start by Adam, are within ADAM_STEP * lr a step of each other. The
    noise also reaches the BatchNorm's running mean, which averages the convolution's output bias
    included, with weight momentum. Every other tensor (weights, BatchNorm statistics, the other
    moments, step counts, random number generator states) is compared tightly.
    """
    got, want = load_file(str(path)), load_file(str(reference))
    assert got.keys() == want.keys() and any(key.startswith("optimizer.") for key in want)
    info = read_checkpoint_info(reference)
    step, max_lr = info.step, float(info.run["recipe"]["lr"])  # OneCycle's max_lr: no step's lr is higher
    assert read_checkpoint_info(path).step == step >= 1

    def bias_spread(steps: int) -> float:
        """How far apart a noise-driven bias of the two runs can be after ``steps`` steps."""
        return 2 * ADAM_STEP * steps * max_lr

    explainer, prefixes = optimizer_prefixes(want)
    levels = [name for name, module in explainer.head.named_modules() if isinstance(module, FeatureLevel)]
    noise_biases = {f"head.{level}.conv.bias" for level in levels}
    noise_moments = {}  # optimizer.<bias index>.<name> -> (name, optimizer.<its level's weight index>.<name>)
    running_means = {}  # head.<level>.norm.running_mean -> how far the biases' difference moves it
    for level in levels:
        bias, weight = prefixes[f"head.{level}.conv.bias"], prefixes[f"head.{level}.conv.weight"]
        names = {key.removeprefix(bias) for key in want if key.startswith(bias)} - {"step"}
        assert "exp_avg" in names, names
        noise_moments.update({bias + name: (name, weight + name) for name in names})
        # The running mean's update at step k averages the bias after k - 1 steps, with weight momentum.
        momentum = explainer.head.get_submodule(level).norm.momentum
        running_means[f"head.{level}.norm.running_mean"] = bias_spread(step - 1) * (1 - (1 - momentum) ** (step - 1))
    assert levels and noise_biases | noise_moments.keys() | running_means.keys() <= want.keys()

    for key in want:
        if key in noise_biases:
            assert_close(key, got[key], want[key], extra_atol=bias_spread(step))
        elif key in noise_moments:
            name, weight_key = noise_moments[key]
            for state in (got, want):
                assert moment_scale(name, state[key]) <= ROUNDING * moment_scale(name, state[weight_key]), key
        else:
            assert_close(key, got[key], want[key], extra_atol=running_means.get(key, 0.0))


@pytest.mark.slow
def test_two_processes_train_as_one_process_on_the_same_global_batches(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes, each given half of every global batch, against one process given the global
    batches: the same head weights, BatchNorm statistics and optimiser state, as far as training
    determines them (assert_same_training: not the rounding noise of the biases before BatchNorm).
    The one process puts each half through the head alone (forward_share_by_share), since plain
    BatchNorm (CPU processes have no SyncBatchNorm) normalises each process's half by its own
    statistics. Then the two processes' run resumes in one process."""
    out = tmp_path / "two-processes"
    argv = [*TINY_RUN, "--data", str(data), "--out", str(out), "--stop-after", "2", "--device", "cpu"]
    torch.multiprocessing.spawn(_train_as_rank, args=(PROCESSES, free_port(), argv), nprocs=PROCESSES, join=True)
    assert read_checkpoint_info(out / CHECKPOINT_NAME).step == 2
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [2]

    one = tmp_path / "one-process"
    # One thread, as in each process: the same summation order (bit-identical checkpoints here; another
    # CPU may round otherwise, and the convolution biases before BatchNorm amplify rounding: see
    # assert_same_training).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(PTAME, "forward", forward_share_by_share(PTAME.forward))
            train_tiny(data, one, "--stop-after", "2")
    finally:
        torch.set_num_threads(threads)
    assert_same_training(out / CHECKPOINT_NAME, one / CHECKPOINT_NAME)

    train_tiny(data, out, "--resume")
    assert read_checkpoint_info(out / CHECKPOINT_NAME).step == 4
    assert PTAME.from_pretrained(out / "explainer").num_classes == 1000


def test_a_run_from_shards_with_two_workers_resumes_to_the_uninterrupted_weights(data: Path, tmp_path: Path) -> None:
    """The 18 images in webdataset shards of 4, read by 2 DataLoader workers (2 readers: shards 0, 2, 4 and 1, 3);
    stopped after step 1 and resumed (where the other reader serves the next step): the uninterrupted weights.
    Resuming with another number of workers is another run."""
    pack_folder(image_files(data / "train"), data / "train", tmp_path / "shards", per_shard=4)
    shards = ["--data", f"{tmp_path}/shards/train-{{0000..0004}}.tar", "--workers", "2"]
    whole = tmp_path / "whole"
    train_tiny(data, whole, *shards)
    run = json.loads((whole / "run.json").read_text())
    assert run["num_images"] == 18 and run["shards"] == {"count": 5, "readers": 2, "window": 4096}
    out = tmp_path / "resumed"
    train_tiny(data, out, *shards, "--stop-after", "1")
    with pytest.raises(SystemExit, match="different run.*shards"):
        train_tiny(data, out, *shards, "--resume", "--workers", "1")
    train_tiny(data, out, *shards, "--resume")
    assert_same_weights(out, whole)
