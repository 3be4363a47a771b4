"""Where the built-in datasets live: the data directory setting.

fedblend never downloads data. The built-in loaders read files from a *data directory*, found in
this order:

1. the explicit argument (the CLI's ``--data-dir`` option, a job file's ``data_dir``);
2. the ``FEDBLEND_DATA_DIR`` environment variable;
3. ``../shared/data`` next to the repository checkout (the layout this project ships with).

A directory that cannot be found, or a file missing inside it, is a ``DataError`` that names the
setting to fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedblend.errors import DataError

__all__ = ["DATA_DIR_ENV", "resolve_data_dir", "data_file"]

log = logging.getLogger(__name__)

DATA_DIR_ENV = "FEDBLEND_DATA_DIR"

_HOW_TO_SET = (
    f"pass --data-dir PATH (or data_dir= in code / the job file), or set the {DATA_DIR_ENV} "
    "environment variable to the directory that holds the datasets (see shared/data/README.md)"
)


def _repo_default() -> Path:
    # src/fedblend/data/datadir.py -> parents[3] is the repository root.
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory: ``explicit``, else ``$FEDBLEND_DATA_DIR``, else ``<repo>/../shared/data``.

    Raises ``DataError`` when the chosen directory does not exist (naming where the path came from)
    or when no setting is given and the default is absent.
    """
    if explicit is not None and str(explicit) != "":
        path, source = Path(explicit).expanduser(), "the --data-dir option / data_dir argument"
    elif os.environ.get(DATA_DIR_ENV):
        path, source = Path(os.environ[DATA_DIR_ENV]).expanduser(), f"the {DATA_DIR_ENV} environment variable"
    else:
        path = _repo_default()
        if not path.is_dir():
            raise DataError(
                f"no data directory is configured and the default {str(path)!r} does not exist; {_HOW_TO_SET}"
            )
        log.debug("using default data directory %s", path)
        return path
    if not path.is_dir():
        raise DataError(
            f"data directory {str(path)!r} (from {source}) does not exist or is not a directory; {_HOW_TO_SET}"
        )
    return path


def data_file(data_dir: Path, relative: str, dataset: str) -> Path:
    """``data_dir / relative``, or a ``DataError`` naming the missing file and the setting."""
    path = data_dir / relative
    if not path.is_file():
        raise DataError(
            f"dataset {dataset!r} needs the file {relative!r}, which is not in the data directory "
            f"{str(data_dir)!r} (looked for {str(path)!r}); {_HOW_TO_SET}"
        )
    return path
