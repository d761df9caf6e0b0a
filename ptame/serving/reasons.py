"""Why a model cannot be loaded, in two forms: a short reason for the app's visitors, the details
for the log.

A visitor reads the reason on the page (the Models panel, the P-TAME panel, the API's listing):
it says what is wrong in ptame's words, with no path of the server's disk (a path is cut to its
last part, "…/config.json"). The log keeps the whole message and what caused it (another
library's own message, with its advice to a programmer, is only ever the ``__cause__`` of a ptame
error, never part of its message).
"""

import logging
import re

from ptame.errors import MAX_DETAILS_CHARS, PtameError, shorten

logger = logging.getLogger(__name__)

# A path of the server's disk: "/", "~/", "./" or "../" then no space or quote, starting a word
# ("org/name" and "https://host/..." are not paths).
SERVER_PATH = re.compile(r"(?<![\w/.~-])(?:~|\.{1,2})?/(?!/)[^\s'\"]+")
TRAILING = ".,;:)]"  # punctuation that ends a sentence after a path, not part of it


def _last_part(found: re.Match[str]) -> str:
    path = found[0]
    tail = len(path) - len(path.rstrip(TRAILING))
    path, after = path[: len(path) - tail], path[len(path) - tail :]
    return "…/" + path.rstrip("/").rsplit("/", 1)[-1] + after


def visitor_text(text: str) -> str:
    """``text`` as a visitor may read it: every path of the server's disk cut to its last part
    ("/srv/models/x/config.json" -> "…/config.json"), at most ``ptame.errors.MAX_MESSAGE_CHARS``."""
    return shorten(SERVER_PATH.sub(_last_part, text))


def error_details(error: BaseException) -> str:
    """The whole story of an error for the log: its details (a ``PtameError``'s ``details``), then
    each cause's type and message (unless said already), at most ``ptame.errors.MAX_DETAILS_CHARS``."""
    parts = [error.details if isinstance(error, PtameError) else str(error) or type(error).__name__]
    cause, seen = error.__cause__, {id(error)}
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if str(cause) not in parts[0]:
            parts.append(f"caused by {type(cause).__name__}: {cause}")
        cause = cause.__cause__
    return shorten("; ".join(parts), MAX_DETAILS_CHARS)


def failure_reason(error: BaseException, what: str) -> str:
    """Log ``what`` with the error's details (``error_details``, at WARNING); return its short
    reason for visitors (``visitor_text``)."""
    logger.warning("%s: %s", what, error_details(error))
    return visitor_text(str(error)) or type(error).__name__
