"""The models the app offers: a commented TOML manifest, read into ``ModelEntry`` values.

``checkpoints/manifest.toml`` has one ``[[models]]`` table per model: where its classifier and
(optionally) its explainer live (a Hub repo with a pinned revision, or a local folder), its
display name and its world. ``ModelEntry.from_folder`` and ``ModelEntry.from_classifier`` make
the same entries from a model folder and from ``--classifier``. Loading an entry is
``ptame.serving.loader``'s.
"""

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ptame.errors import CheckpointError, describe
from ptame.explainer import LOCAL_DIR_PREFIX
from ptame.loading.untrusted import read_bounded

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "checkpoints" / "manifest.toml"
REQUIRED_FIELDS = ("key", "display_name", "classifier")
OPTIONAL_FIELDS = ("explainer", "explainer_revision", "domain", "image_size", "target_layer")
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
NOT_KEY_CHARACTERS = re.compile(r"[^A-Za-z0-9_-]+")
HUB_REPO_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")  # ORG/NAME
FOLDER_PREFIXES = ("./", "../", "/", "~")  # an explainer value starting so is a folder, else a Hub repo id
MAX_MANIFEST_BYTES = 2**20
MAX_KEY_PARTS = 16  # dotted parts of one TOML key or table name (tomllib's time grows with their square)
MAX_FIELD_CHARS = 1000  # a manifest's strings (keys, names, specs, domains)


@dataclass(frozen=True)
class ModelEntry:
    """One model of the app.

    key: short unique id ("shapes", "vgg16"). display_name: shown in the model selector.
    classifier: a ``create_backbone`` name ("vgg16", a timm name, "hf-hub:ORG/NAME[@rev]",
    "local-dir:PATH" with an absolute PATH). explainer: an absolute folder or a Hub repo id; None
    for a classifier-only model (no P-TAME; the baselines need no explainer).
    explainer_revision: the commit (or branch) of a Hub explainer; None for a folder.
    domain: one line on the model's world ("photos of the 1000 ImageNet classes"); "" if unsaid.
    image_size: the images of its world are exactly this square size (pixels); None: any image.
    target_layer: the classifier's layer for the CAM methods (a dotted module path); None: its
    family's declared layer or the probe's (``ptame.loading.target_layers``).
    """

    key: str
    display_name: str
    classifier: str
    explainer: str | None = None
    explainer_revision: str | None = None
    domain: str = ""
    image_size: int | None = None
    target_layer: str | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> "ModelEntry":
        """The entry of a folder holding ``classifier/`` (timm format) and, optionally, ``explainer/``
        (PTAME), as ``python -m train shapes`` writes it; key and display name are the folder's name.
        Without ``explainer/`` the entry is classifier-only.

        Raises:
            CheckpointError: the folder or its classifier/ subfolder is missing.
        """
        folder = Path(folder).expanduser().resolve()
        if not (folder / "classifier").is_dir():
            raise CheckpointError(
                f"{folder} has no classifier/ folder (expected classifier/ and, optionally, explainer/)"
            )
        explainer = folder / "explainer"
        return cls(
            key=folder.name,
            display_name=folder.name,
            classifier=f"{LOCAL_DIR_PREFIX}{folder / 'classifier'}",
            explainer=str(explainer) if explainer.is_dir() else None,
        )

    @classmethod
    def from_classifier(
        cls, classifier: str, explainer: str | None = None, target_layer: str | None = None
    ) -> "ModelEntry":
        """The entry of ``--classifier SPEC [--explainer SPEC] [--target-layer NAME]``.

        Args:
            classifier: a ``create_backbone`` name: a timm name, "hf-hub:ORG/NAME" or
                "local-dir:PATH" (a relative PATH starts at the working directory).
            explainer: a folder (an existing path, or one starting with ./ ../ / ~), or a Hub repo id
                "ORG/NAME" or "ORG/NAME@REVISION"; None: classifier-only.
            target_layer: the CAM methods' layer (a dotted module path); None: the default.

        Returns:
            key: the classifier spec as a slug of letters, digits, "_" and "-"
            ("local-dir:checkpoints/shapes/classifier" -> "local-dir-checkpoints-shapes-classifier");
            display_name: the spec (the app's menu adds "(baselines only)" while there is no explainer).

        Raises:
            ValueError: an empty spec, or an explainer that is neither a folder nor a Hub repo id.
        """
        spec = classifier.strip()
        key = NOT_KEY_CHARACTERS.sub("-", spec).strip("-")
        if not key:
            raise ValueError(
                f"the classifier must be a timm name, hf-hub:ORG/NAME or local-dir:PATH, got {classifier!r}"
            )
        source = spec
        if spec.startswith(LOCAL_DIR_PREFIX):
            source = LOCAL_DIR_PREFIX + str(Path(spec[len(LOCAL_DIR_PREFIX) :]).expanduser().resolve())
        if explainer is None:
            return cls(key, spec, source, target_layer=target_layer)
        folder, revision = _explainer_source(explainer)
        return cls(key, spec, source, folder, revision, target_layer=target_layer)

    @property
    def explainer_is_folder(self) -> bool:
        """Whether the explainer is a local folder (else a Hub repo id, or none)."""
        return self.explainer is not None and self.explainer.startswith(FOLDER_PREFIXES)


def _explainer_source(spec: str) -> tuple[str, str | None]:
    """An ``--explainer`` value -> (an absolute folder, None) or (a Hub repo id, its revision or None)."""
    text = spec.strip()
    if not text:
        raise ValueError("the explainer must be a folder or a Hub repo id ORG/NAME[@REVISION], got an empty value")
    path = Path(text).expanduser()
    if text.startswith(FOLDER_PREFIXES) or path.exists():
        return str(path.resolve()), None
    repo, at, revision = text.partition("@")
    if not HUB_REPO_PATTERN.fullmatch(repo) or (at and not revision):
        raise ValueError(
            f"the explainer {spec!r} is neither an existing folder nor a Hub repo id ORG/NAME[@REVISION]; "
            "write ./PATH for a folder that does not exist yet"
        )
    return repo, revision or None


def _existing_folder(path: Path) -> bool:
    """Whether ``path`` is a folder (False for a name the file system cannot hold)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _entry(table: object, number: int, path: Path) -> ModelEntry:
    where = f"{path}: model {number}"
    if not isinstance(table, dict):
        raise CheckpointError(f"{where} must be a [[models]] table, not {type(table).__name__}")
    unknown = sorted(set(table) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise CheckpointError(
            f"{where} has unknown fields {describe(unknown, 200)} (allowed: {[*REQUIRED_FIELDS, *OPTIONAL_FIELDS]})"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in table]
    if missing:
        raise CheckpointError(f"{where} lacks the fields {missing}")
    for name, value in table.items():
        if name == "image_size":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(
                    f"{where}: image_size must be a positive integer (the side of its square images), got {describe(value)}"
                )
        elif not isinstance(value, str) or not value.strip() or len(value) > MAX_FIELD_CHARS:
            raise CheckpointError(
                f"{where}: {name} must be a non-empty string of at most {MAX_FIELD_CHARS} characters, "
                f"got {describe(value)}"
            )
    if not KEY_PATTERN.fullmatch(table["key"]):
        raise CheckpointError(f"{where}: key {describe(table['key'])} may hold only letters, digits, '_' and '-'")
    where = f"{path}: model {table['key']!r}"
    root = path.parent
    classifier = table["classifier"]
    if classifier.startswith(LOCAL_DIR_PREFIX):
        classifier = LOCAL_DIR_PREFIX + str((root / Path(classifier[len(LOCAL_DIR_PREFIX) :]).expanduser()).resolve())
    explainer = table.get("explainer")
    revision = table.get("explainer_revision")
    if explainer is None and revision is not None:
        raise CheckpointError(f"{where}: explainer_revision is given without an explainer")
    if explainer is not None and not explainer.startswith(FOLDER_PREFIXES) and _existing_folder(root / explainer):
        explainer = f"./{explainer}"  # a folder beside the manifest, as a run's own manifest names it
    if explainer is not None and not explainer.startswith(FOLDER_PREFIXES) and not HUB_REPO_PATTERN.fullmatch(explainer):
        raise CheckpointError(
            f"{where}: explainer {describe(explainer)} is neither a folder (./PATH, ../PATH, /PATH) "
            "nor a Hub repo id ORG/NAME"
        )
    if explainer is not None and explainer.startswith(FOLDER_PREFIXES):
        if revision is not None:
            raise CheckpointError(
                f"{where}: explainer_revision applies to Hub repos only, not to the folder {explainer}"
            )
        explainer = str((root / Path(explainer).expanduser()).resolve())
    return ModelEntry(
        table["key"],
        table["display_name"],
        classifier,
        explainer,
        revision,
        table.get("domain", ""),
        table.get("image_size"),
        table.get("target_layer"),
    )


def load_manifest(path: Path = DEFAULT_MANIFEST) -> list[ModelEntry]:
    """The models of a manifest, in its order, with relative folders resolved against its folder.

    Raises:
        CheckpointError: the file is missing, not TOML, has no models, unknown or missing fields,
            values that are not non-empty strings (image_size: not a positive integer), a
            malformed or repeated key, or a revision given for a folder or without an explainer.
    """
    path = Path(path)
    data = read_bounded(path, MAX_MANIFEST_BYTES, "model manifest")
    for line in data.splitlines():
        key = line.split(b"=", 1)[0] if b"=" in line else line
        if key.count(b".") >= MAX_KEY_PARTS:
            raise CheckpointError(f"{path} has a key or table name of more than {MAX_KEY_PARTS} dotted parts")
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except RecursionError as error:
        raise CheckpointError(f"{path} is nested too deeply to be read") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid TOML: {error}") from error
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise CheckpointError(
            f"{path} has unknown top-level keys {describe(unknown, 200)}: only [[models]] tables belong there"
        )
    tables = document.get("models")
    if not isinstance(tables, list) or not tables:
        raise CheckpointError(f"{path} lists no models: add at least one [[models]] table")
    entries = [_entry(table, number, path) for number, table in enumerate(tables, start=1)]
    keys = [entry.key for entry in entries]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise CheckpointError(f"{path} repeats the keys {repeated}")
    return entries
