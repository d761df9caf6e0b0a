"""The demo app: its handlers called directly, and the launched app called through gradio_client.

Offline. The app's mechanics are tested on the shapes demo's networks with seeded random weights
(``random_shapes_demo``), so they do not depend on a training run; that the maps point at the
object is tested on the trained demo of the repository (checkpoints/shapes).
"""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr
import httpx
import numpy as np
import pytest
import timm
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import sanitize_parameter_names
from PIL import Image

import app
from ptame.bench.app import free_port
from ptame.datasets.shapes import SHAPE_CLASSES, shapes_sample
from ptame.errors import ModelUnavailable
from ptame.methods import METHODS
from ptame.metrics import pointing_game
from ptame.serving.images import MAX_FILE_BYTES
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import MODEL_DIR_ENV, ModelRegistry, build_registry, model_dirs_from_env
from ptame.serving.session import ExplainSession
from tests.conftest import (
    ROOT,
    TRAINED_DEMO,
    png_claiming_size,
    random_shapes_demo,
    run_in_threads,
    save_timm_checkpoint,
    shapes_file,
    shapes_pixels,
)

ALL_THREE = ["ptame", "gradcam", "scorecam"]
POINTING_IMAGES = 12  # shapes test images checked through the served app
POINTING_HIT_RATE = {"ptame": 0.75, "gradcam": 0.75, "scorecam": 0.75}  # least share of peaks at the object
POINTING_TOLERANCE = 9  # pixels at 128: Zhang et al.'s pointing game allows 15 pixels at 224


def demo_session(folder: Path) -> ExplainSession:
    registry = ModelRegistry([ModelEntry.from_folder(folder)])
    registry.load(folder.name)
    return ExplainSession(registry)


def served(session: ExplainSession, downloads: Path) -> gr.Blocks:
    """The app of a session, launched on a free port (close it after use)."""
    demo = app.build_demo(session, downloads=downloads, cache_examples=False)
    demo.queue(**app.QUEUE_OPTIONS).launch(
        prevent_thread_lock=True, server_port=free_port(), quiet=True, **app.LAUNCH_OPTIONS
    )
    return demo


def object_mask(index: int, session: ExplainSession) -> torch.Tensor:
    """The ground-truth mask of a shapes test image, cropped as the shapes classifier crops its input."""
    mask = shapes_sample(index, "test", 128).mask
    transform = session.registry.get("shapes").backbone.preprocessing.transform()
    return transform(Image.fromarray(mask.numpy().astype(np.uint8) * 255))[0] > 0.5


EXPLAIN_OUTPUTS = (
    "predictions",
    "class_menu",
    *(f"overlay:{key}" for key in METHODS),
    "gallery",
    "gallery_caption",
    "notes",
    "maps_file",
    "status",
)  # the outputs of /explain, /explain_class and the gallery's clicks, in the API's order


def final(handlers: app.Handlers, outputs: Iterator[dict]) -> dict:
    return named(list(outputs)[-1], handlers)


def named(outputs: dict | tuple | list, handlers: app.Handlers | None = None) -> dict:
    """An event's outputs by name: "class_menu", "overlay:ptame", "maps_file", ...; a handler's
    {component: value} updates of ``handlers.page``, or the API's values in order (EXPLAIN_OUTPUTS)."""
    if handlers is None:
        assert len(outputs) == len(EXPLAIN_OUTPUTS)
        return dict(zip(EXPLAIN_OUTPUTS, outputs))
    page = handlers.page
    names = {id(c): name for name, c in vars(page).items() if isinstance(c, gr.components.Component)}
    names.update({id(c): f"overlay:{key}" for key, c in page.overlays.items()})
    assert [names[id(c)] for c in page.explain_outputs] == list(EXPLAIN_OUTPUTS)
    return {names[id(component)]: value for component, value in outputs.items()}


def overlays_of(outputs: dict) -> dict:
    """The overlay outputs by method key."""
    return {key: outputs[f"overlay:{key}"] for key in METHODS}


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_shapes_demo(tmp_path_factory.mktemp("models") / "shapes")


@pytest.fixture(scope="module")
def session(demo_folder: Path) -> ExplainSession:
    return demo_session(demo_folder)


@pytest.fixture(scope="module")
def handlers(session: ExplainSession, tmp_path_factory: pytest.TempPathFactory) -> app.Handlers:
    return app.Handlers(session, tmp_path_factory.mktemp("downloads"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.fixture(scope="module")
def client(session: ExplainSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    demo = served(session, tmp_path_factory.mktemp("served"))
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_example_images_are_the_shapes_test_images() -> None:
    files = sorted(app.EXAMPLES.glob("shapes-test-*.png"))
    assert len(files) == len(SHAPE_CLASSES)
    for path in files:
        index, name = path.stem.split("-")[2:]
        sample = shapes_sample(int(index), "test", 128)
        assert SHAPE_CLASSES[sample.label] == name
        np.testing.assert_array_equal(np.asarray(Image.open(path)), shapes_pixels(int(index)))


def test_explain_shows_fast_maps_first_and_streams_score_cam(
    handlers: app.Handlers, session: ExplainSession, images: Path
) -> None:
    path = shapes_file(images, 200)
    steps = [named(step, handlers) for step in handlers.explain(str(path), "shapes", ALL_THREE)]
    first, last = steps[0], steps[-1]
    overlays = overlays_of(first)
    assert overlays["ptame"].value is not None and overlays["gradcam"].value is not None
    assert overlays["scorecam"].value is None and "computing, about" in overlays["scorecam"].label
    assert overlays["rise"].visible is False and first["maps_file"] is None
    done = overlays_of(last)
    for method in ALL_THREE:
        assert done[method].value is not None and done[method].label.startswith(METHODS[method].name)
    with np.load(last["maps_file"]) as saved:
        assert {"ptame", "gradcam", "scorecam", "image"} <= set(saved.files)
        assert int(saved["class_index"]) == last["class_menu"].value
    analysis = session.cached_analysis(session.read(path), "shapes")
    assert last["class_menu"].value == analysis.top(1)[0]
    predictions = last["predictions"]
    assert list(predictions.values()) == sorted(predictions.values(), reverse=True)
    assert len(predictions) == app.TOP_CLASSES


def test_switching_class_reuses_the_one_p_tame_pass(
    handlers: app.Handlers, session: ExplainSession, images: Path
) -> None:
    path = str(shapes_file(images, 201))
    first = final(handlers, handlers.explain(path, "shapes", ["ptame"]))
    model = session.registry.get("shapes")
    passes = []
    hooks = [m.register_forward_hook(lambda *_: passes.append(1)) for m in (model.explainer, model.backbone.model)]
    try:
        other = (first["class_menu"].value + 1) % len(SHAPE_CLASSES)
        switched = final(handlers, handlers.explain_class(path, "shapes", other, ["ptame"]))
    finally:
        for hook in hooks:
            hook.remove()
    assert passes == []
    assert switched["class_menu"].value == other
    with np.load(first["maps_file"]) as before, np.load(switched["maps_file"]) as after:
        assert not np.allclose(before["ptame"], after["ptame"])


def test_gallery_shows_every_top_class_from_the_one_pass(
    handlers: app.Handlers, session: ExplainSession, images: Path
) -> None:
    path = str(shapes_file(images, 210))
    model = session.registry.get("shapes")
    passes = []
    hook = model.explainer.register_forward_hook(lambda *_: passes.append(1))
    try:
        result = final(handlers, handlers.explain(path, "shapes", ["gradcam"], 0.5, "jet", 4))
    finally:
        hook.remove()
    assert passes == [1]  # one explainer pass maps every class, also those only the gallery shows
    analysis = session.cached_analysis(session.read(path), "shapes")
    ranked = analysis.top(4)
    items = result["gallery"].value
    assert len(items) == 4 and result["gallery"].visible
    names = [SHAPE_CLASSES[i] for i in ranked]
    assert [item["caption"] for item in items] == [
        f"{name} · {analysis.probabilities[i]:.1%}" for name, i in zip(names, ranked)
    ]
    caption = result["gallery_caption"]
    assert "these 4 maps in" in caption and "Grad-CAM would take about" in caption
    for class_index, item in zip(ranked, items):  # each gallery map is that class's P-TAME overlay
        alone = final(handlers, handlers.explain_class(path, "shapes", class_index, ["ptame"], 0.5, "jet", 4))
        np.testing.assert_array_equal(
            np.asarray(Image.open(item["image"]["path"])), np.asarray(Image.open(alone["overlay:ptame"].value["path"]))
        )
    first, second = (Image.open(item["image"]["path"]) for item in items[:2])
    assert not np.array_equal(np.asarray(first), np.asarray(second))  # the classes' maps differ


def test_clicking_a_gallery_map_explains_its_class(
    handlers: app.Handlers, session: ExplainSession, images: Path
) -> None:
    path = str(shapes_file(images, 211))
    final(handlers, handlers.explain(path, "shapes", ["ptame", "gradcam"]))
    ranked = session.cached_analysis(session.read(path), "shapes").top(app.GALLERY_CLASSES)
    click = gr.SelectData(None, {"index": 2, "value": None})
    result = final(handlers, handlers.explain_gallery_class(path, "shapes", ["ptame", "gradcam"], 0.5, "jet", 5, click))
    assert result["class_menu"].value == ranked[2]
    with np.load(result["maps_file"]) as saved:
        assert int(saved["class_index"]) == ranked[2] and {"ptame", "gradcam"} <= set(saved.files)


def test_a_photo_with_the_shapes_model_comes_with_a_note(demo_folder: Path, tmp_path: Path) -> None:
    entry = dataclasses.replace(ModelEntry.from_folder(demo_folder), domain="six synthetic shapes", image_size=128)
    registry = ModelRegistry([entry])
    registry.load(entry.key)
    handlers = app.Handlers(ExplainSession(registry), tmp_path)
    photo = str(app.EXAMPLES / "photo-chelsea.jpg")
    result = final(handlers, handlers.explain(photo, "shapes", ["ptame"]))
    assert result["notes"].visible and "knows only" in result["notes"].value
    shapes = final(handlers, handlers.explain(str(app.EXAMPLES / "shapes-test-3-star.png"), "shapes", ["ptame"]))
    assert not shapes["notes"].visible


@pytest.fixture(scope="module")
def photo_models(tmp_path_factory: pytest.TempPathFactory) -> list[ModelEntry]:
    """Two classifiers with ImageNet's 1000 classes (timm's test_resnet, seeded random weights)."""
    entries = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp("photo-models") / f"imagenet-{seed}"
        save_timm_checkpoint(timm.create_model("test_resnet", num_classes=1000), folder)
        entries.append(ModelEntry(f"imagenet-{seed}", f"ImageNet {seed}", f"local-dir:{folder}"))
    return entries


@pytest.fixture
def examples(tmp_path: Path) -> Path:
    """An examples folder: two of the repository's photos, the second under a later name, and a shapes image."""
    folder = tmp_path / "examples"
    folder.mkdir()
    shutil.copy(app.EXAMPLES / "photo-coffee.jpg", folder / "photo-a-coffee.jpg")
    shutil.copy(app.EXAMPLES / "photo-chelsea.jpg", folder / "photo-b-cat.jpg")
    shutil.copy(app.EXAMPLES / "shapes-test-3-star.png", folder / "shapes-test-3-star.png")
    return folder


def test_the_examples_are_every_photo_and_shapes_image_of_the_folder(examples: Path) -> None:
    (examples / "photo-cat-and-coffee.jpg").write_bytes((examples / "photo-a-coffee.jpg").read_bytes())
    (examples / "notes.txt").write_text("not an example")
    shapes, photos = app.example_files(examples)
    assert [path.name for path in photos] == ["photo-a-coffee.jpg", "photo-b-cat.jpg", "photo-cat-and-coffee.jpg"]
    assert [path.name for path in shapes] == ["shapes-test-3-star.png"]


def test_a_clicked_photo_is_shown_and_explained_with_an_imagenet_model(
    demo_folder: Path, photo_models: list[ModelEntry], examples: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry([ModelEntry.from_folder(demo_folder), *photo_models])
    for key in registry.entries:
        registry.load(key)
    handlers = app.Handlers(ExplainSession(registry), tmp_path / "downloads", examples=examples)
    page = handlers.page
    steps = list(handlers.explain_photo(1, "shapes", ["gradcam", "scorecam"]))
    first, last = steps[0], named(steps[-1], handlers)
    assert first[page.image] == str(examples / "photo-b-cat.jpg")
    assert first[page.model]["value"] == "imagenet-0"  # the first ImageNet model, the shapes demo knows no photos
    assert first[page.status] != app.WELCOME
    assert last["overlay:gradcam"].value is not None and last["overlay:scorecam"].value is not None
    assert last["status"].startswith("Explained") and not last["notes"].visible
    alone = final(handlers, handlers.explain(str(examples / "photo-b-cat.jpg"), "imagenet-0", ["gradcam"]))
    with np.load(last["maps_file"]) as clicked, np.load(alone["maps_file"]) as explained:
        np.testing.assert_array_equal(clicked["gradcam"], explained["gradcam"])
    kept = list(handlers.explain_photo(0, "imagenet-1", ["gradcam"]))
    assert kept[0][page.model]["value"] == "imagenet-1"  # an ImageNet model already selected stays
    assert kept[0][page.image] == str(examples / "photo-a-coffee.jpg")
    with pytest.raises(gr.Error, match="no photo example"):
        list(handlers.explain_photo(2, "shapes", ["gradcam"]))


def test_a_clicked_photo_without_an_imagenet_model_says_so(demo_folder: Path, examples: Path, tmp_path: Path) -> None:
    entry = dataclasses.replace(ModelEntry.from_folder(demo_folder), domain="six synthetic shapes", image_size=128)
    registry = ModelRegistry([entry])
    registry.load(entry.key)
    handlers = app.Handlers(ExplainSession(registry), tmp_path / "downloads", examples=examples)
    steps = list(handlers.explain_photo(0, "shapes", ["ptame"]))
    assert steps[0][handlers.page.model]["value"] == "shapes"
    last = named(steps[-1], handlers)
    assert last["overlay:ptame"].value is not None and last["status"].startswith("Explained")
    assert app.PHOTOS_WITHOUT_MODEL in last["notes"].value and "knows only" in last["notes"].value


def test_the_command_line_adds_classifiers_with_or_without_explainers(tmp_path: Path) -> None:
    args = app.parse_args(["--classifier", "resnet50", "--explainer", "org/ptame-r50@abc", "--classifier", "vgg16"])
    entries = app.classifier_entries(args.classifiers)
    assert [(e.classifier, e.explainer, e.explainer_revision) for e in entries] == [
        ("resnet50", "org/ptame-r50", "abc"),
        ("vgg16", None, None),
    ]
    with pytest.raises(SystemExit):
        app.parse_args(["--explainer", "org/x"])  # no --classifier before it
    with pytest.raises(SystemExit):
        app.parse_args(["--classifier", "vgg16", "--explainer", "a/b", "--explainer", "c/d"])


def test_the_command_line_serves_as_gradio_launches() -> None:
    given = app.launch_options(app.parse_args(["--port", "7861", "--host", "0.0.0.0", "--share"]))
    assert (given["server_port"], given["server_name"], given["share"]) == (7861, "0.0.0.0", True)
    unset = app.launch_options(app.parse_args([]))  # Gradio's defaults: $GRADIO_SERVER_PORT, ...
    assert (unset["server_port"], unset["server_name"], unset["share"]) == (None, None, None)
    assert unset["max_file_size"] == MAX_FILE_BYTES
    for port in ("0", "65536", "http"):
        with pytest.raises(SystemExit):
            app.parse_args(["--port", port])


def test_help_answers_before_torch_and_gradio_are_imported(tmp_path: Path) -> None:
    """`python app.py --help` with torch and gradio replaced by modules that fail on import."""
    for name in ("torch", "gradio"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} imported before --help')\n")
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    command = [sys.executable, str(ROOT / "app.py"), "--port", "7861", "--help"]
    helped = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "--port" in helped.stdout and "--host" in helped.stdout and "--share" in helped.stdout
    served = subprocess.run(command[:-1], env=environment, capture_output=True, text=True, timeout=60)
    assert "imported before --help" in served.stderr  # the stand-ins do stop a real start


def test_the_command_line_gives_a_classifier_its_target_layer() -> None:
    args = app.parse_args(
        ["--classifier", "resnet50", "--target-layer", "layer3", "--explainer", "org/x", "--classifier", "vgg16"]
    )
    entries = app.classifier_entries(args.classifiers)
    assert [(e.classifier, e.explainer, e.target_layer) for e in entries] == [
        ("resnet50", "org/x", "layer3"),
        ("vgg16", None, None),
    ]
    with pytest.raises(SystemExit):
        app.parse_args(["--target-layer", "layer3"])  # no --classifier before it
    with pytest.raises(SystemExit):
        app.parse_args(["--classifier", "vgg16", "--target-layer", "a", "--target-layer", "b"])


def test_a_classifier_only_model_gives_the_baselines_and_says_how_to_get_p_tame(
    demo_folder: Path, images: Path, tmp_path: Path
) -> None:
    only = tmp_path / "classifier-only"
    shutil.copytree(demo_folder / "classifier", only / "classifier")  # no explainer/ beside it
    entry = ModelEntry(
        "classifier-only", "classifier-only", f"local-dir:{only / 'classifier'}", str(only / "explainer")
    )
    registry = ModelRegistry([entry], explainer_retry_s=3600)  # its explainer folder is not there yet
    registry.load("classifier-only")
    assert app.model_choices(registry)[0] == [(f"classifier-only {app.WITHOUT_EXPLAINER}", "classifier-only")]
    assert "ready with the baselines only" in app.model_status(registry)
    demo = served(ExplainSession(registry), tmp_path / "downloads")
    path = handle_file(shapes_file(images, 212))
    try:
        client = Client(demo.local_url, verbose=False)
        result = named(client.predict(path, "classifier-only", ALL_THREE, api_name="/explain"))
        shutil.copytree(demo_folder / "explainer", only / "explainer")
        shutil.copytree(demo_folder / "auxiliary", only / "auxiliary")
        assert registry.retry_explainer("classifier-only")  # the explainer arrives: no restart
        later = named(client.predict(path, "classifier-only", ALL_THREE, api_name="/explain"))
    finally:
        demo.close()
    assert result["overlay:ptame"]["value"] is None and "no explainer" in result["overlay:ptame"]["label"]
    assert result["overlay:gradcam"]["value"] is not None and result["overlay:scorecam"]["value"] is not None
    assert result["notes"]["visible"] and "python -m train explainer --classifier" in result["notes"]["value"]
    assert not result["gallery"]["visible"]
    with np.load(result["maps_file"]) as saved:
        assert {"gradcam", "scorecam"} <= set(saved.files) and "ptame" not in saved.files
    assert later["overlay:ptame"]["value"] is not None and not later["notes"]["visible"]
    assert app.model_choices(registry)[0] == [("classifier-only", "classifier-only")]


def test_reblend_redraws_cached_maps_only(handlers: app.Handlers, session: ExplainSession, images: Path) -> None:
    path = str(shapes_file(images, 202))
    result = final(handlers, handlers.explain(path, "shapes", ["ptame", "gradcam"]))
    index = result["class_menu"].value
    plain = handlers.reblend(path, "shapes", index, ["ptame", "gradcam", "scorecam"], 0.0, "turbo")
    picture = session.cached_analysis(session.read(path), "shapes").picture
    by_method = {key: plain[overlay] for key, overlay in handlers.page.overlays.items()}
    np.testing.assert_array_equal(by_method["ptame"], picture)
    assert by_method["scorecam"] == gr.skip()  # never computed: left as it is
    skipped = handlers.reblend(None, "shapes", index, ["ptame"], 0.5, "jet")
    assert list(skipped) == [*handlers.page.overlays.values(), handlers.page.gallery]
    assert list(skipped.values()) == [gr.skip()] * (len(METHODS) + 1)


def test_curves_give_both_plots_and_areas(handlers: app.Handlers, images: Path) -> None:
    path = str(shapes_file(images, 203))
    index = final(handlers, handlers.explain(path, "shapes", ["ptame", "gradcam"]))["class_menu"].value
    curves = handlers.curves(path, "shapes", index, ["ptame", "gradcam"])
    page = handlers.page
    deletion, insertion, table = curves[page.deletion_plot], curves[page.insertion_plot], curves[page.auc_table]
    assert set(deletion.method) == set(insertion.method) == {"P-TAME", "Grad-CAM"}
    assert deletion.fraction.min() == 0.0 and deletion.fraction.max() == 1.0
    assert "| P-TAME |" in table and "| Grad-CAM |" in table


def test_conversion_notes_are_warnings(handlers: app.Handlers, images: Path) -> None:
    path = images / "half-transparent.png"
    rgba = np.asarray(Image.open(shapes_file(images, 204)).convert("RGBA")).copy()
    rgba[:, :20, 3] = 0
    Image.fromarray(rgba).save(path)
    with pytest.warns(UserWarning, match="transparent pixels"):
        final(handlers, handlers.explain(str(path), "shapes", ["ptame"]))


@pytest.mark.parametrize(
    ("methods", "model", "message"),
    [([], "shapes", "at least one method"), (["lime"], "shapes", "Unknown methods"), (["ptame"], "vgg99", "unknown")],
)
def test_handler_rejects_bad_choices(handlers: app.Handlers, images: Path, methods, model, message) -> None:
    with pytest.raises(gr.Error, match=message):
        final(handlers, handlers.explain(str(shapes_file(images, 205)), model, methods))


@pytest.mark.skipif(
    not (TRAINED_DEMO / "explainer").is_dir(),
    reason="the trained shapes demo is not committed (python -m train shapes --out checkpoints/shapes)",
)
def test_maps_of_the_trained_demo_point_at_the_objects(images: Path, tmp_path: Path) -> None:
    registry, problems = build_registry()
    assert problems == []
    registry.load("shapes")
    session = ExplainSession(registry)
    demo = served(session, tmp_path)
    try:
        client = Client(demo.local_url, verbose=False)
        maps = {method: [] for method in ALL_THREE}
        masks = []
        for index in range(300, 300 + POINTING_IMAGES):
            path = handle_file(shapes_file(images, index))
            result = named(client.predict(path, "shapes", ALL_THREE, api_name="/explain"))
            with np.load(result["maps_file"]) as saved:
                for method in ALL_THREE:
                    maps[method].append(torch.from_numpy(saved[method]))
            masks.append(object_mask(index, session))
    finally:
        demo.close()
    for method in ALL_THREE:
        hits = pointing_game(torch.stack(maps[method]), torch.stack(masks), POINTING_TOLERANCE)
        assert hits.float().mean() >= POINTING_HIT_RATE[method], f"{method}: {hits.tolist()}"


def bad_files(folder: Path) -> dict[str, tuple[Path | None, str]]:
    """name -> (file or None for an empty submit, expected message)."""
    text = folder / "notes.txt"
    text.write_text("not an image")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    whole = shapes_file(folder, 206).read_bytes()
    cut = folder / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    one = folder / "one.png"
    Image.new("RGB", (1, 1)).save(one)
    huge = folder / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)
    oversized = folder / "oversized.png"
    oversized.write_bytes(whole + bytes(MAX_FILE_BYTES))
    return {
        "not an image": (text, "is not an image"),
        "empty file": (empty, "is empty"),
        "truncated": (cut, "truncated or damaged"),
        "1x1": (one, "1 x 1 pixels"),
        "12000x12000": (huge, "12000 x 12000 pixels"),
        "decompression bomb": (png_claiming_size(folder / "bomb.png", 40000, 40000), "refused"),
        "over the upload limit": (oversized, "exceeds the maximum file size"),
        "empty submit": (None, "No image was given"),
    }


def test_bad_inputs_get_clear_errors_and_the_server_keeps_serving(client: Client, images: Path) -> None:
    for name, (path, message) in bad_files(images).items():
        with pytest.raises(Exception, match=message) as raised:
            client.predict(handle_file(path) if path else None, "shapes", ["ptame"], api_name="/explain")
        assert isinstance(raised.value, (AppError, ValueError)), name
    result = named(client.predict(handle_file(shapes_file(images, 207)), "shapes", ["ptame"], api_name="/explain"))
    assert result["overlay:ptame"]["value"] is not None


def test_the_server_takes_uploads_up_to_the_limit_and_refuses_one_byte_more(client: Client) -> None:
    """At the server itself (gradio_client refuses an oversized file before sending it, so the
    "over the upload limit" case above never reaches the server)."""
    upload = client.src.rstrip("/") + "/gradio_api/upload"
    at_limit = httpx.post(upload, files={"files": ("at-limit.png", bytes(MAX_FILE_BYTES), "image/png")}, timeout=120)
    assert at_limit.status_code == 200, at_limit.text
    stored = Path(at_limit.json()[0])
    assert stored.stat().st_size == MAX_FILE_BYTES
    stored.unlink()
    over = httpx.post(upload, files={"files": ("over.png", bytes(MAX_FILE_BYTES + 1), "image/png")}, timeout=120)
    assert over.status_code == 413 and "maximum allowed size" in over.text, over.text


def odd_images(folder: Path) -> dict[str, Path]:
    """Images in modes and formats the models do not take directly, all of a shapes image."""
    rgb = Image.open(shapes_file(folder, 208))
    paths = {}
    for name, image, options in [
        ("grayscale.png", rgb.convert("L"), {}),
        ("rgba.png", rgb.convert("RGBA"), {}),
        ("deep.png", Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257), {}),
        ("cmyk.jpg", rgb.convert("CMYK"), {}),
        ("palette.png", rgb.convert("P"), {}),
        ("animated.gif", rgb, {"save_all": True, "append_images": [rgb.rotate(90)]}),
    ]:
        image.save(folder / name, **options)
        paths[name] = folder / name
    return paths


def test_odd_image_modes_are_explained(client: Client, images: Path) -> None:
    for name, path in odd_images(images).items():
        result = named(client.predict(handle_file(path), "shapes", ["ptame", "gradcam"], api_name="/explain"))
        with np.load(result["maps_file"]) as saved:
            assert saved["ptame"].shape == saved["image"].shape[:2], name
            assert np.isfinite(saved["gradcam"]).all(), name


def test_class_endpoint_and_reblend_through_the_client(client: Client, images: Path) -> None:
    path = handle_file(shapes_file(images, 209))
    first = named(client.predict(path, "shapes", ["ptame"], api_name="/explain"))
    other = (first["class_menu"]["value"] + 1) % len(SHAPE_CLASSES)
    switched = named(client.predict(path, "shapes", other, ["ptame"], api_name="/explain_class"))
    assert switched["class_menu"]["value"] == other and switched["maps_file"] != first["maps_file"]
    with pytest.raises(AppError, match="outside"):
        client.predict(path, "shapes", 99, ["ptame"], api_name="/explain_class")


PUBLIC_ENDPOINTS = {"/explain", "/explain_class", "/reblend", "/curves", "/models"}
GRADIO_FALLBACK_NAME = re.compile(r"^(value|parameter)_\d+$")  # what Gradio names an unlabelled component


def test_every_endpoint_names_its_inputs_and_outputs(client: Client) -> None:
    """gradio_client's view_api(): each parameter and return has its own name (no value_N, none
    twice in an endpoint), and every type offers a choice (no Literal[] of nothing)."""
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == PUBLIC_ENDPOINTS
    for endpoint, info in endpoints.items():
        for part, key in (("parameters", "parameter_name"), ("returns", "label")):
            names = [sanitize_parameter_names(item.get(key) or item["label"]) for item in info[part]]
            assert all(names) and not any(GRADIO_FALLBACK_NAME.match(name) for name in names), (endpoint, names)
            assert len(set(names)) == len(names), (endpoint, names)
            types = [item["python_type"]["type"] for item in info[part]]
            assert not any("Literal[]" in python_type for python_type in types), (endpoint, types)
    overlays = [item["label"] for item in endpoints["/explain"]["returns"][2 : 2 + len(METHODS)]]
    assert [sanitize_parameter_names(label) for label in overlays] == [
        "ptame",
        "gradcam",
        "gradcam_plus_plus",
        "scorecam",
        "ablationcam",
        "rise",
    ]
    class_index = next(
        item for item in endpoints["/explain_class"]["parameters"] if item["parameter_name"] == "class_index"
    )
    assert class_index["python_type"]["type"] == "int"
    assert [item["label"] for item in endpoints["/models"]["returns"]] == ["Models"]


def test_models_endpoint_lists_keys_names_states_and_classes(client: Client) -> None:
    (shapes,) = client.predict(api_name="/models")
    assert shapes == {
        "key": "shapes",
        "name": "shapes",
        "state": "ready",
        "p_tame": True,
        "reason": "",
        "classes": list(SHAPE_CLASSES),
    }


def test_a_new_page_shows_each_model_as_it_is_now(session: ExplainSession, tmp_path: Path) -> None:
    """The page a browser gets (Gradio's /config): the model menu and the Models panel as the
    models are when it opens, not as they were at launch."""
    release = threading.Event()
    shapes = session.registry.get("shapes")

    def waiting_loader(entry: ModelEntry, device: str):
        release.wait(timeout=30)
        if entry.key == "gone":
            raise OSError("no such folder")
        return shapes

    gone = ModelEntry("gone", "Gone", "local-dir:/nowhere")
    registry = ModelRegistry([shapes.entry, gone], loader=waiting_loader)
    demo = served(ExplainSession(registry), tmp_path)
    try:
        loader = registry.load_in_background()
        at_start = first_page(demo)
        release.set()
        loader.join(timeout=30)
        later = first_page(demo)
    finally:
        demo.close()
    assert at_start["menu"] == [
        [f"{shapes.entry.display_name} {app.LOADING}", "shapes"],
        [f"Gone {app.LOADING}", "gone"],
    ]
    assert at_start["timer"]
    assert later["menu"] == [[shapes.entry.display_name, "shapes"]] and later["value"] == "shapes"
    assert (
        "(`shapes`): ready" in later["models"] and "**Gone** (`gone`): unavailable: no such folder" in later["models"]
    )
    assert not later["timer"]


def first_page(demo: gr.Blocks) -> dict:
    """What Gradio sends a new page: the model menu's choices and value, the Models panel's text,
    and whether the timer polls."""
    components = httpx.get(demo.local_url + "config", timeout=30).json()["components"]
    props = {
        (c["props"].get("label"), c["type"]): c["props"]
        for c in components
        if c["type"] in {"dropdown", "markdown", "timer"}
    }
    menu = props["Model", "dropdown"]
    timer = next(c["props"] for c in components if c["type"] == "timer")
    return {
        "menu": menu["choices"],
        "value": menu["value"],
        "models": props["Models", "markdown"]["value"],
        "timer": timer["active"],
    }


def test_model_status_and_folders_from_the_environment(
    session: ExplainSession, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = app.model_status(session.registry, ["the model folder X cannot be used: no explainer/"])
    assert "**shapes** (`shapes`): ready" in text and "no explainer/" in text
    monkeypatch.setenv(MODEL_DIR_ENV, f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    assert model_dirs_from_env() == [tmp_path / "a", tmp_path / "b"]


def test_demo_builds_and_says_why_when_no_model_loads(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        '[[models]]\nkey = "shapes"\ndisplay_name = "Shapes"\n'
        'classifier = "local-dir:./gone/classifier"\nexplainer = "./gone/explainer"\n'
    )
    registry, problems = build_registry(manifest)
    with pytest.raises(ModelUnavailable, match="Shapes"):
        registry.load("shapes")
    demo = app.build_demo(ExplainSession(registry), problems, downloads=tmp_path, cache_examples=False)
    assert isinstance(demo, gr.Blocks)
    assert app.model_choices(registry) == ([], None)
    assert "**Shapes** (`shapes`): unavailable: " in app.model_status(registry)


def test_model_menu_follows_background_loading(session: ExplainSession) -> None:
    release = threading.Event()
    shapes = session.registry.get("shapes")

    def waiting_loader(entry, device):
        release.wait(timeout=30)
        return shapes

    registry = ModelRegistry([shapes.entry], loader=waiting_loader)
    handlers = app.Handlers(ExplainSession(registry), Path("."))
    loader = registry.load_in_background()
    page = handlers.page
    menu, status, timer = (handlers.refresh_models(None)[c] for c in (page.model, page.models_status, page.timer))
    assert menu.choices == [(f"{shapes.entry.display_name} {app.LOADING}", "shapes")] and timer.active
    assert "loading" in status
    release.set()
    loader.join(timeout=30)
    menu, status, timer = (handlers.refresh_models("shapes")[c] for c in (page.model, page.models_status, page.timer))
    assert menu.choices == [(shapes.entry.display_name, "shapes")] and menu.value == "shapes"
    assert not timer.active and "ready" in status


@pytest.mark.slow
def test_8_concurrent_clients_get_the_serial_maps(client: Client, images: Path, demo_folder: Path) -> None:
    """8 clients x 5 requests over 16 images: first computations, and requests for maps that another
    client is computing or has cached; every answer equals a serial run's."""
    paths = [shapes_file(images, 400 + i) for i in range(16)]
    requests = {(c, k): (5 * c + k) % len(paths) for c in range(8) for k in range(5)}
    serial_session = demo_session(demo_folder)
    expected = []
    for path in paths:
        image = serial_session.read(path)
        index = serial_session.analyse(image, "shapes").top(1)[0]
        expected.append({m: serial_session.explain(image, "shapes", index, m).saliency for m in ALL_THREE})
    results: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    errors = []

    def one_client(number: int) -> None:
        own = Client(client.src, verbose=False)
        for k in range(5):
            try:
                path = handle_file(paths[requests[number, k]])
                result = named(own.predict(path, "shapes", ALL_THREE, api_name="/explain"))
                with np.load(result["maps_file"]) as saved:
                    results[number, k] = {m: saved[m] for m in ALL_THREE}
            except Exception as error:  # any failure: collected and reported below
                errors.append((number, k, error))

    run_in_threads(one_client, 8)
    assert errors == [] and sorted(results) == sorted(requests)
    for request, maps in results.items():
        for method in ALL_THREE:
            np.testing.assert_array_equal(maps[method], expected[requests[request]][method], err_msg=f"{request}")
