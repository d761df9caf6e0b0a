"""The two lanes of model work, each one computation at a time, and the torch threads they use.

The fast lane runs the classifier and P-TAME passes and Grad-CAM; the slow lane the streamed
methods (Score-CAM, RISE) and the deletion/insertion curves: hundreds to thousands of passes. So
at most two computations share the memory, and a visitor's P-TAME map never waits behind another
visitor's minutes of Score-CAM. Given ``lane_threads``, each lane computes with that many torch
threads (the app: half the cores each), and a slow computation takes every core between its
batches while the fast lane is idle.
"""

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

LANES = 2  # the fast and the slow lane

Progress = Callable[[int, int], None]  # (done, total)


def threads_per_lane(cores: int | None = None) -> int:
    """Torch CPU threads per lane, so that both lanes together use each core once.

    Oversubscribed cores are far worse than idle ones for torch's OpenMP kernels: each parallel
    region waits for its slowest thread, and a thread that shares its core with another process
    stalls every region (a ResNet-50 pass went from 0.09 s on 1 thread to 1.5 s on 2 threads with
    one of the 2 cores busy, on the development machine).

    Args:
        cores: CPU cores to share (default: ``os.cpu_count()``).
    """
    return max(1, (cores or os.cpu_count() or 1) // LANES)


class Lanes:
    """The fast and the slow lane.

    Args:
        lane_threads: torch threads of each lane's computations, or None to leave the calling
            thread's count alone (one caller at a time, as the command line).
        cores: the threads a slow computation may take while the fast lane is idle (default: all
            cores); only with ``lane_threads``.
    """

    def __init__(self, lane_threads: int | None = None, cores: int | None = None) -> None:
        if lane_threads is not None and lane_threads < 1:
            raise ValueError(f"lane_threads must be >= 1, got {lane_threads}")
        self.lane_threads = lane_threads
        self.cores = max(cores or os.cpu_count() or 1, lane_threads or 1)
        self.fast_lane = threading.Lock()
        self.slow_lane = threading.Lock()

    @contextmanager
    def fast(self) -> Iterator[None]:
        """Hold the fast lane (waiting for it), with the lane's torch threads."""
        with self.fast_lane, self._threads():
            yield

    @contextmanager
    def slow(self) -> Iterator[None]:
        """Hold the slow lane (waiting for it), with the lane's torch threads."""
        with self.slow_lane, self._threads():
            yield

    def borrowing_idle_cores(self, progress: Progress | None) -> Progress | None:
        """A slow computation's progress callback that, before each of its batches, gives it every
        core while the fast lane is idle and the lane's share otherwise (a fast request arriving
        mid-batch shares the cores until that batch ends)."""
        if self.lane_threads is None:
            return progress
        lane_threads = self.lane_threads

        def report(done: int, total: int) -> None:
            torch.set_num_threads(lane_threads if self.fast_lane.locked() else self.cores)
            if progress is not None:
                progress(done, total)

        return report

    @contextmanager
    def _threads(self) -> Iterator[None]:
        if self.lane_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.lane_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)
