"""The app's library side: model registry, explanation session and cache, exports."""

import dataclasses
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ptame import PTAME, Backbone, CheckpointError, Preprocessing
from ptame.errors import ModelUnavailable, NotAnImage
from ptame.serving.cache import LRUCache
from ptame.serving.captions import display_class_names, format_seconds, gallery_caption
from ptame.serving.export import Downloads, figure, prune_folder, save_maps
from ptame.serving.lanes import threads_per_lane
from ptame.serving.loader import LoadedModel
from ptame.serving.manifest import ModelEntry
from ptame.serving.models import ModelRegistry, ModelStatus, build_registry
from ptame.serving.session import ExplainSession
from tests.conftest import noise, randomise_head, run_in_threads

CLASSES = ["circle", "square", "triangle", "star", "cross", "crane"]


def tiny_model(key: str = "tiny") -> LoadedModel:
    """A random-initialised 6-class classifier (64x64 input) and a P-TAME explainer for it."""
    torch.manual_seed(0)
    classifier = timm.create_model("test_resnet", num_classes=len(CLASSES)).eval().requires_grad_(False)
    backbone = Backbone(
        name="test_resnet",
        model=classifier,
        preprocessing=Preprocessing(resize=64, crop=64),
        target_layer=classifier.layer4,
        reshape_transform=None,
        class_names=list(CLASSES),
    )
    explainer = PTAME(num_classes=len(CLASSES), auxiliary="test_resnet", pretrained_auxiliary=False)
    entry = ModelEntry(key, f"Tiny {key}", "test_resnet", "unused", None)
    return LoadedModel(entry=entry, backbone=backbone, explainer=randomise_head(explainer).eval())


def registry_of(*models: LoadedModel) -> ModelRegistry:
    by_key = {model.entry.key: model for model in models}
    return ModelRegistry([model.entry for model in models], loader=lambda entry, device: by_key[entry.key])


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return tiny_model()


@pytest.fixture
def session(model: LoadedModel) -> ExplainSession:
    registry = registry_of(model)
    registry.load("tiny")
    return ExplainSession(registry)


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(noise(80, 100)).save(path)
    return path


def entry(key: str) -> ModelEntry:
    return ModelEntry(key, key.title(), "resnet18", "unused", None)


def test_registry_loads_each_model_once_across_threads(model: LoadedModel) -> None:
    calls = []

    def slow_loader(entry: ModelEntry, device: str) -> LoadedModel:
        calls.append(entry.key)
        time.sleep(0.2)
        return model

    registry = ModelRegistry([entry("a")], loader=slow_loader)
    results = []
    run_in_threads(lambda _: results.append(registry.load("a")), 4)
    assert calls == ["a"] and len(results) == 4 and all(r is model for r in results)
    assert registry.ready_keys() == ["a"] and registry.get("a") is model
    assert registry.statuses() == [ModelStatus("a", "A", "ready")]  # the registry's key, nothing missing


def test_a_ready_model_without_explainer_says_so(model: LoadedModel) -> None:
    without = dataclasses.replace(model, explainer=None)
    registry = ModelRegistry([entry("a")], loader=lambda entry, device: without)
    assert registry.load("a") is without
    assert registry.statuses() == [ModelStatus("a", "A", "ready", explainer_problem="its explainer is not loaded")]
    assert registry.explainers_pending()  # its entry names an explainer


def test_registry_records_why_a_model_is_unavailable() -> None:
    def failing_loader(entry: ModelEntry, device: str) -> LoadedModel:
        raise CheckpointError("the Hub cannot be reached (offline)")

    registry = ModelRegistry([entry("a"), entry("b")], loader=failing_loader)
    assert registry.loading()  # both waiting
    with pytest.raises(ModelUnavailable, match="still loading"):
        registry.get("a")
    registry.load_in_background().join(timeout=10)
    states = {s.key: (s.state, s.reason) for s in registry.statuses()}
    assert states == {k: ("unavailable", "the Hub cannot be reached (offline)") for k in "ab"}
    with pytest.raises(ModelUnavailable, match="A is unavailable: the Hub cannot be reached"):
        registry.get("a")
    with pytest.raises(ModelUnavailable, match="unknown model 'c'"):
        registry.load("c")
    assert not registry.loading()


def test_registry_rejects_repeated_keys() -> None:
    with pytest.raises(ValueError, match="repeated"):
        ModelRegistry([entry("a"), entry("a")])


def test_build_registry_reports_unreadable_sources(tmp_path: Path) -> None:
    bad_manifest = tmp_path / "manifest.toml"
    bad_manifest.write_text("this is = = not toml")
    registry, problems = build_registry(bad_manifest, [tmp_path / "missing-folder"])
    assert list(registry.entries) == []
    assert len(problems) == 2
    assert "manifest" in problems[0] and "missing-folder" in problems[1]


def test_analysis_maps_every_class_in_one_pass(session: ExplainSession, model: LoadedModel, image_file: Path) -> None:
    image = session.read(image_file)
    passes = []
    hook = model.explainer.head.register_forward_hook(lambda *_: passes.append(1))
    try:
        analysis = session.analyse(image, "tiny")
        assert session.analyse(image, "tiny") is analysis
        maps = [session.explain(image, "tiny", c, "ptame").saliency for c in range(len(CLASSES))]
    finally:
        hook.remove()
    assert len(passes) == 1
    assert analysis.pixels.shape == (1, 3, 64, 64) and analysis.picture.shape == (64, 64, 3)
    np.testing.assert_allclose(analysis.probabilities.sum(), 1.0, rtol=1e-5)
    for class_index, saliency in enumerate(maps):
        with torch.no_grad():
            expected = model.explainer.explain(analysis.pixels, [class_index])[0].numpy()
        np.testing.assert_allclose(saliency, expected, atol=1e-5)
    assert not np.allclose(maps[0], maps[1])
    assert analysis.top(3) == list(np.argsort(-analysis.probabilities)[:3])


def test_baseline_maps_are_cached_per_class_and_method(session: ExplainSession, image_file: Path) -> None:
    image = session.read(image_file)
    first = session.explain(image, "tiny", 2, "gradcam")
    assert first.saliency.shape == (64, 64) and 0.0 <= first.saliency.min() <= first.saliency.max() <= 1.0
    assert session.explain(image, "tiny", 2, "gradcam") is first
    assert session.cached(image, "tiny", 2, "gradcam") is first
    assert session.cached(image, "tiny", 3, "gradcam") is None
    assert session.cached(image, "tiny", 3, "ptame") is not None  # every class is known after one pass
    assert session.cached(image, "tiny", len(CLASSES), "ptame") is None  # no such class
    assert session.expected_seconds(image, "tiny", "gradcam") == first.seconds


def test_score_cam_reports_progress_and_timing(session: ExplainSession, image_file: Path) -> None:
    image = session.read(image_file)
    estimate = session.expected_seconds(image, "tiny", "scorecam")
    analysis = session.analyse(image, "tiny")
    assert analysis.cam_channels == 96 and estimate == pytest.approx(97 * analysis.predict_seconds)
    reports = []
    explanation = session.explain(image, "tiny", 1, "scorecam", progress=lambda d, t: reports.append((d, t)))
    assert reports and reports[-1][0] == reports[-1][1] and reports[-1][1] > 0
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert session.expected_seconds(image, "tiny", "scorecam") == explanation.seconds > 0


def test_bad_requests_raise_clear_errors(session: ExplainSession, image_file: Path, tmp_path: Path) -> None:
    image = session.read(image_file)
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        session.explain(image, "tiny", 0, "lime")
    with pytest.raises(ValueError, match="class index 6 is outside"):
        session.explain(image, "tiny", 6, "gradcam")
    with pytest.raises(ModelUnavailable, match="unknown model"):
        session.analyse(image, "nope")
    text = tmp_path / "notes.png"
    text.write_text("not really a png")
    with pytest.raises(NotAnImage):
        session.read(text)


def test_read_remembers_files_and_digests_pixels(session: ExplainSession, image_file: Path, tmp_path: Path) -> None:
    first = session.read(image_file)
    assert session.read(str(image_file)) is first
    copy = tmp_path / "copy.bmp"
    Image.open(image_file).save(copy)
    assert session.read(copy).digest == first.digest


def test_concurrent_requests_give_the_serial_maps(model: LoadedModel, tmp_path: Path) -> None:
    paths = []
    for seed in range(6):
        paths.append(tmp_path / f"{seed}.png")
        Image.fromarray(noise(64, 64, seed)).save(paths[-1])
    serial_session = ExplainSession(registry_of(model))
    serial_session.registry.load("tiny")
    serial = [serial_session.explain(serial_session.read(p), "tiny", 0, "gradcam").saliency for p in paths]
    parallel_session = ExplainSession(registry_of(model))
    parallel_session.registry.load("tiny")
    results: dict[int, np.ndarray] = {}

    def work(index: int) -> None:
        image = parallel_session.read(paths[index])
        results[index] = parallel_session.explain(image, "tiny", 0, "gradcam").saliency

    run_in_threads(work, len(paths))
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


def test_fast_maps_do_not_wait_for_the_slow_lane(session: ExplainSession, image_file: Path) -> None:
    image = session.read(image_file)
    fast_done, slow_done = threading.Event(), threading.Event()
    with session.slow_lane:  # as if a Score-CAM of another request were running
        threading.Thread(target=lambda: (session.explain(image, "tiny", 0, "gradcam"), fast_done.set())).start()
        threading.Thread(target=lambda: (session.explain(image, "tiny", 0, "scorecam"), slow_done.set())).start()
        assert fast_done.wait(timeout=60)
        assert not slow_done.is_set()
    assert slow_done.wait(timeout=60)


def test_lru_cache_evicts_the_least_recently_used() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (1, None, 3, 2)
    with pytest.raises(ValueError):
        LRUCache(0)


def test_two_lanes_share_the_cores() -> None:
    assert [threads_per_lane(cores) for cores in (1, 2, 3, 8)] == [1, 1, 1, 4]


def test_display_names_and_durations() -> None:
    assert display_class_names(["crane", "cat", "crane"]) == ["crane (0)", "cat", "crane (2)"]
    assert [format_seconds(s) for s in (0.0123, 1.44, 125.0, float("nan"))] == ["12 ms", "1.4 s", "2 min 5 s", "?"]


def test_exports(session: ExplainSession, image_file: Path, tmp_path: Path) -> None:
    image = session.read(image_file)
    analysis = session.analyse(image, "tiny")
    explanations = [session.explain(image, "tiny", 4, m) for m in ("ptame", "gradcam")]
    path = save_maps(tmp_path / "out" / "maps.npz", analysis.picture, explanations, 4, "cross", "tiny")
    with np.load(path) as saved:
        assert set(saved.files) == {
            "image",
            "class_index",
            "class_name",
            "model",
            "ptame",
            "gradcam",
            "seconds_ptame",
            "seconds_gradcam",
            "blank_ptame",
            "blank_gradcam",
        }
        np.testing.assert_array_equal(saved["ptame"], explanations[0].saliency)
        assert [bool(saved[f"blank_{m}"]) for m in ("ptame", "gradcam")] == [e.blank for e in explanations]
        assert saved["ptame"].dtype == np.float32 and str(saved["class_name"]) == "cross"
        assert int(saved["class_index"]) == 4
    assert sorted(p.name for p in path.parent.iterdir()) == ["maps.npz"]  # no temporary file left
    row = figure(analysis.picture, explanations, "cross")
    assert row.shape[0] > 256 and row.shape[1] > 3 * 256


def write_files_newest_first(folder: Path, names: list[str]) -> None:
    """One small file per name, each modified 100 s before the previous one."""
    for age, name in enumerate(names):
        path = folder / name
        path.write_bytes(b"x")
        stamp = time.time() - 100 * age
        os.utime(path, (stamp, stamp))


def test_prune_folder_keeps_the_newest(tmp_path: Path) -> None:
    write_files_newest_first(tmp_path, ["new.npz", "mid.npz", "old.npz"])
    (tmp_path / "other.txt").write_text("kept")
    assert prune_folder(tmp_path, keep=2) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid.npz", "new.npz", "other.txt"]


def test_prune_folder_spares_writes_in_progress_and_vanished_files(tmp_path: Path) -> None:
    write_files_newest_first(tmp_path, ["new.npz", "old.npz", ".old-write-in-progress.npz"])
    (tmp_path / "vanished.npz").symlink_to(tmp_path / "renamed-meanwhile.npz")  # stat() fails
    assert prune_folder(tmp_path, keep=1) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old-write-in-progress.npz", "new.npz", "vanished.npz"]


def test_the_slow_lane_borrows_the_cores_only_while_the_fast_lane_is_idle(model: LoadedModel, image_file: Path) -> None:
    caller_threads = torch.get_num_threads()
    registry = registry_of(model)
    registry.load("tiny")
    session = ExplainSession(registry, lane_threads=1, cores=3)
    image = session.read(image_file)
    session.analyse(image, "tiny")
    seen: list[int] = []
    session.explain(image, "tiny", 1, "scorecam", progress=lambda done, total: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {3}
    assert torch.get_num_threads() == caller_threads  # the caller's count is restored
    seen.clear()
    with session.fast_lane:  # as if another request's P-TAME were running
        session.explain(image, "tiny", 2, "rise", progress=lambda done, total: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == caller_threads


def test_a_session_without_lane_threads_leaves_the_threads_alone(session: ExplainSession, image_file: Path) -> None:
    caller_threads = torch.get_num_threads()
    seen: list[int] = []
    image = session.read(image_file)
    session.explain(image, "tiny", 4, "scorecam", progress=lambda done, total: seen.append(torch.get_num_threads()))
    assert set(seen) == {caller_threads}
    with pytest.raises(ValueError, match="lane_threads"):
        ExplainSession(session.registry, lane_threads=0)


def test_the_gallery_maps_the_top_classes_from_the_one_pass(session: ExplainSession, image_file: Path) -> None:
    image = session.read(image_file)
    analysis = session.analyse(image, "tiny")
    gallery = session.gallery(image, "tiny", 3)
    assert gallery is not None and gallery.method == "ptame" and gallery.reference == "gradcam"
    assert [item.class_index for item in gallery.items] == analysis.top(3)
    assert [item.class_name for item in gallery.items] == [session.class_names("tiny")[i] for i in analysis.top(3)]
    for item in gallery.items:
        known = session.cached(image, "tiny", item.class_index, "ptame")
        np.testing.assert_array_equal(item.explanation.saliency, known.saliency)
    assert gallery.classes == len(CLASSES) and gallery.seconds == analysis.ptame_seconds
    assert "these 3 maps in" in gallery_caption(gallery) and "Grad-CAM would take about" in gallery_caption(gallery)
    assert len(session.gallery(image, "tiny", 99).items) == len(CLASSES)


def test_a_curves_table_lists_the_methods_without_explainer(model: LoadedModel, image_file: Path) -> None:
    only = LoadedModel(dataclasses.replace(model.entry, key="only"), model.backbone, None, "no explainer here")
    registry = registry_of(only)
    registry.load("only")
    session = ExplainSession(registry)
    image = session.read(image_file)
    assert session.gallery(image, "only", 3) is None
    steps = []
    table = session.curves_table(image, "only", 1, ["ptame", "gradcam"], lambda *step: steps.append(step))
    assert steps == [(0, 2, "ptame"), (1, 2, "gradcam")] and table.class_index == 1
    assert list(table.curves) == ["gradcam"] and table.curves["gradcam"] is session.curves(image, "only", 1, "gradcam")
    assert list(table.unavailable) == ["ptame"] and "no explainer here" in table.unavailable["ptame"]


def test_downloads_are_named_by_model_image_and_class_and_pruned(
    session: ExplainSession, image_file: Path, tmp_path: Path
) -> None:
    image = session.read(image_file)
    downloads = Downloads(tmp_path, keep=1)
    first = downloads.save("tiny", image.digest, list(session.explain_stream(image, "tiny", 1, ["ptame"]))[-1])
    assert first.name == f"ptame-tiny-{image.digest[:12]}-class1.npz"
    with np.load(first) as saved:
        assert str(saved["class_name"]) == CLASSES[1] and str(saved["model"]) == "tiny"
    second = downloads.save("tiny", image.digest, list(session.explain_stream(image, "tiny", 2, ["ptame"]))[-1])
    assert sorted(tmp_path.glob("*.npz")) == [second]
