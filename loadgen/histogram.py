"""Latency histograms: HdrHistogram in microseconds, mergeable across processes.

HDR keeps a fixed relative precision (3 significant digits: 0.1%) over the whole
range, 1 us to an hour, in a fixed ~180 KiB, and two histograms merge by
adding counts: the exact merged percentiles, which averaging percentiles is not.
Histograms cross process boundaries in HDR's standard compressed encoding.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
PERCENTILES = (50.0, 90.0, 99.0, 99.9)


class LatencyHistogram:
    """Latencies recorded in seconds, stored in microseconds; values past the
    range are clamped to it (and never silently dropped)."""

    def __init__(self, digits: int = 3) -> None:
        self.digits = digits
        self.hdr = HdrHistogram(LOWEST_US, HIGHEST_US, digits)

    def record(self, seconds: float) -> None:
        micros = int(seconds * 1e6)
        self.hdr.record_value(min(max(micros, LOWEST_US), HIGHEST_US))

    @property
    def count(self) -> int:
        return int(self.hdr.get_total_count())

    def percentile(self, p: float) -> float:
        """Seconds at percentile ``p`` (0-100); 0 when empty."""
        return self.hdr.get_value_at_percentile(p) / 1e6 if self.count else 0.0

    def max(self) -> float:
        return self.hdr.get_max_value() / 1e6 if self.count else 0.0

    def min(self) -> float:
        return self.hdr.get_min_value() / 1e6 if self.count else 0.0

    def mean(self) -> float:
        return self.hdr.get_mean_value() / 1e6 if self.count else 0.0

    def add(self, other: LatencyHistogram) -> None:
        self.hdr.add(other.hdr)

    def cdf(self, tail_points: int = 20) -> list[tuple[float, float]]:
        """(seconds, fraction at or below) pairs: every percentile 0..99, then
        the tail finely (``tail_points`` per decade of 1 - p, down to 99.999),
        then the max."""
        if not self.count:
            return []
        fractions = [i / 100 for i in range(100)]
        decades = 3  # 99 -> 99.999
        fractions += [1.0 - 10 ** (-2.0 - k / tail_points) for k in range(1, decades * tail_points + 1)]
        out = [(self.percentile(100.0 * f), f) for f in fractions]
        out.append((self.max(), 1.0))
        return out

    def encode(self) -> str:
        """HDR's standard compressed form (base64 text: ``HISTF...``), as HdrHistogram's
        other implementations read it."""
        return self.hdr.encode().decode("ascii") if self.count else ""

    @classmethod
    def decode(cls, text: str, digits: int = 3) -> LatencyHistogram:
        hist = cls(digits)
        if text:
            hist.hdr.decode_and_add(text.encode("ascii"))
        return hist
