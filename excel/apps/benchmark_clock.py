"""The benchmark's clock: timed stages, the forwards inside them, peak memory, rounds and their medians
(excel/apps/benchmark.py builds the stages and writes the report)."""
from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch


@dataclass
class Stage:
    """A timed callable: ``setup`` (untimed) makes its argument, ``run`` is what the clock measures."""

    name: str
    description: str
    reference: str
    run: Callable[[Any], Any]
    setup: Callable[[], Any] = lambda: None
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0
    inner: InnerForwards | None = None


@dataclass
class InnerForwards:
    """The forwards inside a stage's timed calls, reported as a stage of their own (``name``)."""

    name: str
    description: str
    reference: str
    clock: ForwardClock


class MemoryProbe:
    """Peak memory of one stage: the CUDA allocator's peak, or the process's peak resident size (Linux
    VmHWM, reset before each stage; elsewhere the lifetime peak)."""

    def __init__(self, device: torch.device):
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        scale = 1 if platform.system() == "Darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class ForwardClock:
    """Wraps a forward function and adds up the seconds spent inside it, one total per :meth:`measure` call."""

    def __init__(self, forward: Callable[..., Any], device: torch.device):
        self.forward, self.device = forward, device
        self.totals: list[float] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _synchronize(self.device)
        start = time.perf_counter()
        out = self.forward(*args, **kwargs)
        _synchronize(self.device)
        self.totals[-1] += time.perf_counter() - start
        return out

    def measure(self, run: Callable[[], Any]) -> Any:
        self.totals.append(0.0)
        return run()

    def measure_module(self, module: torch.nn.Module, run: Callable[[], Any]) -> Any:
        """:meth:`measure` with ``module``'s forward timed by this clock (``forward`` is its own method)."""
        module.forward = self
        try:
            return self.measure(run)
        finally:
            del module.forward


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stage(stage: Stage, device: torch.device, memory: MemoryProbe) -> float:
    """Seconds one call of the stage takes (its setup excluded); records the stage's peak memory."""
    argument = stage.setup()
    _synchronize(device)
    memory.reset()
    start = time.perf_counter()
    stage.run(argument)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    stage.peak_bytes = max(stage.peak_bytes, memory.peak_bytes())
    return elapsed


def inner_stages(stages: Sequence[Stage], warmup: int) -> list[Stage]:
    """The forwards timed inside the stages' calls, each as a stage of its own (warm-up rounds dropped)."""
    return [Stage(s.inner.name, s.inner.description, s.inner.reference, run=lambda _: None,
                  times=s.inner.clock.totals[warmup:], peak_bytes=s.peak_bytes)
            for s in stages if s.inner is not None]


def run_rounds(stages: Sequence[Stage], device: torch.device, repeats: int, warmup: int) -> None:
    """``warmup`` + ``repeats`` rounds, each timing every stage once; keeps the times after the warm-up."""
    memory = MemoryProbe(device)
    for round_index in range(warmup + repeats):
        elapsed = {stage.name: time_stage(stage, device, memory) for stage in stages}
        if round_index >= warmup:
            for stage in stages:
                stage.times.append(elapsed[stage.name])
        print(f"round {round_index + 1}/{warmup + repeats}{' (warm-up)' if round_index < warmup else ''}: "
              + ", ".join(f"{name} {seconds:.3f}s" for name, seconds in elapsed.items()), flush=True)


def summarise(stages: Sequence[Stage]) -> dict[str, dict[str, Any]]:
    """Median and minimum seconds, ratio to the reference forward and peak memory of every stage.

    The ratio is the median over rounds of (stage time / reference forward time of the same round), so
    that a slow round, e.g. from other work on the machine, counts for both sides of the ratio.
    """
    times = {stage.name: stage.times for stage in stages}
    return {
        stage.name: {
            "description": stage.description,
            "reference": stage.reference,
            "median_s": statistics.median(stage.times),
            "min_s": min(stage.times),
            "ratio": statistics.median(t / ref for t, ref in zip(stage.times, times[stage.reference])),
            "times_s": stage.times,
            "peak_memory_mib": stage.peak_bytes / 2**20,
        }
        for stage in stages
    }
