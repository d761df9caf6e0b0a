"""Files of a Debian package, fetched on first use into ptame's cache and never committed.

The objects world (``ptame.datasets.objects``) draws Tux Paint's photographed stamps
(``tuxpaint-stamps-default``, GPL-2) on KDE Plasma's photographed wallpapers
(``plasma-workspace-wallpapers``, LGPL-3 and CC-BY-SA-4.0). Their licences allow fetching and
using them, not committing them to an Apache-2.0 repository, so ``package_folder`` fetches a
package's ``.deb`` with ``apt-get download`` (it needs no root, only Debian's package lists) and
unpacks it with ``dpkg-deb -x`` into ``cache_root()/debian/NAME`` (about 160 MB for the stamps,
95 MB for the wallpapers). The unpacking happens in a temporary folder renamed into place at the
end, so an interrupted fetch leaves nothing half-written. A folder the user names instead (an
environment variable, see ``ptame.datasets.objects``) is never fetched into.
"""

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from ptame.efficientnet_lite0 import cache_root
from ptame.errors import DataUnavailable

log = logging.getLogger(__name__)

FETCH_SECONDS = 600  # apt-get download and dpkg-deb -x, each at most this long


def _run(command: list[str], folder: Path, what: str) -> None:
    try:
        subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True, timeout=FETCH_SECONDS)
    except FileNotFoundError:
        raise DataUnavailable(f"{what}: the command {command[0]!r} is not installed (a Debian system has it)") from None
    except subprocess.TimeoutExpired:
        raise DataUnavailable(f"{what}: {' '.join(command)} took more than {FETCH_SECONDS} s") from None
    except subprocess.CalledProcessError as error:
        reason = (error.stderr or error.stdout or "").strip().splitlines()[-1:] or ["no message"]
        raise DataUnavailable(f"{what}: {' '.join(command)} failed ({reason[0]})") from None


def package_folder(package: str, cache: Path | None = None) -> Path:
    """The unpacked files of a Debian package (its root: ``usr/share/...`` below it), fetched once.

    Args:
        package: the Debian package name, e.g. "tuxpaint-stamps-default".
        cache: where fetched packages are kept; None: ``cache_root()/debian`` ($PTAME_CACHE,
            $XDG_CACHE_HOME/ptame or ~/.cache/ptame).

    Raises:
        DataUnavailable: the package cannot be fetched or unpacked here (not a Debian system, no
            package lists, no network to Debian's mirrors); the message says which step failed.
    """
    cache = Path(cache) if cache is not None else cache_root() / "debian"
    folder = cache / package
    if folder.is_dir():
        return folder
    what = f"cannot fetch Debian's {package}"
    cache.mkdir(parents=True, exist_ok=True)
    log.warning("fetching Debian's %s into %s (once)", package, folder)
    with tempfile.TemporaryDirectory(prefix=f".{package}.", dir=cache) as staging:
        staging_path = Path(staging)
        _run(["apt-get", "download", package], staging_path, what)
        debs = sorted(staging_path.glob(f"{package}_*.deb"))
        if not debs:
            raise DataUnavailable(f"{what}: apt-get download wrote no {package}_*.deb")
        unpacked = staging_path / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], staging_path, what)
        try:
            unpacked.rename(folder)
        except OSError:  # another process fetched it meanwhile
            if not folder.is_dir():
                raise
            shutil.rmtree(unpacked, ignore_errors=True)
    return folder
