"""What an export left out, counted by reason: one tally that every exporter fills and the CLI prints."""

from __future__ import annotations

from collections import Counter


class LeftOut(Counter):
    def add(self, reason: str) -> None:
        self[reason] += 1

    def describe(self) -> str:
        """`3 too short, 1 unsafe id`, reasons in order; empty when nothing was left out."""
        return ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(self.items()))
