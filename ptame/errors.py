"""Every error ptame raises on purpose: one base, and each error also the builtin it resembles.

Catch ``PtameError`` for all of them, or the builtin (``ValueError`` for bad input, ``LookupError``
for a model that is not there, ``RuntimeError`` for a failure while running). Messages are written
for the person who gave the input: they say what is wrong and, where it helps, what to do.

A message is at most ``MAX_MESSAGE_CHARS`` long, whatever a file or a server put into it (an app
shows it to every visitor): ``str(error)`` is that short form, ``error.details`` the whole message
(at most ``MAX_DETAILS_CHARS``), for logs.
"""

MAX_MESSAGE_CHARS = 1000
MAX_DETAILS_CHARS = 20_000


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` if it has at most ``limit`` (>= 40) characters, else its start and how much was cut,
    in at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    kept = max(limit - 40, 0)  # room for the note
    return text[:kept] + f"… [{len(text) - kept} more characters]"


def describe(value: object, limit: int = 80) -> str:
    """A value from an untrusted file as a message may quote it: its repr, at most ``limit`` characters."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a deeply nested value; ints of over 4300 digits
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


class PtameError(Exception):
    """The base of ptame's errors; its message is bounded (``shorten``), the whole one in ``details``."""

    def __init__(self, message: str = "", *args: object) -> None:
        text = str(message)
        self.details = shorten(text, MAX_DETAILS_CHARS)
        super().__init__(shorten(text), *args)


class CheckpointError(PtameError, RuntimeError):
    """A checkpoint or manifest cannot be found, read, or does not match the model asked for."""


class ModelUnavailable(PtameError, LookupError):
    """A model was asked for that is unknown, still loading, or failed to load (says which)."""


class ExplainerMissing(PtameError, LookupError):
    """A method needs the model's P-TAME explainer, which is not loaded (says why, and how to get one)."""


class MethodFailed(PtameError, RuntimeError):
    """A saliency method failed on an image (the classifier or the method raised)."""


class TrainingDiverged(PtameError, RuntimeError):
    """The training loss became NaN or infinite."""


class PublishError(PtameError, RuntimeError):
    """A run cannot be published (not finished, unreadable files, the Hub refused or is unreachable)."""


class DataUnavailable(PtameError, FileNotFoundError):
    """Data a command needs (a dataset's files, a package to fetch them from) cannot be had here; says how to provide it."""


class ImageInputError(PtameError, ValueError):
    """An image that cannot be explained; the message says why, for the user."""


class NoImage(ImageInputError):
    """Nothing was given."""


class NotAnImage(ImageInputError):
    """The file is not an image format Pillow can read."""


class CorruptImage(ImageInputError):
    """The file claims to be an image but cannot be decoded (truncated or damaged)."""


class ImageTooSmall(ImageInputError):
    """The image's shorter side is below the smallest side a classifier can use."""


class ImageTooLarge(ImageInputError):
    """The file or its pixel count is over the limits (refused without decoding)."""
