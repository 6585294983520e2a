"""Silencing chatty libraries for the length of one call, without leaving a logger level changed afterwards."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional


@contextlib.contextmanager
def quieter(logger_name: Optional[str], level: int) -> Iterator[None]:
    """Raise the level of logger `logger_name` (None: the root logger) to at least `level` for the block; its own
    level (also NOTSET) is restored on exit, also on error."""
    logger = logging.getLogger(logger_name)
    old = logger.level
    logger.setLevel(max(old, level))
    try:
        yield
    finally:
        logger.setLevel(old)
