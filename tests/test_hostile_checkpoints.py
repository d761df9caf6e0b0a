"""Hostile explainers: each case is one changed file of a valid explainer folder (or Hub repo).

Every case is loaded through ``PTAME.from_pretrained`` from a local folder and from a seeded
Hugging Face cache (offline), and must give a ``CheckpointError`` whose message names the
problem in at most ``MAX_MESSAGE_CHARS`` characters, within ``LIMIT_S`` seconds and
``LIMIT_MB`` of resident memory above what the process held before (peak RSS, measured with
Linux's clear_refs). Through the app, a good model keeps serving beside every hostile one.
"""

import json
import pickle
import re
import shutil
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import app
from ptame import PTAME, CheckpointError
from ptame.errors import MAX_MESSAGE_CHARS
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry, build_registry
from ptame.serving.session import ExplainSession
from tests.conftest import peak_rss_mb, random_shapes_demo, seed_hf_cache, shapes_file

LIMIT_S = 20.0  # per load, on a busy 2-core machine; a good explainer loads in well under a second
LIMIT_MB = 300  # peak resident memory above the process's before the load


@dataclass(frozen=True)
class Layout:
    """The files of one explainer as a case sees them (a local folder or a Hub repo's files)."""

    config: Path
    weights: Path
    auxiliary_config: Path
    auxiliary_weights: Path


def edit_config(path: Path, **values: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def edit_header(path: Path, edit: Callable[[dict], None], header_bytes: bytes | None = None) -> None:
    """Rewrite a safetensors file's header (``edit`` changes its JSON in place), keeping its data."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + size])
    edit(header)
    encoded = header_bytes if header_bytes is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + size :])


def edit_tensors(path: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Re-save a safetensors file with ``edit`` applied to its tensors, keeping its metadata."""
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def set_value(name: str, value: float, dtype: torch.dtype | None = None) -> Callable[[dict], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensor = tensors[name].to(dtype or tensors[name].dtype)
        tensor.view(-1)[0] = value
        tensors[name] = tensor

    return edit


def first_auxiliary_weight(tensors: dict[str, torch.Tensor]) -> str:
    return next(name for name, tensor in tensors.items() if tensor.is_floating_point() and tensor.dim() == 4)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (id, change, pattern of the message). A change takes the layout and the folder outside it.
Change = Callable[[Layout, Path], None]
CASES: list[tuple[str, Change, str]] = [
    # config.json: values
    ("num-classes-huge", lambda f, o: edit_config(f.config, num_classes=1_500_000), "num_classes must be an integer"),
    ("num-classes-string", lambda f, o: edit_config(f.config, num_classes="6"), "num_classes must be an integer"),
    ("num-classes-float", lambda f, o: edit_config(f.config, num_classes=6.5), "num_classes must be an integer"),
    ("num-classes-bool", lambda f, o: edit_config(f.config, num_classes=True), "num_classes must be an integer"),
    ("num-classes-zero", lambda f, o: edit_config(f.config, num_classes=0), "num_classes must be an integer"),
    ("num-classes-other", lambda f, o: edit_config(f.config, num_classes=7, class_names=None), "num_classes"),
    ("levels-100k", lambda f, o: edit_config(f.config, feature_levels=list(range(100_000))), "feature_levels must"),
    ("levels-empty", lambda f, o: edit_config(f.config, feature_levels=[]), "feature_levels must"),
    ("levels-strings", lambda f, o: edit_config(f.config, feature_levels=["1", "2", "3", "4"]), "feature_levels must"),
    ("levels-repeated", lambda f, o: edit_config(f.config, feature_levels=[1, 1, 2, 3]), "feature_levels must"),
    ("levels-three", lambda f, o: edit_config(f.config, feature_levels=[1, 2, 3]), "feature levels"),
    ("levels-huge-index", lambda f, o: edit_config(f.config, feature_levels=[1, 2, 3, 10**9]), "feature_levels must"),
    ("auxiliary-3mb", lambda f, o: edit_config(f.config, auxiliary="a" * 3_000_000), "auxiliary must be a network"),
    ("auxiliary-number", lambda f, o: edit_config(f.config, auxiliary=5), "auxiliary must be a network"),
    ("auxiliary-unknown", lambda f, o: edit_config(f.config, auxiliary="no_such_network"), "timm has no model"),
    ("auxiliary-bad-tag", lambda f, o: edit_config(f.config, auxiliary="resnet10t.nope"), "timm has no weights"),
    ("auxiliary-custom", lambda f, o: edit_config(f.config, auxiliary="custom:Net"), "custom auxiliary network"),
    ("auxiliary-missing", lambda f, o: edit_config(f.config, auxiliary="local-dir:nowhere"), "config.json|cache"),
    ("std-zero", lambda f, o: edit_config(f.config, auxiliary_std=[0, 0, 0]), "auxiliary_std must be"),
    ("std-negative", lambda f, o: edit_config(f.config, auxiliary_std=[-1, 1, 1]), "auxiliary_std must be"),
    ("std-nan", lambda f, o: f.config.write_text(f.config.read_text().replace("0.214", "NaN", 1)), "NaN is not"),
    ("std-infinity", lambda f, o: f.config.write_text(f.config.read_text().replace("0.214", "1e999", 1)), "std"),
    ("mean-1000", lambda f, o: edit_config(f.config, auxiliary_mean=[0.5] * 1000), "auxiliary_mean must be"),
    ("mean-string", lambda f, o: edit_config(f.config, auxiliary_mean="abc"), "auxiliary_mean must be"),
    ("mean-huge", lambda f, o: edit_config(f.config, auxiliary_mean=[1e300] * 3), "probe image are NaN or infinite"),
    ("pretrained-string", lambda f, o: edit_config(f.config, pretrained_auxiliary="yes"), "pretrained_auxiliary"),
    ("auxiliary-size-huge", lambda f, o: edit_config(f.config, auxiliary_size=10**6), "auxiliary_size must be"),
    ("auxiliary-size-zero", lambda f, o: edit_config(f.config, auxiliary_size=0), "auxiliary_size must be"),
    ("auxiliary-size-float", lambda f, o: edit_config(f.config, auxiliary_size=96.5), "auxiliary_size must be"),
    ("auxiliary-size-bool", lambda f, o: edit_config(f.config, auxiliary_size=True), "auxiliary_size must be"),
    ("class-names-count", lambda f, o: edit_config(f.config, class_names=["a"]), "class_names must be"),
    ("class-names-numbers", lambda f, o: edit_config(f.config, class_names=list(range(6))), "class_names must be"),
    ("class-names-long", lambda f, o: edit_config(f.config, class_names=["x" * 10_000] * 6), "class_names must be"),
    ("unknown-key", lambda f, o: edit_config(f.config, auxiliary_root="/"), "unknown keys"),
    # config.json: form
    (
        "repeated-keys",
        lambda f, o: f.config.write_text('{"num_classes": 6, ' + f.config.read_text()[1:]),
        "repeated keys",
    ),
    ("nested-100000", lambda f, o: f.config.write_text(nested(100_000)), "nested too deeply"),
    ("nested-50", lambda f, o: f.config.write_text(nested(50)), "nested more than"),
    ("config-10mb", lambda f, o: f.config.write_text(" " * 10_000_000 + "{}"), "larger than"),
    ("config-binary", lambda f, o: f.config.write_bytes(bytes(range(256)) * 4), "not valid JSON"),
    ("config-list", lambda f, o: f.config.write_text("[1, 2]"), "JSON object, not list"),
    (
        "config-huge-int",
        lambda f, o: f.config.write_text(f.config.read_text().replace('"num_classes": 6', '"num_classes": ' + "9" * 5000)),
        "not valid JSON",
    ),
    ("config-missing", lambda f, o: f.config.unlink(), "config.json"),
    # model.safetensors
    ("weights-missing", lambda f, o: f.weights.unlink(), "model.safetensors"),
    ("weights-empty", lambda f, o: f.weights.write_bytes(b""), "not a readable safetensors file"),
    (
        "weights-truncated",
        lambda f, o: f.weights.write_bytes(f.weights.read_bytes()[:-100]),
        "not a readable safetensors file",
    ),
    (
        "weights-pickle",
        lambda f, o: f.weights.write_bytes(pickle.dumps({"fuser.weight": [1.0]})),
        "not a readable safetensors file",
    ),
    (
        "header-20mb",
        lambda f, o: edit_header(f.weights, lambda h: None, b"{" + b" " * 20_000_000 + b"}"),
        "over the 16777216",
    ),
    (
        "header-beyond-file",
        lambda f, o: f.weights.write_bytes(struct.pack("<Q", 2**40) + f.weights.read_bytes()[8:]),
        "too short for its header",
    ),
    ("header-not-json", lambda f, o: edit_header(f.weights, lambda h: None, b"not json at all"), "not valid JSON"),
    ("header-nested", lambda f, o: edit_header(f.weights, lambda h: None, nested(100).encode()), "nested"),
    (
        "header-dtype",
        lambda f, o: edit_header(f.weights, lambda h: h["fuser.weight"].update(dtype="F8_E4M3")),
        "dtype",
    ),
    (
        "header-shape-lie",
        lambda f, o: edit_header(f.weights, lambda h: h["fuser.weight"].update(shape=[6, 10**8, 1, 1])),
        "do not hold",
    ),
    (
        "header-overlap",
        lambda f, o: edit_header(
            f.weights, lambda h: h["levels.0.norm.bias"].update(data_offsets=h["levels.0.conv.bias"]["data_offsets"])
        ),
        "overlap",
    ),
    ("weights-nan", lambda f, o: edit_tensors(f.weights, set_value("fuser.weight", float("nan"))), "NaN or infinite"),
    ("weights-inf", lambda f, o: edit_tensors(f.weights, set_value("fuser.weight", float("inf"))), "NaN or infinite"),
    (
        "weights-float64-1e300",
        lambda f, o: edit_tensors(f.weights, set_value("fuser.weight", 1e300, torch.float64)),
        "NaN or infinite values as torch.float32",
    ),
    (
        "running-var-negative",
        lambda f, o: edit_tensors(f.weights, set_value("levels.0.norm.running_var", -1.0)),
        "negative variances",
    ),
    (
        "weights-int32",
        lambda f, o: edit_tensors(f.weights, lambda t: t.update({"fuser.weight": t["fuser.weight"].int()})),
        "floating point",
    ),
    ("tensor-missing", lambda f, o: edit_tensors(f.weights, lambda t: t.pop("fuser.weight")), "missing tensors"),
    (
        "tensor-extra",
        lambda f, o: edit_tensors(f.weights, lambda t: t.update({"extra": torch.zeros(2)})),
        "unexpected tensors",
    ),
    (
        "fuser-other-classes",
        lambda f, o: edit_tensors(f.weights, lambda t: t.update({"fuser.weight": torch.zeros(12, 240, 1, 1)})),
        "fuser.weight has shape",
    ),
    (
        "metadata-classes",
        lambda f, o: save_file(load_file(str(f.weights)), str(f.weights), metadata={"num_classes": "1000"}),
        "trained for num_classes = 1000",
    ),
    # the auxiliary network's folder
    (
        "auxiliary-12000-channels",
        lambda f, o: edit_config(f.auxiliary_config, model_args={"channels": [12000] * 4, "num_classes": 6}),
        "asks for more than",
    ),
    (
        "auxiliary-100000-blocks",
        lambda f, o: edit_config(f.auxiliary_config, model_args={"layers": [100_000, 1, 1, 1], "num_classes": 6}),
        "model_args.layers is a list of 4 numbers summing to 100,003",  # refused by its bounds, before any budget
    ),
    ("auxiliary-secret", lambda f, o: edit_config(f.auxiliary_config, architecture="SECRET"), "not a timm model"),
    ("auxiliary-nested", lambda f, o: f.auxiliary_config.write_text(nested(100_000)), "nested too deeply"),
    ("auxiliary-not-json", lambda f, o: f.auxiliary_config.write_text("{"), "not valid JSON"),
    ("auxiliary-args-number", lambda f, o: edit_config(f.auxiliary_config, model_args=5), "model_args"),
    (
        "auxiliary-pickle-only",
        lambda f, o: f.auxiliary_weights.rename(f.auxiliary_weights.with_name("pytorch_model.bin")),
        "safetensors",
    ),
    (
        "auxiliary-weights-nan",
        lambda f, o: edit_tensors(f.auxiliary_weights, lambda t: t[first_auxiliary_weight(t)].fill_(float("nan"))),
        "probe image are NaN or infinite",
    ),
    (
        "auxiliary-weights-misshapen",
        lambda f, o: edit_tensors(
            f.auxiliary_weights, lambda t: t.update({first_auxiliary_weight(t): torch.zeros(3, 3, 3, 3)})
        ),
        "cannot build the auxiliary network",
    ),
]
# A Hub repo's config naming files outside the repo.
HUB_ONLY: list[tuple[str, Change, str]] = [
    ("hub-absolute", lambda f, o: edit_config(f.config, auxiliary=f"local-dir:{o}"), "outside its own files"),
    ("hub-climbing", lambda f, o: edit_config(f.config, auxiliary="local-dir:../../../.."), "outside its own files"),
    ("hub-home", lambda f, o: edit_config(f.config, auxiliary="local-dir:~/.ssh"), "outside its own files"),
    (
        "hub-climbing-inside",
        lambda f, o: edit_config(f.config, auxiliary="local-dir:auxiliary/../../auxiliary"),
        "outside its own files",
    ),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder (classifier/, auxiliary/, explainer/) of the shapes demo's networks, random weights."""
    return random_shapes_demo(tmp_path_factory.mktemp("good") / "shapes")


def local_case(good: Path, folder: Path) -> tuple[Layout, Path]:
    """A copy of the good explainer and its auxiliary network as local folders."""
    for part in ("explainer", "auxiliary"):
        shutil.copytree(good / part, folder / part)
    layout = Layout(
        folder / "explainer" / "config.json",
        folder / "explainer" / "model.safetensors",
        folder / "auxiliary" / "config.json",
        folder / "auxiliary" / "model.safetensors",
    )
    return layout, folder / "explainer"


def hub_files(good: Path, folder: Path) -> Layout:
    """The good explainer as a Hub repo's files: its auxiliary network in the repo's auxiliary/ folder."""
    shutil.copytree(good / "explainer", folder)
    shutil.copytree(good / "auxiliary", folder / "auxiliary")
    edit_config(folder / "config.json", auxiliary="local-dir:auxiliary")
    weights = folder / "model.safetensors"
    with safe_open(str(weights), "pt") as handle:
        metadata = handle.metadata()
    save_file(load_file(str(weights)), str(weights), metadata={**metadata, "auxiliary": "local-dir:auxiliary"})
    return Layout(
        folder / "config.json",
        folder / "model.safetensors",
        folder / "auxiliary" / "config.json",
        folder / "auxiliary" / "model.safetensors",
    )


def assert_refused(load: Callable[[], object], pattern: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        load()
    message = str(caught.value)
    assert len(message) <= MAX_MESSAGE_CHARS, len(message)
    assert re.search(pattern, message), message
    seconds, megabytes = peak_rss_mb(load)
    assert seconds < LIMIT_S and megabytes < LIMIT_MB, (seconds, megabytes)


def outside_folder(good: Path) -> Path:
    """A valid timm folder elsewhere on disk (which a Hub repo must not reach)."""
    return good / "auxiliary"


@pytest.mark.parametrize(("change", "pattern"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_hostile_local_folder_is_refused_clearly_within_bounds(
    good: Path, tmp_path: Path, change: Change, pattern: str
) -> None:
    layout, explainer = local_case(good, tmp_path)
    change(layout, outside_folder(good))
    assert_refused(lambda: PTAME.from_pretrained(explainer), pattern)


@pytest.mark.parametrize(
    ("change", "pattern"), [case[1:] for case in CASES + HUB_ONLY], ids=[case[0] for case in CASES + HUB_ONLY]
)
def test_a_hostile_hub_repo_is_refused_clearly_within_bounds(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Change, pattern: str
) -> None:
    layout = hub_files(good, tmp_path / "repo")
    change(layout, outside_folder(good))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(seed_hf_cache(tmp_path / "cache", "hostile/repo", tmp_path / "repo")))
    assert_refused(lambda: PTAME.from_pretrained("hostile/repo"), pattern)


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        ("a" * 5_000_000, "neither an existing folder nor a valid Hub repo id"),
        ("org/name\x00", "neither an existing folder nor a valid Hub repo id"),
        ("org/" + "a" * 300, "neither an existing folder nor a valid Hub repo id"),
        ("/" + "b" * 5000, "checkpoint folder /b+… \\[\\d+ more characters\\] cannot be read: File name too long"),
    ],
    ids=["5-mb-name", "nul", "long-repo", "long-path"],
)
def test_a_hostile_source_name_is_refused_clearly(source: str, pattern: str) -> None:
    assert_refused(lambda: PTAME.from_pretrained(source), pattern)


def test_messages_are_short_and_their_details_are_kept() -> None:
    error = CheckpointError("x" * 1_000_000)
    assert len(str(error)) <= MAX_MESSAGE_CHARS and str(error).endswith("more characters]")
    assert error.details.startswith("x" * 10_000) and len(error.details) <= 20_000


def test_the_good_explainer_loads_from_a_folder_and_from_a_hub_repo_with_its_own_auxiliary_folder(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub_files(good, tmp_path / "repo")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(seed_hf_cache(tmp_path / "cache", "good/repo", tmp_path / "repo")))
    pixels = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = PTAME.from_pretrained(good / "explainer")(pixels)
        assert torch.equal(PTAME.from_pretrained("good/repo")(pixels), want)


def test_half_precision_weights_are_widened_to_the_heads_float32(good: Path, tmp_path: Path) -> None:
    layout, explainer = local_case(good, tmp_path)
    edit_tensors(layout.weights, lambda t: t.update({k: v.half() for k, v in t.items() if v.is_floating_point()}))
    loaded = PTAME.from_pretrained(explainer)
    want = {k: v.half().float() for k, v in load_file(str(good / "explainer" / "model.safetensors")).items()}
    for name, value in loaded.head.state_dict().items():
        assert value.dtype == (torch.float32 if value.is_floating_point() else torch.int64)
        if value.is_floating_point():
            assert torch.equal(value, want[name]), name


APP_CASES = ["num-classes-huge", "levels-100k", "auxiliary-3mb", "auxiliary-12000-channels", "nested-100000", "std-nan"]


def test_a_good_model_keeps_serving_beside_hostile_ones_through_the_app(good: Path, tmp_path: Path) -> None:
    """Each hostile explainer, paired with the good classifier, leaves a model with the baselines
    only and a short reason on the page; the good model's P-TAME map is served as before."""
    entries = [ModelEntry.from_folder(good)]
    changes = dict((case[0], case[1]) for case in CASES)
    for name in APP_CASES:
        layout, explainer = local_case(good, tmp_path / name)
        changes[name](layout, outside_folder(good))
        entries.append(ModelEntry(name, name, entries[0].classifier, str(explainer)))
    registry = ModelRegistry(entries)
    for entry in entries:
        registry.load(entry.key)
    statuses = {status.key: status for status in registry.statuses()}
    assert not statuses["shapes"].explainer_problem
    for name in APP_CASES:
        assert statuses[name].state == "ready" and 0 < len(statuses[name].explainer_problem) <= MAX_MESSAGE_CHARS
    page = app.model_status(registry)
    assert len(page) <= (MAX_MESSAGE_CHARS + 200) * len(entries)
    handlers = app.Handlers(ExplainSession(registry), tmp_path / "downloads")
    image = str(shapes_file(tmp_path, 0))
    outputs = list(handlers.explain(image, "shapes", ["ptame", "gradcam"], progress=None))[-1]
    overlays = handlers.page.overlays
    assert outputs[overlays["ptame"]].value is not None and outputs[overlays["gradcam"]].value is not None


ONE_MODEL = '[[models]]\nkey = "demo"\ndisplay_name = "Demo"\nclassifier = "resnet18"\n'
MANIFESTS = [
    ("nested-100000", "a = " + nested(100_000), "nested too deeply|not valid TOML"),
    ("nested-table", "[" + "a." * 500_000 + "b]\n", "more than 16 dotted parts"),
    ("nested-key", ONE_MODEL + "a" + ".a" * 400_000 + " = 1\n", "more than 16 dotted parts"),
    ("2-mb", ONE_MODEL + "# " + "x" * 2_000_000 + "\n", "larger than 1048576 bytes"),
    ("5-mb-name", ONE_MODEL.replace('"Demo"', '"' + "D" * 5_000_000 + '"'), "larger than|at most 1000 characters"),
    ("long-name", ONE_MODEL.replace('"Demo"', '"' + "D" * 5_000 + '"'), "at most 1000 characters"),
    ("long-key", ONE_MODEL.replace('"demo"', '"' + "k" * 900 + '!"'), "may hold only letters"),
    ("not-a-repo", ONE_MODEL + 'explainer = "not a repo id"\n', "neither a folder"),
    ("long-explainer", ONE_MODEL + 'explainer = "' + "e" * 999 + '"\n', "neither a folder"),
    ("binary", "\x00\x01\x02", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "pattern"), [case[1:] for case in MANIFESTS], ids=[case[0] for case in MANIFESTS])
def test_a_hostile_manifest_is_a_short_problem_at_start_not_a_crash(tmp_path: Path, text: str, pattern: str) -> None:
    """The app's start (build_registry) lists the manifest as a problem and goes on."""
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(text)
    start = time.perf_counter()
    registry, problems = build_registry(manifest)
    assert time.perf_counter() - start < LIMIT_S
    assert registry.entries == {} and len(problems) == 1
    assert len(problems[0]) <= MAX_MESSAGE_CHARS + 200 and re.search(pattern, problems[0]), problems[0]
