"""Every error ptame raises on purpose: one base, and each error also the builtin it resembles.

Catch ``PtameError`` for all of them, or the builtin (``ValueError`` for bad input, ``LookupError``
for a model that is not there, ``RuntimeError`` for a failure while running). Messages are written
for the person who gave the input: they say what is wrong and, where it helps, what to do.
"""


class PtameError(Exception):
    """The base of ptame's errors."""


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
