"""Finding checkpoint files: a local folder or a Hugging Face Hub repo (cached, offline-aware)."""

from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ptame.errors import CheckpointError, describe, shorten

HUB_TIMEOUT_S = 10.0  # per request to the Hub; an unreachable Hub fails after this, no hang
UNREACHABLE = "the Hub cannot be reached (offline mode, no network, or a timeout)"


def is_folder_source(source: str | Path) -> bool:
    """Whether a checkpoint source is a local folder (an existing path, or one starting with ".",
    "/" or "~"); anything else is a Hub repo id."""
    text = str(source)
    if text.startswith((".", "/", "~")):
        return True
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):  # a name too long for a path, or with a NUL: not a folder
        return False


def resolve_file(
    source: str | Path,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Local path of ``filename`` in a checkpoint folder or Hub repo.

    Args:
        source: a local folder, or a Hub repo id ("org/name"). A path that exists on disk, or
            that starts with ".", "/" or "~", is a folder; anything else is a repo id.
        filename: the file inside it, e.g. "config.json" or "auxiliary/model.safetensors".
        revision: branch, tag or commit of a Hub repo (pin a commit for reproducibility).
        cache_dir, force_download, token, local_files_only: as in ``hf_hub_download``. With
            ``HF_HUB_OFFLINE=1`` only the local Hugging Face cache is read.

    Returns:
        Path to an existing file.

    Raises:
        CheckpointError: with what is missing and where it was looked for.
    """
    text = str(source)
    folder = Path(text).expanduser()
    if is_folder_source(source):
        try:
            if not folder.is_dir():
                raise CheckpointError(f"checkpoint folder {folder} does not exist")
            path = folder / filename
            if not path.is_file():
                raise CheckpointError(f"checkpoint folder {folder} has no {filename}")
        except OSError as error:  # a path too long, a folder that cannot be listed
            raise CheckpointError(f"checkpoint folder {shorten(text, 200)} cannot be read: {error.strerror}") from error
        return path
    return hub_file(
        text,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        force_download=force_download,
        token=token,
        local_files_only=local_files_only,
    )


def hub_file(
    repo: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """Local path of ``filename`` in the Hub repo ``repo``, from the Hub or its local cache: never
    a local folder, whatever exists on disk under that name.

    Args: as ``resolve_file``'s, for a Hub repo id.

    Returns:
        Path to an existing file (in the Hugging Face cache).

    Raises:
        CheckpointError: what is missing and where it was looked for, in ptame's words (the Hub
            client's own message, with its advice, is only the error's ``__cause__``).
    """
    where = f"Hub repo {shorten(repo, 200)}" + (f" at revision {shorten(revision, 100)}" if revision else "")
    try:
        return Path(
            hf_hub_download(
                repo_id=repo,
                filename=filename,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
                etag_timeout=HUB_TIMEOUT_S,
            )
        )
    except HFValidationError as error:
        raise CheckpointError(
            f"{describe(repo)} is neither an existing folder nor a valid Hub repo id (ORG/NAME: letters, digits, "
            "'-', '_', '.')"
        ) from error
    except LocalEntryNotFoundError as error:
        raise CheckpointError(
            f"{filename} of {where} is not in the local Hugging Face cache and {UNREACHABLE}"
        ) from error
    except RepositoryNotFoundError as error:
        raise CheckpointError(f"{where} does not exist or is private (pass a token)") from error
    except RevisionNotFoundError as error:
        raise CheckpointError(f"{where}: no such revision") from error
    except EntryNotFoundError as error:
        raise CheckpointError(f"{where} has no file {filename}") from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        raise CheckpointError(f"downloading {filename} from {where} failed (HTTP status {status})") from error
