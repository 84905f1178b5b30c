"""benchmarks/host_sampler.py: step windows and per-window tallies (the sampler thread is not
started; samples are taken with ``sample_once`` so nothing depends on timing)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import host_sampler  # noqa: E402


def marker_function(sampler: host_sampler.HostSampler) -> bool:
    return sampler.sample_once()


def test_windows_open_close_and_tally_by_step():
    s = host_sampler.HostSampler(threading.get_ident(), [(2, 3), (6, 2)])
    taken = []
    for step in range(1, 11):
        s.on_step()
        taken.append(marker_function(s))
    # window 1 covers steps 3-5, window 2 steps 7-8
    assert taken == [False, False, True, True, True, False, True, True, False, False]
    first, second = s.summary()
    assert (first["steps_sampled"], first["samples"]) == (3, 3)
    assert (second["steps_sampled"], second["samples"]) == (2, 2)
    names = [r["function"] for r in first["inclusive"]]
    assert any(n.endswith(":marker_function") for n in names)
    assert any(n.endswith(":test_windows_open_close_and_tally_by_step") for n in names)
    assert first["leaf"][0]["function"].endswith(":sample_once")
    assert first["leaf"][0]["share"] == 1.0


def test_window_cut_by_the_epoch_end_and_unreached_window():
    s = host_sampler.HostSampler(threading.get_ident(), [(1, 100), (500, 10)])
    for _ in range(4):
        s.on_step()
        s.sample_once()
    s.stop()  # the epoch ends inside the first window
    first, second = s.summary()
    assert first["steps_sampled"] == 3 and first["samples"] == 3
    assert "error" in second and second["delay"] == 500


def test_bad_windows_rejected():
    with pytest.raises(ValueError):
        host_sampler.HostSampler(threading.get_ident(), [(0, 0)])
    with pytest.raises(ValueError):
        host_sampler.HostSampler(threading.get_ident(), [])
