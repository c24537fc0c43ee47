"""One size grammar and one duration grammar, for manifests, the CLI and the forensic filters."""

from __future__ import annotations

import pytest

from ebpfguard.common.units import parse_duration, parse_size
from ebpfguard.forensics import parse_when
from ebpfguard.manifest.load import Escalation, Resources


@pytest.mark.parametrize(("text", "n"), [("0", 0), ("4096", 4096), ("256Mi", 256 << 20), ("256M", 256_000_000),
                                          ("1Gi", 1 << 30), ("2G", 2 * 10**9), ("3Ki", 3072), ("3K", 3000),
                                          ("1Ti", 1 << 40)])
def test_sizes(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "Mi", "1.5Gi", "-1", "12 Mi", "1MB", "1mi", "0x10"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "s"), [("250ms", 0.25), ("60s", 60), ("15m", 900), ("2h", 7200), ("7d", 604800),
                                         ("1w", 604800)])
def test_durations(text: str, s: float) -> None:
    assert parse_duration(text) == s


@pytest.mark.parametrize("text", ["", "60", "1.5s", "s", "-1s", "1y"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_every_user_of_sizes_and_durations_agrees() -> None:
    assert Resources.parse({"memory": "64Mi"}).memory == parse_size("64Mi") == 64 << 20
    assert Escalation.parse({"window": "90s"}).window == parse_duration("90s") == 90.0
    now = 10**18
    assert parse_when("90s", now) == now - 90 * 10**9 and parse_when("2h", now) == now - 7200 * 10**9
