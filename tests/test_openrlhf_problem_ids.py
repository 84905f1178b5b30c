"""Problem identity for OpenRLHF prompts: explicit row ids, else sha1 of the prompt text; the
same in every process (other hash seeds, through OpenRLHF's real ``PromptDataset``). Also the
trainer-side pieces that use the ids without Ray: engine routing proxies, rollout capture."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np

from openrlhf_das.config import DASConfig
from openrlhf_das.integrations.openrlhf import problem_ids, samples, settings
from openrlhf_das.ray.sharding import engine_for_problem

ROWS = [
    {"problem_id": "mmath/MATH500/3", "prompt": "How many divisors does 196 have?", "label": "9"},
    {"id": 17, "prompt": "What is 2+2?", "label": "4"},
    {"prompt": "No id here: solve x+1=2.", "label": "1"},
    {"problem_id": "", "prompt": "Empty id falls back to the hash. \u00e9\u00e8", "label": "0"},
]

# Runs in a fresh interpreter: OpenRLHF's PromptDataset (patched) over ROWS, then resolve().
CHILD = r"""
import json, sys
from types import SimpleNamespace
from openrlhf_das.integrations.openrlhf import patches, problem_ids
patches.apply()
from openrlhf.datasets.prompts_dataset import PromptDataset
rows = json.loads(sys.argv[1])
args = SimpleNamespace(data=SimpleNamespace(input_key="prompt", label_key="label", apply_chat_template=False, image_key="images"))
strategy = SimpleNamespace(args=args, is_rank_0=lambda: False)
ds = PromptDataset(rows, tokenizer=None, strategy=strategy, input_template="Q: {}")
print(json.dumps({"prompts": ds.prompts, "ids": [problem_ids.resolve(p) for p in ds.prompts], "hash": hash("x")}))
"""


def test_ids_from_rows():
    assert problem_ids.problem_id_for_row(ROWS[0], "anything") == "mmath/MATH500/3"
    assert problem_ids.problem_id_for_row(ROWS[1], "anything") == "17"
    p = ROWS[2]["prompt"]
    assert problem_ids.problem_id_for_row(ROWS[2], p) == hashlib.sha1(p.encode()).hexdigest()[:16]
    assert problem_ids.problem_id_for_row(ROWS[3], "x") == problem_ids.prompt_hash("x")


def test_register_and_resolve():
    problem_ids.reset()
    try:
        assert problem_ids.register(ROWS[0], "P0") == "mmath/MATH500/3"
        assert problem_ids.resolve("P0") == "mmath/MATH500/3"
        assert problem_ids.register({"problem_id": "other"}, "P0") == "mmath/MATH500/3"  # first id wins
        assert problem_ids.resolve("unseen") == problem_ids.prompt_hash("unseen")
    finally:
        problem_ids.reset()


def test_ids_identical_across_processes():
    env = {**os.environ, settings.DAS_CONFIG_ENV: DASConfig().to_json()}
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(ROWS)], env={**env, "PYTHONHASHSEED": seed},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in ("1", "2")
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    a, b = outs
    assert a["hash"] != b["hash"]  # the processes really hash differently
    assert a["ids"] == b["ids"]
    prompts = a["prompts"]
    assert prompts[0] == "Q: " + ROWS[0]["prompt"]  # ids come from the prompt as generated from
    assert a["ids"] == ["mmath/MATH500/3", "17", problem_ids.prompt_hash(prompts[2]), problem_ids.prompt_hash(prompts[3])]


class _Method:
    def __init__(self, engine, name):
        self.engine, self.name = engine, name

    def remote(self, *args, **kwargs):
        self.engine.calls.append((self.name, args, kwargs))
        return (self.engine.index, kwargs.get("problem_id"))


class _Engine:
    """Stand-in for a Ray actor handle."""

    def __init__(self, index):
        self.index, self.calls = index, []

    def __getattr__(self, name):
        return _Method(self, name)


def _state(sticky):
    st = object.__new__(samples.GeneratorState)
    st.sticky, st.captured, st.capturing = sticky, [], True
    return st


def test_routing_proxies_tag_and_pin_requests():
    engines = [_Engine(i) for i in range(3)]
    prompts = [f"prompt {i}" for i in range(12)]
    st = _state(sticky=True)
    proxies = [samples._RoutedEngine(engines, i, st) for i in range(3)]
    before = problem_ids.resolutions()
    for i, p in enumerate(prompts):  # OpenRLHF's balancer picks engine i % 3; sticky overrides it
        idx, pid = proxies[i % 3].generate_responses.remote(prompt=p, label="", num_samples=4)
        assert pid == problem_ids.prompt_hash(p) and idx == engine_for_problem(pid, 3)
    assert problem_ids.resolutions() - before == len(prompts)  # once per dispatched prompt
    assert {idx for e in engines for (_, _, kw) in e.calls for idx in [e.index]} == {0, 1, 2}
    first = next(kw for e in engines for (_, _, kw) in e.calls if kw["prompt"] == prompts[0])
    # classes reach the engines with their history (one channel), not with each request
    assert "length_class" not in first and first["num_samples"] == 4
    # not sticky: OpenRLHF's choice stands, the request is still tagged
    st.sticky = False
    assert proxies[2].generate_responses.remote(prompt="p", label="") == (2, problem_ids.prompt_hash("p"))
    # other methods go straight to the proxied engine
    assert proxies[1].get_num_unfinished_requests.remote() == (1, None)


def test_capture_turns_a_response_into_a_rollout():
    st = _state(sticky=True)
    response = {
        "prompt": "P",
        "observation_tokens": [5, 6, 7, 10, 11, 12, 99, 13],
        "action_ranges": [(3, 6), (7, 8)],  # two turns; token 99 is environment feedback
        "reward": np.float32(0.5),
    }
    st.capture(response)  # no id carried (not a DAS rollout actor): resolved from the prompt
    [r] = st.captured
    assert r["problem_id"] == problem_ids.prompt_hash("P")
    # the prompt is only counted by the history actor: its length travels, not its tokens
    assert r["prompt_tokens"] == 3 and "prompt_token_ids" not in r
    assert r["response_token_ids"].tolist() == [10, 11, 12, 13]
    assert r["reward"] == 0.5
    st.capture({"prompt": "Q", "observation_tokens": [1], "action_ranges": []})  # nothing generated
    assert len(st.captured) == 1


def test_capture_takes_the_carried_problem_id_and_ships_no_prompt_tokens():
    """The DAS rollout actor returns the id it was dispatched with (``das_problem_id``): the
    trainer does not resolve the prompt a second time; a long prompt adds 8 bytes, not 4 per token."""
    import pickle

    st = _state(sticky=True)
    prompt = list(range(5, 2005))  # 2,000 prompt tokens
    before = problem_ids.resolutions()
    st.capture({"prompt": "some prompt text", "das_problem_id": "gsm8k-17",
                "observation_tokens": prompt + [10, 11, 12], "action_ranges": [(2000, 2003)], "reward": 1.0})
    assert problem_ids.resolutions() == before
    [r] = st.captured
    assert r["problem_id"] == "gsm8k-17" and r["prompt_tokens"] == 2000
    assert len(pickle.dumps(r, protocol=5)) < 600  # 2,000 prompt tokens would be 8,000 bytes
