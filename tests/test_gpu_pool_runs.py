"""benchmarks/gpu/pool_runs.py: pooling engine_rollouts results of one workload over device calls."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "gpu" / "results"
spec = importlib.util.spec_from_file_location("pool_runs", ROOT / "benchmarks" / "gpu" / "pool_runs.py")
pool_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pool_runs)

MAX_TOKENS = 100
ARGS = {  # as engine_rollouts.py writes them (vars(args)), small
    "model": "/tmp/models/qwen2.5-coder-1.5b-instruct", "dataset": "math500",
    "prompts_file": "benchmarks/gpu/prompts/math500-qwen2.5-coder-0.5b.json", "problems": 3, "samples": 2,
    "epochs": 2, "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": 0, "k": 4, "modes": "nospec,das_gpu",
    "das": ["pad_drafts=true"], "device": "cuda", "cudagraph_mode": "FULL_DECODE_ONLY", "compile_mode": 3,
    "max_cudagraph_capture_size": None, "max_num_seqs": 1024, "max_model_len": 5120,
    "gpu_memory_utilization": 0.85, "out": "/root/out/a.json", "png": None, "trace": None, "engines": 1,
    "tensor_parallel": 1, "gpus": None, "merge": None, "child": None, "shard": 0, "sync_dir": None}
MACHINE = {"platform": "Linux", "python": "3.12.3", "cpus": 16, "device": "cuda", "gpu": "NVIDIA H100 80GB HBM3"}


def counts(drafted, accepted, verify):
    return {"drafted": drafted, "accepted": accepted, "verify_steps": verify, "decode_steps": verify,
            "acceptance_rate": accepted / drafted, "accepted_per_step": accepted / verify}


def das_stats(replays: int, memory: int) -> dict:
    """A das_gpu epoch's DAS stats, keys as the engine reports them (per epoch except the
    cumulative steps and graph counters)."""
    zero = {"drafted": 0, "accepted": 0, "verify_steps": 0, "decode_steps": 0, "acceptance_rate": 0.0,
            "accepted_per_step": 0.0}
    return {"enabled": True, "engine_faults": 0, "propose_seconds": 0.0003, "async_scheduling": True,
            "acceptance": {"total": counts(40, 20, 10),
                           "by_class": {"short": zero, "medium": counts(40, 20, 10), "long": zero},
                           "by_bucket": {"0-1k": counts(30, 10, 8), "1k-2k": counts(10, 10, 2), "2k-4k": zero}},
            "history": {"problems": 3, "sequences": 6, "tokens": 100, "estimated_bytes": 80000},
            "faults": 0, "steps": 15 * (replays // 10), "gated_steps": 5 * (replays // 10),
            "epoch_steps": 15, "epoch_gated_steps": 5,
            "device_drafter": True, "device_drafted_steps": 10, "device_gated_steps": 5, "host_seconds": 0.0003,
            "live_appends": 0, "drafting_graphs": 5, "drafting_graph_failures": 0,
            "drafting_graph_replays": replays, "drafting_eager_calls": 0, "append_graphs": 6,
            "append_graph_failures": 0, "append_graph_replays": replays + 5, "append_eager_calls": 0,
            "device_history": {"history_tokens": 100, "history_responses": 6, "history_problems": 3,
                               "memory_bytes": memory, "bytes_per_history_token": 16.0}}


def epoch(i: int, seconds: float, finish: list[float], lengths: list[int], das: dict | None = None) -> dict:
    """One epoch with the keys of a real one (benchmarks/gpu/results/*-longtail-run6.json)."""
    return {"epoch": i, "seconds": seconds, "output_tokens": sum(lengths), "requests": len(lengths),
            "tokens_per_second": sum(lengths) / seconds, "max_response_length": max(lengths),
            "mean_response_length": sum(lengths) / len(lengths), "das": das, "ranks_agree": None,
            "finish_seconds": finish, "response_lengths": lengths,
            "output_digests": [f"{i:012x}" for i in range(len(lengths))]}


def mode(name: str, epochs: list[dict]) -> dict:
    return {"mode": name, "engine_start_seconds": 15.0, "engine_started_at": 0.0, "engine_ready_at": 15.0,
            "max_cudagraph_capture_size": None, "problem_ids": ["p0", "p1", "p2"], "epochs": epochs,
            "engine_log": []}


def report(seed: int, results: dict, **args) -> dict:
    a = {**ARGS, "seed": seed, "modes": ",".join(results), "out": f"/root/out/s{seed}.json", **args}
    return {"args": a, "machine": dict(MACHINE), "weight_updates": False, "results": results, "summary": None}


L = [10, 20, 30, 40, 50, 60]
RUNAWAY = [10, 20, 30, 40, 50, MAX_TOKENS]


def two_calls() -> list[dict]:
    """Call 0 (seed 0): nospec, das_gpu, ngram_gpu; call 1 (seed 1): das_gpu, nospec.
    tail_running 2: bulk = the 4th of 6 finish times."""
    call0 = report(0, {
        "nospec": mode("nospec", [epoch(0, 10.0, [1, 2, 3, 4, 8, 10], L), epoch(1, 8.0, [1, 2, 3, 3, 6, 8], RUNAWAY)]),
        "das_gpu": mode("das_gpu", [epoch(0, 12.0, [2, 3, 4, 5, 9, 12], L, das_stats(10, 1000)),
                                    epoch(1, 6.0, [2, 3, 3, 4, 5, 6], L, das_stats(20, 2000))]),
        "ngram_gpu": mode("ngram_gpu", [epoch(0, 9.0, [1, 2, 3, 4, 5, 9], L), epoch(1, 9.0, [1, 2, 3, 4, 5, 9], L)]),
    })
    call1 = report(1, {
        "das_gpu": mode("das_gpu", [epoch(0, 11.0, [1, 2, 3, 5, 9, 11], L, das_stats(10, 1000)),
                                    epoch(1, 5.0, [1, 2, 3, 4, 4.5, 5], L, das_stats(20, 2000))]),
        "nospec": mode("nospec", [epoch(0, 10.0, [1, 2, 3, 4, 8, 10], L), epoch(1, 10.0, [1, 2, 3, 4, 8, 10], L)]),
    })
    return [call0, call1]


def test_bulk_seconds():
    f = [float(t) for t in range(1, 101)]
    assert pool_runs.bulk_seconds(f, 100, 64) == 36.0  # 100 - 36 = 64 still running
    assert pool_runs.bulk_seconds(f[:64], 64, 64) == 0.0  # starts at the threshold: all tail
    assert pool_runs.bulk_seconds([0.1, 0.2] + f, 100, 64) == 36.0  # early extra entries dropped
    assert pool_runs.bulk_seconds(f[:10], 100, 64) is None


def test_pool_synthetic():
    res = pool_runs.pool(two_calls(), ["c0.json", "c1.json"], "nospec", tail_running=2)
    assert res["modes"] == ["nospec", "das_gpu"]  # baseline first; ngram_gpu only in call 0
    assert any("ngram_gpu" in n for n in res["notes"])
    assert [c["order"] for c in res["calls"]] == [["nospec", "das_gpu", "ngram_gpu"], ["das_gpu", "nospec"]]
    assert [c["baseline_first"] for c in res["calls"]] == [True, False]
    p, b = res["pooled"]["das_gpu"], res["pooled"]["nospec"]
    assert (b["all_s"], p["all_s"]) == (38.0, 34.0)
    assert (b["bulk_s"], p["bulk_s"], b["tail_s"], p["tail_s"]) == (15.0, 18.0, 23.0, 16.0)
    r = p["ratio"]
    assert r["all"] == pytest.approx(34 / 38) and r["e0"] == pytest.approx(23 / 20)
    assert r["e1plus"] == pytest.approx(11 / 18)
    assert r["bulk"] == pytest.approx(18 / 15) and r["tail"] == pytest.approx(16 / 23)
    # bulk = 4th finish time: das_gpu e0 5 + 5, e1 4 + 4; nospec e0 4 + 4, e1 3 + 4
    assert (p["bulk_e0_s"], p["bulk_e1plus_s"], b["bulk_e0_s"], b["bulk_e1plus_s"]) == (10.0, 8.0, 8.0, 7.0)
    assert p["bulk_split"] == {"bulk_e0": pytest.approx(10 / 8), "bulk_e1plus": pytest.approx(8 / 7)}
    assert res["calls"][1]["modes"]["das_gpu"]["bulk_split"]["bulk_e1plus"] == pytest.approx(4 / 4)
    assert p["per_call_ratio"]["all"] == pytest.approx([1.0, 0.8])
    assert p["mean_call_ratio"]["all"] == pytest.approx(0.9)
    assert b["ratio"]["all"] == 1.0
    # runaways: one nospec response at max_tokens in call 0, epoch 1
    assert (b["runaways"], p["runaways"]) == (1, 0)
    assert b["runaways_per_call_epoch"] == [[0, 1], [0, 0]]
    assert p["ratio_no_runaway"] == {"ratio": pytest.approx(28 / 30), "epochs_kept": 3, "epochs": 4}
    # DAS stats: 4 epochs of (40 drafted, 20 accepted, 10 verify steps)
    d = p["das"]
    assert d["acceptance"]["total"]["tokens_per_verify_step"] == pytest.approx(3.0)
    assert d["acceptance"]["by_bucket"]["0-1k"]["tokens_per_verify_step"] == pytest.approx(10 / 8 + 1)
    assert d["acceptance"]["by_bucket"]["1k-2k"]["acceptance_rate"] == 1.0
    assert "2k-4k" not in d["acceptance"]["by_bucket"]  # nothing drafted there
    assert d["acceptance"]["epochs1plus_total"]["drafted"] == 80
    assert (d["drafted_steps"], d["gated_steps"], d["steps"]) == (40, 20, 60)
    assert d["host_us_per_drafted_step"] == pytest.approx(30.0)
    assert d["graphs"]["drafting_graph_replays"] == 40  # cumulative: last epoch of each call
    assert d["history_memory_bytes"] == 2000 and d["history_memory_source"] == "device_history.memory_bytes"
    assert b["das"] is None
    s = p["step_ms"]
    assert s["all_ms"] == pytest.approx(34 / 60 * 1e3)
    assert s["bulk_ms_per_gated_step"] == pytest.approx(18 / 20 * 1e3)
    assert s["tail_ms_per_drafted_step"] == pytest.approx(16 / 40 * 1e3)
    # nospec: steps ~ longest response (60, 100, 60, 60), bulk ~ 4th shortest (40 each)
    sb = b["step_ms"]
    assert sb["all_ms"] == pytest.approx(38 / 280 * 1e3)
    assert sb["bulk_ms_per_step"] == pytest.approx(15 / 160 * 1e3)
    assert sb["tail_ms_per_step"] == pytest.approx(23 / 120 * 1e3)
    md = pool_runs.markdown(res)
    assert "| das_gpu | 2 | 34.0 | 0.89× | 1.15× | 0.61× | 1.20× | 0.70× |" in md
    assert "NVIDIA H100 80GB HBM3" in md


@pytest.mark.parametrize("change, message", [
    (lambda r: r["args"].update(max_tokens=200), "max_tokens"),
    (lambda r: r["args"].update(das=["pad_drafts=false"]), "das"),
    (lambda r: r["machine"].update(gpu="NVIDIA H200"), "ran on NVIDIA H200"),
    (lambda r: r["results"].pop("nospec"), "no baseline"),
    (lambda r: r["results"].pop("das_gpu"), "only 'nospec'"),
])
def test_refusals(change, message):
    calls = two_calls()
    change(calls[1])
    with pytest.raises(ValueError, match=message):
        pool_runs.pool(calls, ["c0.json", "c1.json"], "nospec", tail_running=2)


def test_allowed_differences():
    calls = two_calls()  # seeds, modes, order and out differ already
    calls[1]["args"]["gpu_memory_utilization"] = 0.8
    calls[1]["args"]["merge"] = ["x.json", "y.json"]
    calls[1]["results"]["nospec_sync"] = {"mode": "nospec_sync", "error": "exit code 1"}
    res = pool_runs.pool(calls, ["c0.json", "c1.json"], "nospec", tail_running=2)
    notes = "\n".join(res["notes"])
    assert "gpu_memory_utilization (allowed)" in notes and "--merge of 2" in notes and "nospec_sync failed" in notes
    same_seed = two_calls()
    same_seed[1]["args"]["seed"] = 0
    assert any("seeds repeat" in n for n in pool_runs.pool(same_seed, ["a", "b"], "nospec", 2)["notes"])


def test_main_writes_json_png_and_table(tmp_path, capsys):
    files = []
    for i, rep in enumerate(two_calls()):
        files.append(tmp_path / f"call{i}.json")
        files[-1].write_text(json.dumps(rep))
    out = tmp_path / "pooled" / "x.json"
    assert pool_runs.main([*map(str, files), "--baseline", "nospec", "--tail-running", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| mode | calls | pooled total s | vs nospec: all | e0 | e1+ | bulk | tail |" in table
    data = json.loads(out.read_text())
    assert data["gpu"] == MACHINE["gpu"] and data["markdown"] == table.rstrip("\n")
    assert out.with_suffix(".png").stat().st_size > 0
    bad = copy.deepcopy(two_calls()[1])
    bad["args"]["problems"] = 64
    files[1].write_text(json.dumps(bad))
    assert pool_runs.main([*map(str, files), "--out", str(tmp_path / "y.json")]) == 2
    assert "refused" in capsys.readouterr().err and not (tmp_path / "y.json").exists()


def test_real_files(tmp_path, capsys):
    """Run 6 (nospec_sync, nospec, das_async in one call) and run 5b (das_async, then nospec: two
    calls merged): same workload and GPU, so they pool; docs/gpu.md gives 120.7 s vs 115.7 s."""
    files = [RESULTS / "2026-12-06-h100-qwen1.5b-longtail-run6.json",
             RESULTS / "2026-12-06-h100-qwen1.5b-longtail-schedgate.json"]
    out = tmp_path / "real.json"
    assert pool_runs.main([*map(str, files), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "GPU: NVIDIA H100 80GB HBM3" in table
    assert "| nospec | 2 | 115.7 | 1.00× |" in table
    assert "| das_async | 2 | 120.7 | 1.04× |" in table
    res = json.loads(out.read_text())
    assert res["modes"] == ["nospec", "das_async"]  # nospec_sync is only in run 6
    assert res["pooled"]["das_async"]["mean_call_ratio"]["all"] == pytest.approx((51.1 / 57.4 + 69.6 / 58.3) / 2,
                                                                                 abs=0.01)
    d = res["pooled"]["das_async"]["das"]
    assert 0.3 < d["acceptance"]["total"]["acceptance_rate"] < 0.6 and d["gated_steps"] > 0


def _timeline(plain_ms: float, drafted_ms: float | None) -> dict:
    """A step timeline: 4 bulk steps of 200 requests (``plain_ms`` each), then 3 tail steps of 40
    requests, drafted (``drafted_ms``) or, without it, plain at half the bulk's time; a step's
    time is the interval to the next call, so a last (untimed) call closes the epoch."""
    steps = [(200, 200, 0, plain_ms)] * 4
    steps += [(40, 200, 160, drafted_ms)] * 3 if drafted_ms is not None else [(40, 40, 0, plain_ms / 2)] * 3
    t = [0.0]
    for *_, ms in steps:
        t.append(t[-1] + ms / 1e3)
    steps.append(steps[-1])
    return pool_runs.step_timeline.summarize({"t": t, "n": [s[0] for s in steps], "tokens": [s[1] for s in steps],
                                              "spec": [s[2] for s in steps]})


def test_measured_step_timeline_pooled_against_the_baseline():
    calls = two_calls()
    for call in calls:
        for e in call["results"]["nospec"]["epochs"]:
            e["step_timeline"] = _timeline(6.0, None)
        for e in call["results"]["das_gpu"]["epochs"]:
            e["step_timeline"] = _timeline(9.0, 5.0)
    res = pool_runs.pool(calls, ["c0.json", "c1.json"], "nospec", tail_running=2)
    got = {(r["bucket"], r["kind"]): r for r in res["pooled"]["das_gpu"]["step_ratio"]}
    assert got[("129-256", "plain")]["ratio"] == pytest.approx(1.5)  # the gated bulk step
    assert got[("33-64", "drafted")]["ratio"] == pytest.approx(5.0 / 3.0, abs=1e-4)  # vs plain 40-request steps
    assert got[("33-64", "drafted")]["steps"] == 4 * 3  # 2 calls x 2 epochs
    assert res["pooled"]["nospec"]["step_timeline"]["by_kind"]["plain"]["steps"] == 4 * 7
    assert "ms per engine step, measured" in pool_runs.markdown(res)
    del calls[1]["results"]["nospec"]["epochs"][0]["step_timeline"]  # an older file: no measured table
    res = pool_runs.pool(calls, ["c0.json", "c1.json"], "nospec", tail_running=2)
    assert res["pooled"]["nospec"]["step_timeline"] is None and res["pooled"]["das_gpu"]["step_ratio"] is None
