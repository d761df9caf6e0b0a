"""``python -m ptame explain``: the app's explanations for image files, written to a folder.

    python -m ptame explain IMAGE_OR_FOLDER... --model shapes --methods ptame,gradcam,scorecam --out DIR
    python -m ptame explain IMAGE_OR_FOLDER... --classifier resnet50 [--explainer SPEC] --out DIR

For each image: DIR/<name>.png (the input and each method's overlay side by side, captioned with
the compute time) and DIR/<name>.npz (the raw maps, as the app's download). The models are those
of the app: the manifest's keys, a folder with classifier/ (and, optionally, explainer/), or any
classifier with --classifier. A model without its P-TAME explainer gets the other methods' maps
(a warning says why P-TAME is skipped and how to train its explainer).
"""

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from ptame.class_coverage import class_coverage_note
from ptame.errors import CheckpointError, ImageInputError, MethodFailed, ModelUnavailable
from ptame.interop.plugins import MethodModuleError, register_method_modules
from ptame.methods import default_method_keys, get_method, method_keys
from ptame.serving.captions import blank_map_note, display_class_names, explainer_missing_message
from ptame.serving.export import figure, save_maps, save_png
from ptame.serving.images import CheckedImage
from ptame.serving.manifest import DEFAULT_MANIFEST, ModelEntry
from ptame.serving.models import ModelRegistry, build_registry, model_dirs_from_env
from ptame.serving.results import StreamUpdate
from ptame.serving.session import ExplainSession
from ptame.serving.viz import COLORMAPS, DEFAULT_COLORMAP, DEFAULT_OPACITY

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


def image_paths(inputs: Sequence[Path]) -> list[Path]:
    """Files as given, and the image files of folders (recursively, sorted), without repeats.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist")
    return list(dict.fromkeys(paths))


def output_stems(paths: Sequence[Path]) -> list[str]:
    """One distinct output name per input: its file stem, with a counter where stems repeat."""
    stems, seen = [], {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}-{count + 1}")
    return stems


def parse_methods(text: str) -> list[str]:
    """ "ptame,gradcam" -> ["ptame", "gradcam"], checked against the registered methods."""
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in method_keys()]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"methods must be a comma-separated subset of {','.join(method_keys())}")
    return list(dict.fromkeys(methods))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``explain`` command's arguments."""
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders of images")
    parser.add_argument(
        "--model",
        default="shapes",
        help="a manifest key (e.g. shapes, resnet50) or a model folder (classifier/, optionally explainer/)",
    )
    parser.add_argument(
        "--classifier",
        help="instead of --model: a timm name, hf-hub:ORG/NAME or local-dir:PATH (classifier-only unless --explainer)",
    )
    parser.add_argument(
        "--explainer", help="with --classifier: its P-TAME explainer, a folder or a Hub repo ORG/NAME[@REVISION]"
    )
    parser.add_argument(
        "--target-layer",
        help="with --classifier: the CAM methods' layer, a dotted module path (default: its family's, else a probe's)",
    )
    parser.add_argument(
        "--methods",
        type=parse_methods,
        default=list(default_method_keys()),
        help=f"comma-separated, from {','.join(method_keys())} (default: {','.join(default_method_keys())})",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--class-index", type=int, default=None, help="class to explain (default: top-1 of each)")
    parser.add_argument("--opacity", type=float, default=DEFAULT_OPACITY, help="map opacity in [0, 1]")
    parser.add_argument("--colormap", choices=sorted(COLORMAPS), default=DEFAULT_COLORMAP)
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")


def _registry(args: argparse.Namespace) -> tuple[ModelRegistry, str]:
    """The registry and the key of the model asked for (--classifier, else --model).

    Raises:
        ValueError: --explainer without --classifier, or a malformed --classifier / --explainer.
        CheckpointError: a --model folder without classifier/.
    """
    if args.classifier is not None:
        entry = ModelEntry.from_classifier(args.classifier, args.explainer, args.target_layer)
        return ModelRegistry([entry], device=args.device), entry.key
    if args.explainer is not None or args.target_layer is not None:
        raise ValueError("--explainer and --target-layer need --classifier (a --model brings its own)")
    folder = Path(args.model)
    if folder.is_dir():
        entry = ModelEntry.from_folder(folder)
        return ModelRegistry([entry], device=args.device), entry.key
    registry, problems = build_registry(args.manifest, model_dirs_from_env(), args.device)
    for problem in problems:
        logger.warning("%s", problem)
    return registry, args.model


def explain_with_bars(
    session: ExplainSession, image: CheckedImage, key: str, index: int | None, methods: list[str]
) -> StreamUpdate:
    """``session.explain_stream`` to its end, with a progress bar of each streamed method's passes."""
    bars: list[tqdm] = []

    def progress_for(method: str) -> Callable[[int, int], None]:
        for bar in bars:
            bar.close()
        bar = tqdm(desc=get_method(method).name, unit="pass", leave=False)
        bars.append(bar)

        def report(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return report

    try:
        *_, final = session.explain_stream(image, key, index, methods, progress_for)
    finally:
        for bar in bars:
            bar.close()
    return final


def run(args: argparse.Namespace) -> int:
    """Explain every image; returns the exit status (1 if any image failed)."""
    if not 0.0 <= args.opacity <= 1.0:
        print(f"error: --opacity must be in [0, 1], got {args.opacity}", file=sys.stderr)
        return 2
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    try:
        paths = image_paths(args.inputs)
        registry, key = _registry(args)
        model = registry.load(key)
    except (FileNotFoundError, ModelUnavailable, ValueError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    missing = [method for method in args.methods if get_method(method).uses_explainer and not model.has_explainer]
    if missing and len(missing) == len(args.methods):
        print(f"error: {explainer_missing_message(model, visitor=False)}", file=sys.stderr)
        return 2
    if missing:  # the stream skips them (each update's ``unavailable`` says why)
        print(f"warning: {explainer_missing_message(model, visitor=False)}", file=sys.stderr)
    if not paths:
        print("error: no image files found in the inputs", file=sys.stderr)
        return 2
    session = ExplainSession(registry)
    names = display_class_names(model.backbone.class_names)
    if args.class_index is not None and not 0 <= args.class_index < len(names):
        print(f"error: --class-index must be in [0, {len(names)})", file=sys.stderr)
        return 2
    failures = 0
    for path, stem in tqdm(list(zip(paths, output_stems(paths))), desc="explaining", unit="image"):
        try:
            image = session.read(path)
            result = explain_with_bars(session, image, key, args.class_index, args.methods)
        except (ImageInputError, MethodFailed) as error:
            tqdm.write(f"skipped {path}: {error}", file=sys.stderr)
            failures += 1
            continue
        analysis, index, explanations = result.analysis, result.class_index, list(result.explanations.values())
        for explanation in explanations:
            if explanation.blank:
                note = blank_map_note(explanation.method, model.backbone.target_layer_name)
                tqdm.write(f"warning: {path}: {note}", file=sys.stderr)
        if model.has_explainer and any(get_method(e.method).uses_explainer for e in explanations):
            coverage = class_coverage_note(model.explainer, index, names[index])
            if coverage:
                tqdm.write(f"warning: {path}: {coverage}", file=sys.stderr)
        title = f"{names[index]} · {analysis.probabilities[index]:.1%}"
        save_png(args.out / f"{stem}.png", figure(analysis.picture, explanations, title, args.opacity, args.colormap))
        save_maps(
            args.out / f"{stem}.npz", analysis.picture, explanations, index, model.backbone.class_names[index], key
        )
    print(f"wrote {len(paths) - failures} of {len(paths)} images to {args.out}")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ptame COMMAND``."""
    try:
        register_method_modules()  # captum's methods when captum is installed; $PTAME_METHOD_MODULES
    except MethodModuleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m ptame", description="ptame command line")
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help=__doc__.splitlines()[0], description=__doc__)
    explain.formatter_class = argparse.RawDescriptionHelpFormatter
    add_arguments(explain)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    return run(args)
