"""Stage progress of a compile: the tqdm bar on stderr (when enabled), seconds and peak resident memory per stage."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


class RssSampler:
    """Peak resident memory of this process per stage: a daemon thread samples /proc/self/statm every 50 ms
    (the kernel's ru_maxrss gives the running peak when /proc is not there, and the high-water mark per stage
    catches what sampling misses). Every sample takes the GIL: at 20 ms it cost ~1 s of a 100 s compile."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._proc = Path("/proc/self/statm").exists()
        self._thread = threading.Thread(target=self._run, name="fg-edge-rss", daemon=True)
        if self._proc:
            self._thread.start()

    def _now(self) -> int:
        if self._proc:
            try:
                return int(Path("/proc/self/statm").read_text().split()[1]) * self._page
            except (OSError, ValueError, IndexError):
                return 0
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._now())

    def take(self) -> int:
        """Peak bytes since the last take(), and reset."""
        peak, self.peak = max(self.peak, self._now()), 0
        return peak

    def stop(self) -> None:
        self._stop.set()


class Progress:
    """Stage display on stderr (tqdm); silent when disabled. Records seconds and peak RSS per stage."""

    def __init__(self, stages: list[str], enabled: bool):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(stages), desc="compile", unit="stage", file=sys.stderr, leave=False,
                            bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar:20}| {elapsed}")
        self.t0 = time.perf_counter()
        self.times: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.high_water: dict[str, float] = {}
        self.rss = RssSampler()

    def stage(self, name: str) -> None:
        self._current = name
        self._start = time.perf_counter()
        self.rss.take()
        if self.bar is not None:
            self.bar.set_description_str(f"compile: {name}")
        log.debug("stage: %s", name)

    def done(self) -> None:
        self.times[self._current] = round(time.perf_counter() - self._start, 3)
        self.peaks[self._current] = round(self.rss.take() / 2**20, 1)
        # the sampler thread needs the GIL and misses spikes inside long C++ calls (torch.onnx.export's
        # serialisation); the kernel's high-water mark at the end of each stage shows where the true peak was
        import resource

        self.high_water[self._current] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        log.debug("stage %s: %.1f s, peak RSS %.0f MiB", self._current, self.times[self._current],
                  self.peaks[self._current])
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        self.rss.stop()
        if self.bar is not None:
            self.bar.close()
