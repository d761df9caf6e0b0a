"""Publish a trained explainer to the Hugging Face Hub, with its model card and manifest entry.

    python -m train publish runs/resnet50 --repo-id ORG/ptame-resnet50 [--dry-run]

Writes RUN/publish/ (config.json, model.safetensors, README.md: the model card with the
classifier and its exact weights, the auxiliary network, the recipe, RUN/evaluation.md and
RUN/verdict.md if present, the license and a usage snippet; its metadata, written with
huggingface_hub's ModelCardData: base_model, library_name, datasets, and P-TAME's figures of
RUN/evaluation.csv and RUN/verdict.csv as the model-index), pushes it with huggingface_hub (token: --token, or
HF_TOKEN / the stored login), and prints the [[models]] table to add to
checkpoints/manifest.toml, pinned to the pushed commit. --dry-run writes the folder only.
"""

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import httpx2
from huggingface_hub import HfApi, get_session
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open

from ptame.errors import PublishError
from ptame.loading.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from ptame.loading.files import replace_folder
from train.cards import IMAGENET_DATASET, model_card
from train.runs import BACKBONE_DISPLAY_NAMES, EVALUATION_NAME, EXPLAINER_FOLDER, RUN_NAME, manifest_entry
from train.verdict import VERDICT_CSV_NAME, VERDICT_NAME

CARD_NAME = "README.md"
EVALUATION_CSV_NAME = "evaluation.csv"  # written by python -m train evaluate --out RUN, beside evaluation.md
PUBLISH_FOLDER = "publish"
UPLOAD_TIMEOUT_S = 60.0  # per Hub request of an upload (ptame.loading.hub.HUB_TIMEOUT_S: downloads)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("run_dir", type=Path, help="a finished run folder of python -m train explainer or imagenet")
    parser.add_argument("--repo-id", required=True, help="Hub model repo, ORG/NAME")
    parser.add_argument("--dry-run", action="store_true", help="write the folder, push nothing")
    parser.add_argument("--folder", type=Path, help=f"where to write the repo's files (default RUN/{PUBLISH_FOLDER})")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the stored login)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--license", default="apache-2.0", help="license of the head's weights (model card)")
    parser.add_argument("--key", help="manifest key (default: the run folder's name)")
    parser.add_argument("--display-name", help="name in the app's model selector")
    parser.add_argument("--timeout", type=float, default=UPLOAD_TIMEOUT_S, help="seconds per Hub request")


def read_run(run_dir: Path) -> dict[str, object]:
    """The run's configuration (run.json), after checking that its explainer files are readable.

    Raises:
        PublishError: not a finished run, or unreadable files.
    """
    config_path = run_dir / RUN_NAME
    explainer = run_dir / EXPLAINER_FOLDER
    if not config_path.is_file() or not (explainer / WEIGHTS_NAME).is_file() or not (explainer / CONFIG_NAME).is_file():
        raise PublishError(
            f"{run_dir} is not a finished training run: it needs {RUN_NAME} and {EXPLAINER_FOLDER}/ "
            f"({CONFIG_NAME}, {WEIGHTS_NAME}); train it to the end (or --resume it) first"
        )
    try:
        with safe_open(str(explainer / WEIGHTS_NAME), framework="pt"):
            pass
        json.loads((explainer / CONFIG_NAME).read_text(encoding="utf-8"))
        return json.loads(config_path.read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError) as error:
        raise PublishError(f"cannot read the run in {run_dir}: {error}") from error


def read_results(run_dir: Path, run: dict[str, object]) -> list[tuple[dict[str, str], list[dict[str, str]]]]:
    """The run's evaluation tables for the card's model-index: RUN/evaluation.csv (``python -m train
    evaluate --out RUN``; ImageNet val's test subset for an ImageNet run) and RUN/verdict.csv (the
    held-out images of the training folder), each with its dataset, where present."""
    imagenet = run["command"] == "imagenet"
    sources = [
        (
            run_dir / EVALUATION_CSV_NAME,
            {
                "type": IMAGENET_DATASET if imagenet else "imagefolder",
                "name": "ImageNet val, the P-TAME paper's 2000-image test subset"
                if imagenet
                else "the evaluation images of evaluation.md",
                "split": "validation" if imagenet else "test",
            },
        ),
        (
            run_dir / VERDICT_CSV_NAME,
            {"type": "imagefolder", "name": "held-out images of the training folder", "split": "held-out"},
        ),
    ]
    results = []
    for path, dataset in sources:
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as file:
                results.append((dataset, list(csv.DictReader(file))))
    return results


def write_folder(run_dir: Path, folder: Path, card: str) -> None:
    """Write the repo's files into a temporary sibling folder, then swap it in for ``folder``
    (``ptame.loading.files.replace_folder``): ``folder`` is never half-written."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copyfile(run_dir / EXPLAINER_FOLDER / name, staging / name)
    (staging / CARD_NAME).write_text(card, encoding="utf-8")
    replace_folder(staging, folder)


def push(folder: Path, repo_id: str, token: str | None, private: bool, timeout: float) -> str:
    """Create the repo if needed and upload the folder as one commit.

    Returns:
        The commit's hash (pin it in the manifest).

    Raises:
        PublishError: refused (token, permissions) or unreachable Hub.
    """
    get_session().timeout = timeout  # huggingface_hub's shared HTTP session waits forever by default
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, repo_type="model", folder_path=folder, commit_message="Upload P-TAME explainer"
        )
    except HfHubHTTPError as error:
        raise PublishError(f"the Hub refused the upload to {repo_id} (token and permissions?): {error}") from error
    except (httpx2.HTTPError, OSError) as error:
        raise PublishError(
            f"cannot reach the Hub to push {repo_id} (network down, HF_HUB_OFFLINE set, or no answer within "
            f"{timeout:.0f} s): {error}"
        ) from error
    return commit.oid


def run(args: argparse.Namespace) -> None:
    """Write the folder, push it unless --dry-run, print the manifest entry."""
    try:
        publish(args)
    except PublishError as error:
        raise SystemExit(f"publish: {error}") from error


def publish(args: argparse.Namespace) -> None:
    """The command's work; PublishError on failure."""
    run_dir: Path = args.run_dir
    try:
        validate_repo_id(args.repo_id)
    except HFValidationError as error:
        raise PublishError(f"--repo-id {args.repo_id!r} is not a valid Hub repo id (ORG/NAME): {error}") from error
    run_config = read_run(run_dir)
    if not run_config["pretrained"] and not args.dry_run:
        raise PublishError(f"{run_dir} was trained against random weights (--no-pretrained): not pushing it")
    reports = [run_dir / EVALUATION_NAME, run_dir / VERDICT_NAME]
    evaluation = "\n".join(path.read_text(encoding="utf-8") for path in reports if path.is_file()) or None
    folder = args.folder or run_dir / PUBLISH_FOLDER
    card_text = model_card(run_config, args.repo_id, args.license, evaluation, read_results(run_dir, run_config))
    write_folder(run_dir, folder, card_text)
    print(f"wrote {folder}", file=sys.stderr)
    revision = None
    if not args.dry_run:
        revision = push(folder, args.repo_id, args.token, args.private, args.timeout)
        print(f"pushed {folder} to https://huggingface.co/{args.repo_id} at commit {revision}", file=sys.stderr)
    backbone = run_config["classifier"]
    print("# add to checkpoints/manifest.toml:", file=sys.stderr)
    print(
        manifest_entry(
            key=args.key or run_dir.resolve().name,
            display_name=args.display_name or BACKBONE_DISPLAY_NAMES.get(backbone, backbone),
            classifier=backbone,
            explainer=args.repo_id,
            revision=revision,
        )
    )
