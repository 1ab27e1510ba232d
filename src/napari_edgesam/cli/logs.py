"""Logging for the command line: configured once, by :func:`napari_edgesam.cli.main` only.

Library modules only create loggers (``logging.getLogger(__name__)``); they never configure
logging, so that a program or notebook importing the package keeps its own settings.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def log_level(verbose: int, default: int = logging.WARNING) -> int:
    """The root level for ``verbose`` ``-v`` flags: ``default`` (a command's own, e.g. INFO for
    training), WARNING-10 per ``-v`` when lower, at most down to DEBUG."""
    return max(logging.DEBUG, min(default, logging.WARNING - 10 * min(verbose, 2)))


def configure_logging(verbose: int, default: int = logging.WARNING) -> int:
    """Configure the root logger for a command (level from :func:`log_level`, one format);
    third-party readers' chatter (tifffile) is silenced unless ``-v``. Returns the level."""
    level = log_level(verbose, default)
    logging.basicConfig(level=level, format=LOG_FORMAT)
    if verbose == 0:  # readers' own warnings (e.g. tifffile on a damaged file) would add lines
        logging.getLogger("tifffile").setLevel(logging.ERROR)
    return level
