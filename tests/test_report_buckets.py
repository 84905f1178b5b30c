"""Report buckets follow the run's own length range; the GPU table is read from the result files."""

from __future__ import annotations

import json

import pytest

from openrlhf_das.cli import train
from openrlhf_das.policy import AcceptanceTracker, bucket_labels
from openrlhf_das.reports.gpu_results import gpu_rows
from openrlhf_das.reports.length_buckets import DEFAULT_EDGES, edges_for


@pytest.mark.parametrize("max_len, edges", [(256, (64, 128, 192)), (24, (6, 12, 18)), (4096, (1024, 2048, 3072)),
                                            (3, (1, 2)), (1, (1,))])
def test_edges_split_the_range_evenly(max_len, edges) -> None:
    assert edges_for(max_len) == edges


def test_a_256_token_run_fills_four_buckets() -> None:
    """With the built-in edges every response of a 256-token run lands in bucket 0-1k; with the
    run's own edges the tracker spreads them over four."""
    lengths = range(0, 256, 7)
    for edges, used in ((DEFAULT_EDGES, 1), (edges_for(256), 4)):
        tracker = AcceptanceTracker(edges)
        for i, n in enumerate(lengths):
            tracker.on_proposed(str(i), 2, _medium(), n)
            tracker.on_verified(str(i), 2)
        assert sum(1 for c in tracker.snapshot()["by_bucket"].values() if c["drafted"]) == used
    assert bucket_labels(edges_for(256)) == ["0-64", "64-128", "128-192", "192+"]


def _medium():
    from openrlhf_das.config import LengthClass

    return LengthClass("medium")


def test_train_cli_derives_buckets_from_max_new_tokens_unless_chosen() -> None:
    das = train.split_argv(["--das", "--rollout.max_new_tokens", "512"])
    assert train.resolve(das)[0].length_buckets == (128, 256, 384)
    chosen = train.split_argv(["--das", "--das.length_buckets", "[100,200]", "--rollout.max_new_tokens", "512"])
    assert train.resolve(chosen)[0].length_buckets == (100, 200)
    assert train.resolve(train.split_argv(["--das"]))[0].length_buckets == DEFAULT_EDGES  # no range given


def test_gpu_table_ratios_come_from_the_files_seconds(tmp_path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({
        "args": {"model": "/m/qwen", "dataset": "math500", "problems": 2, "samples": 4, "epochs": 3, "max_tokens": 64},
        "machine": {"gpu": "NVIDIA H100 80GB HBM3"},
        "summary": {"nospec": {"all_epochs_s": 10.0, "epochs1plus_s": 6.0},
                    "das_async": {"all_epochs_s": 8.0, "epochs1plus_s": 3.0},
                    "ngram": {"all_epochs_s": 20.0}}}))
    (tmp_path / "other-shape.json").write_text(json.dumps({"summary": {"sync": 1.0}}))
    (tmp_path / "broken.json").write_text("{")
    (row,) = gpu_rows(tmp_path)
    assert row["mode"] == "das_async" and row["gpu"] == "H100" and row["model"] == "qwen"
    assert row["nospec"] == pytest.approx(0.8) and row["nospec_later"] == pytest.approx(0.5)
    assert row["nospec_sync"] is None


def test_gpu_table_of_the_committed_results() -> None:
    from openrlhf_das.cli.demo import GPU_RESULTS

    rows = gpu_rows(GPU_RESULTS)
    assert rows and {r["gpu"] for r in rows} >= {"H100", "H200"}
    for r in rows:
        s = json.loads((GPU_RESULTS / r["file"]).read_text())["summary"]
        if r["nospec"] is not None:
            assert r["nospec"] == pytest.approx(s[r["mode"]]["all_epochs_s"] / s["nospec"]["all_epochs_s"])
