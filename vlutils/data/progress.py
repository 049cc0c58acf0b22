"""Progress of a preparation job: a one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

logger = logging.getLogger(__name__)


class Progress:
    """Counts records, tokens and rejections (from shard reports); draws at most every ``interval`` seconds.
    A resumed job starts from the counts of the shards it reuses, so the line and the final
    summary agree.

    ``stream`` is a terminal: a redrawn bar. Otherwise: an INFO log line every
    ``log_every`` seconds. ``quiet``: nothing.
    """

    def __init__(self, total: int | None, *, done: int = 0, rejected: int = 0, tokens: int = 0, quiet: bool = False,
                 stream: TextIO | None = None, interval: float = 0.2, log_every: float = 10.0):
        self.total, self.done, self.start_done = total, done, done
        self.tokens, self.rejected, self.start_tokens = tokens, rejected, tokens
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_every
        self.started = self.last_draw = time.monotonic()

    def update(self, report: dict) -> None:
        """Count one finished shard (its report)."""
        self.done += report["records"]
        self.tokens += report["stats"]["tokens"]
        self.rejected += len(report["rejected"])
        now = time.monotonic()
        if now - self.last_draw >= self.interval:
            self.last_draw = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        elapsed = max((now or time.monotonic()) - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        total = f"/{self.total}" if self.total is not None else ""
        return (f"{self.done}{total} records  {rate:.1f} rec/s  {(self.tokens - self.start_tokens) / elapsed:.0f} tok/s  "
                f"{self.rejected} rejected  {elapsed:.0f}s")

    def _draw(self, now: float) -> None:
        if self.quiet:
            return
        if not self.tty:
            logger.info("prepare: %s", self.line(now))
            return
        bar = ""
        if self.total:
            filled = int(30 * min(self.done / self.total, 1.0))
            bar = "[" + "#" * filled + "." * (30 - filled) + "] "
        self.stream.write("\r" + bar + self.line(now) + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.quiet:
            return
        if self.tty:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()
        else:
            logger.info("prepare: done: %s", self.line())
