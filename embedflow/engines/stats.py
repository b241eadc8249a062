"""What a run did, stage by stage: the figures behind ``explain(analyze=True)``.

>>> s = RunStats(stages=[StageStats("forward", items_out=10, busy=2.0)], wall=4.0, rows=10)
>>> s.bottleneck().name
'forward'
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StageStats:
    """What one stage did: items in and out, time busy, and time waiting on either side."""

    name: str
    items_in: int = 0
    items_out: int = 0
    busy: float = 0.0
    wait_in: float = 0.0
    wait_out: float = 0.0
    note: str = ""

    def line(self, wall: float) -> str:
        rate = self.items_out / self.busy if self.busy > 0 else 0.0
        share = 100 * self.busy / wall if wall > 0 else 0.0
        return (
            f"{self.name[:58]:<58} in {self.items_in:>7}  out {self.items_out:>7}  busy {self.busy:7.2f}s "
            f"({share:3.0f}%)  {rate:9.1f} items/s busy  waited for input {self.wait_in:6.2f}s, "
            f"for output {self.wait_out:6.2f}s{('  ' + self.note) if self.note else ''}"
        )


@dataclass
class RunStats:
    """Per-stage figures of one run, in pipeline order, and its wall time."""

    stages: list[StageStats] = field(default_factory=list)
    wall: float = 0.0
    rows: int = 0

    def bottleneck(self) -> StageStats | None:
        return max(self.stages, key=lambda s: s.busy, default=None)

    def report(self) -> str:
        lines = [f"run: {self.rows} rows in {self.wall:.2f}s ({self.rows / self.wall if self.wall else 0:.1f} rows/s)"]
        lines += ["  " + s.line(self.wall) for s in self.stages]
        slow = self.bottleneck()
        if slow is not None and self.wall > 0:
            lines.append(f"  busiest stage: {slow.name} ({100 * slow.busy / self.wall:.0f}% of the wall time)")
        return "\n".join(lines)
