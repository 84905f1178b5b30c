"""The one validated configuration object of openrlhf-das.

Every knob of the drafter, the length-aware policy, the batch gate and the reports lives in
:class:`DASConfig`. Validation is strict and happens before any expensive work: unknown keys,
wrong types and out-of-range values raise :class:`DASConfigError` naming the offending key.
Defaults are the values used by the DAS authors' code (see ``docs/configuration.md``).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator


class DASConfigError(ValueError):
    """A DAS configuration is invalid; the message names the key(s) at fault."""


class LengthClass(str, Enum):
    """Length class of a problem/request. Ordered: short < medium < long."""

    SHORT = "short"
    MEDIUM = "medium"
    LONG = "long"

    @property
    def rank(self) -> int:
        return ("short", "medium", "long").index(self.value)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ClassBudget(_Strict):
    """Draft budget of one length class.

    ``tokens`` is the most draft tokens a request of the class gets per decode step (0 = no
    drafting); ``factor`` caps a draft at ``floor(match_len * factor + max_spec_offset)``.
    """

    tokens: int = Field(ge=0, le=64)
    factor: float = Field(gt=0.0, le=16.0)


class BudgetsConfig(_Strict):
    """Per-class budgets (authors' final values: short 0, medium 2 (x1.0), long 4 (x2.0))."""

    short: ClassBudget = ClassBudget(tokens=0, factor=1.0)
    medium: ClassBudget = ClassBudget(tokens=2, factor=1.0)
    long: ClassBudget = ClassBudget(tokens=4, factor=2.0)

    def of(self, length_class: LengthClass) -> ClassBudget:
        return getattr(self, length_class.value)

    @property
    def max_tokens(self) -> int:
        return max(self.short.tokens, self.medium.tokens, self.long.tokens)


class PromotionConfig(_Strict):
    """Online promotion of a running request, relative to the run (``policy/promotion.py``).

    With the run's limit ``max_new_tokens`` known, a request that has generated more than
    ``medium_fraction`` of it is at least medium and more than ``long_fraction`` of it long; a
    request that has generated more than the ``history_quantile`` of its problem's past response
    lengths is long; in a step with at most ``tail_running`` requests running, no request keeps a
    budget of 0 (they are the longest still running: the tail that sets the makespan).
    """

    medium_fraction: float = Field(default=0.15, gt=0.0, le=1.0)
    long_fraction: float = Field(default=0.3, gt=0.0, le=1.0)
    history_quantile: float | None = Field(default=0.75, ge=0.0, le=1.0)
    """None: no promotion from the problem's history."""
    tail_running: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "PromotionConfig":
        if self.long_fraction < self.medium_fraction:
            raise ValueError("promotion.long_fraction must be >= promotion.medium_fraction")
        return self


_OFF_WORD = BeforeValidator(lambda value: "off" if value is False else value)
"""YAML 1.1 reads a bare ``off`` as False (``mode: off``, ``--das gate.mode=off``): a ``mode``
field takes False as "off"."""


class RequestTuningConfig(_Strict):
    """Per-request tuning (``policy/tuning.py``, :class:`RequestTuner`): a multiplier ``scale`` of
    each request's budget (after class, promotion and cell tuning), driven by that request's own
    acceptance. Every ``window`` draft tokens of the request are judged: acceptance rate >=
    ``increase_at`` raises the scale by ``scale_step`` (at most ``max_scale``); below
    ``decrease_at`` the excess over 1 is halved, or, at or below 1, the scale is halved (down to
    ``min_scale``). Budget = ``round(tokens * scale)`` tokens (at least 1, at most the largest class
    budget) and factor ``factor * scale`` (at most ``tuning.max_factor``); a budget of 0 stays 0.
    In a step with at most ``promotion.tail_running`` running requests the scale is at least 1
    (the tail sets the makespan). ``min_scale`` 1: only upwards, within [budget, k];
    ``max_scale`` 1 (the default): only downwards, so a request whose drafts are rejected stops
    paying for them while the batch is full. Replayed (docs/configuration.md, "Length policy on
    replay"): raising budgets per request did not shorten the tail (its requests already draft at k);
    cutting them spends 30-40 % fewer rejected draft tokens but adds verify steps to the request
    that sets the makespan, a gain only where draft tokens cost (GPU-shaped cost model).
    """

    mode: Annotated[Literal["aimd", "off"], _OFF_WORD] = "off"
    classes: tuple[LengthClass, ...] = (LengthClass.MEDIUM, LengthClass.LONG)
    """Classes whose requests are scaled (a request of another class keeps its budget)."""
    window: int = Field(default=16, ge=1)
    increase_at: float = Field(default=0.3, ge=0.0, le=1.0)
    decrease_at: float = Field(default=0.1, ge=0.0, le=1.0)
    scale_step: float = Field(default=0.25, ge=0.0, le=16.0)
    min_scale: float = Field(default=0.25, gt=0.0, le=1.0)
    max_scale: float = Field(default=1.0, ge=1.0, le=64.0)

    @model_validator(mode="after")
    def _bounds(self) -> "RequestTuningConfig":
        if self.decrease_at > self.increase_at:
            raise ValueError("tuning.request.decrease_at must be <= tuning.request.increase_at")
        return self


class TuningConfig(_Strict):
    """Online tuning of the budget of each (length class, length bucket) cell from the
    acceptance measured in the current run (``policy/tuning.py``, AIMD above the class budget).

    Only cells of ``classes`` in buckets >= ``from_bucket`` are tuned: the requests that set the
    makespan (long, past the first bucket). Each engine step, such a cell whose drafts since its
    last change hold at least ``min_drafted`` tokens is judged by their acceptance rate: at or
    above ``increase_at`` its tokens grow by 1 and its factor by ``factor_step`` (additive
    increase); below ``decrease_at`` its excess over the class budget is halved (multiplicative
    decrease). Never below the class budget; tokens at most the largest class budget (vLLM's k),
    factors at most ``max_factor``; cells of a class whose budget is 0 are left alone.
    """

    mode: Annotated[Literal["aimd", "off"], _OFF_WORD] = "off"
    classes: tuple[LengthClass, ...] = (LengthClass.LONG,)
    from_bucket: int = Field(default=1, ge=0)
    increase_at: float = Field(default=0.3, ge=0.0, le=1.0)
    decrease_at: float = Field(default=0.05, ge=0.0, le=1.0)
    min_drafted: int = Field(default=64, ge=1)
    max_factor: float = Field(default=6.0, gt=0.0, le=16.0)
    factor_step: float = Field(default=0.5, ge=0.0, le=16.0)
    request: RequestTuningConfig = RequestTuningConfig()
    """Per-request scale of the budget from the request's own acceptance (off by default)."""

    @model_validator(mode="after")
    def _bounds(self) -> "TuningConfig":
        if self.decrease_at > self.increase_at:
            raise ValueError("tuning.decrease_at must be <= tuning.increase_at")
        return self


class GateConfig(_Strict):
    """When drafting is switched off for a whole engine step.

    * ``max_running``: no drafts while more than ``max_running`` requests run (authors: 64).
    * ``cost_model``: draft only when a profiled verify-cost table (``cost_table``, JSON written
      by ``benchmarks/profile_verify_cost.py``) says the expected accepted tokens pay for the
      extra verify work.
    * ``off``: always draft (within budgets).
    """

    mode: Annotated[Literal["max_running", "cost_model", "off"], _OFF_WORD] = "max_running"
    max_running: int = Field(default=64, ge=1)
    cost_table: str | None = None

    @model_validator(mode="after")
    def _table_needed(self) -> "GateConfig":
        if self.mode == "cost_model":
            if self.cost_table is None:
                raise ValueError("gate.cost_table is required when gate.mode is 'cost_model'")
            if not Path(self.cost_table).is_file():
                raise ValueError(f"gate.cost_table: file not found: {self.cost_table}")
        return self


class DeviceDrafterConfig(_Strict):
    """The device-resident drafter (``openrlhf_das/device``, mode ``das_gpu``): drafts are made
    on the accelerator from the engine's token buffer, so a drafted step never waits for the
    host. Needs ``async_scheduling``. Sources follow ``use_request_tree`` (own text),
    ``use_problem_tree`` (+ ``use_siblings``: live sibling text) and ``use_global_tree``."""

    enabled: bool = False
    max_occurrences: int = Field(default=64, ge=1, le=1024)
    """Occurrences of a match that vote on the draft (``suffix-gpu``'s ``max_occurrences``)."""
    num_backoff: int = Field(default=4, ge=1, le=12)
    """Candidate match lengths per source (``suffix-gpu``'s multi-length backoff)."""
    history_capacity: int = Field(default=1 << 22, ge=1024)
    """Tokens each device history index holds (16 bytes of device memory per token)."""
    live_capacity: int = Field(default=1 << 16, ge=256)
    """Tokens of live sibling text held on the device between history loads."""
    live_interval: int = Field(default=16, ge=1)
    """Engine steps between two appends of the batch's new sibling text."""
    live_chunk: int = Field(default=32, ge=1)
    """A row's sibling text is appended once it has this many new tokens."""
    cuda_graphs: bool = True
    """Replay the drafting step from CUDA graphs (one per batch-size bucket) on CUDA devices."""
    global_index: bool = False
    """Also draft from a device index of the whole history with plain token ids (the global
    source; only with ``use_global_tree``). Off by default: the problem-keyed index already
    holds the same responses, and the second index nearly doubles the drafting step's device
    work. Replay of the 16 longest epoch-1 requests of the real 1.5B trace
    (``benchmarks/device_replay.py``, k = 4, 2-core CPU): 2.369 tokens per verify step with it,
    2.332 without (-1.6 %), and more without it past 1,536 tokens (2.813 vs 2.767), where the
    batch gate lets requests draft."""


class DASConfig(_Strict):
    """All DAS knobs. Units: tokens unless stated; steps are RL training steps."""

    # --- drafter sources -------------------------------------------------------------------
    max_depth: int = Field(default=32, ge=2, le=1024)
    """Suffix-tree depth: longest indexed suffix; match length + draft length <= max_depth, and
    the newest ``max_depth`` tokens of a running request are held back from its siblings. Each
    token inserted into a shared tree costs work per depth level. Measured on the real H100 trace
    (``benchmarks/drafter_sources.py``, ``benchmarks/results/cpu-drafter-sources.json``, 2-core
    CPU, global tree always asked): 32 instead of the DAS authors' 64 cut drafting time per
    request-step by 11 % and accepted 1 % more draft tokens; with ``pattern_tokens`` 16 and
    budgets <= 8 no match + draft path needs more than 24."""
    window: int = Field(default=5, ge=1, le=1000)
    """W: a problem's tree holds its responses from the last W steps in which it appeared."""
    history_max_tokens: int = Field(default=200_000_000, ge=1)
    """Cap on history tokens held (per engine); least recently used problems are evicted."""
    use_request_tree: bool = True
    use_problem_tree: bool = True
    use_global_tree: bool = True
    global_fallback: bool = True
    """Consult the global tree only for requests whose own and problem trees give no draft
    (False: always, the best score of the three wins). Measured on the real H100 trace
    (``benchmarks/results/cpu-drafter-sources.json``, depth 32): fallback accepted 0.5-0.9 % more
    draft tokens than always-best-score for 5-9 % less drafting time, with every problem
    recurring and with half the problems new each step."""
    use_siblings: bool = True
    """Append in-flight responses of the same problem (GRPO siblings) to its tree live."""
    shared_own_text: bool = True
    """Insert a running request's output into its problem tree and the global tree as it is
    generated, with no hold-back (arctic's ``SuffixDecodingCache``), so one match counts history,
    siblings and the request's own text together; implies sibling text. Measured against arctic's
    cache with the same history: ``benchmarks/policy_replay.py``,
    ``benchmarks/results/replay-policy-*.json`` (tokens per verify step, epochs >= 1)."""
    min_token_prob: float = Field(default=0.1, gt=0.0, le=1.0)
    max_spec_offset: float = Field(default=0.0, ge=-64.0, le=64.0)
    pattern_tokens: int | None = Field(default=16, ge=1, le=1024)
    """Context suffix matched against the trees (the last N tokens; None = ``max_depth``). A
    ``speculate`` call tries every suffix length of it, so its cost grows with N. Measured
    (``benchmarks/pattern_length.py``, ``benchmarks/results/cpu-pattern-length.json``): a full DAS
    step 30.9 µs per request at 16 vs 40.6 at 64 (CPU), for 0.10-0.13 % fewer accepted tokens on
    the real H100 trace."""

    # --- length-aware policy ---------------------------------------------------------------
    length_policy: bool = True
    """False = 'DAS drafter without length policy': every request gets ``flat_budget``."""
    flat_budget: ClassBudget = ClassBudget(tokens=4, factor=1.0)
    long_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
    medium_ratio: float = Field(default=0.4, ge=0.0, le=1.0)
    unknown_class: LengthClass = LengthClass.MEDIUM
    budgets: BudgetsConfig = BudgetsConfig()
    promote_medium_tokens: int = Field(default=3000, ge=0)
    """A request whose generated length exceeds this is at least medium."""
    promote_long_tokens: int = Field(default=5000, ge=0)
    """A request whose generated length exceeds this is long."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """The run's response limit (generated tokens). Set, it replaces the absolute
    ``promote_*_tokens`` thresholds by fractions of it (``promotion``); a request's own
    ``StepRequest.max_new_tokens`` wins over it. None: the absolute thresholds apply."""
    promotion: PromotionConfig = PromotionConfig()
    tuning: TuningConfig = TuningConfig()
    gate: GateConfig = GateConfig()
    step_quota_tokens: int | None = Field(default=None, ge=1)
    """Optional cap on draft tokens per engine step; long requests are served first."""
    pad_drafts: bool | None = None
    """Engine: pad every decode request's draft to ``num_speculative_tokens`` with filler tokens
    (verified and normally rejected, so still lossless) so every decode step is uniform
    (1 + k query tokens per request) and replays vLLM's full CUDA graphs for decode instead of
    running eager. Costs up to k extra verify tokens per request and step. ``None`` (``auto``,
    the default): pad exactly when the engine captures full decode graphs (``cudagraph_mode``
    FULL_DECODE_ONLY, FULL_AND_PIECEWISE or FULL; not eager or CPU engines), where an unpadded
    step ran 3.25x and a padded one 1.25-1.37x of the no-speculation time (H100, docs/gpu.md)."""

    draft_free_graphs: bool = True
    """Engine, with padded drafts on full decode graphs: leave a step in which no request has a
    real draft (gate closed, nothing matched) undrafted, and give such 1-token-per-request steps
    full CUDA graphs of their own (vLLM captures none once speculation is on), so they cost what
    a no-speculation step costs instead of verifying k filler tokens per request. False: pad
    every step (the behaviour before; one graph set, less capture time and memory)."""

    fill_padded_drafts: bool = True
    """Engine, with padded drafts: a drafted step verifies k tokens for every request whatever its
    class budget (filler where the draft is shorter), so every request gets :attr:`fill_budget`
    (real draft tokens in place of filler); the batch gate still decides which steps draft. On
    the H200 long-tail run (docs/gpu.md) the tail (<= 64 running) of ``das_flat`` (k = 4 for
    every request) took 5.9-8.3 s per epoch against 8.6-12.7 s for class budgets. False: class
    budgets also under padding."""

    async_scheduling: bool = False
    """Engine: keep vLLM's async scheduling (speculative method ``ngram_gpu``, whose proposer
    DAS replaces: ``engines/vllm/async_proposer.py``) instead of the synchronous scheduling vLLM
    forces on CPU drafters (method ``suffix``). Scheduling and output processing then overlap
    the GPU step; a drafted step still waits for its drafts. H100 long-tail runs (docs/gpu.md,
    runs 5, 5b, 6; ratios within one device call): 0.62-0.86x of synchronous no speculation,
    0.89-1.24x of no speculation; 1.10x of no speculation at 1024 requests (gate closed)."""

    scheduler_gate: bool = True
    """Engine, with :attr:`async_scheduling` and a ``max_running`` gate: vLLM's scheduler reserves
    draft slots only for steps the gate lets draft (``engines/vllm/scheduler_gate.py``). Under
    async scheduling vLLM otherwise reserves k slots per request at every step, and a gated step
    pays for them on the host. False: slots at every step (vLLM's ``ngram_gpu`` behaviour)."""

    lean_bookkeeping: bool = True
    """Engine, with :attr:`async_scheduling`: batch two per-request loops of vLLM's ``ngram_gpu``
    runner path (the correction of optimistic acceptance: two kernel launches per request per
    drafted step; the draft trim's per-request tensor reads) into one copy and numpy reads
    (``engines/vllm/lean_bookkeeping.py``). Outputs and drafts unchanged. False: vLLM's loops."""

    max_consecutive_faults: int = Field(default=8, ge=1)
    """Engine circuit breaker: after this many drafter faults in a row (steps that fell back to
    no drafts), the engine stops drafting for good and says so in the log and in
    ``das_get_stats()["breaker_tripped"]``; outputs continue as plain decoding."""

    device_drafter: DeviceDrafterConfig = DeviceDrafterConfig()
    """Engine, with :attr:`async_scheduling`: draft on the accelerator (``das_gpu``)."""

    @field_validator("pad_drafts", mode="before")
    @classmethod
    def _pad_auto(cls, value: Any) -> Any:
        return None if value == "auto" else value

    # --- reports ---------------------------------------------------------------------------
    length_buckets: tuple[int, ...] = (1000, 2000, 4000, 8000)
    """Upper edges of response-length buckets for acceptance reports (last bucket open)."""

    @model_validator(mode="after")
    def _cross_checks(self) -> "DASConfig":
        if self.long_ratio + self.medium_ratio > 1.0 + 1e-9:
            raise ValueError("long_ratio + medium_ratio must be <= 1")
        if self.promote_long_tokens < self.promote_medium_tokens:
            raise ValueError("promote_long_tokens must be >= promote_medium_tokens")
        edges = list(self.length_buckets)
        if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] <= 0:
            raise ValueError("length_buckets must be a non-empty, strictly increasing list of positive ints")
        if self.max_budget >= self.max_depth:
            raise ValueError("the largest draft budget must be smaller than max_depth")
        if self.pattern_tokens is not None and self.pattern_tokens > self.max_depth:
            raise ValueError("pattern_tokens must be <= max_depth (longer matches cannot be indexed)")
        if self.device_drafter.enabled and not self.async_scheduling:
            raise ValueError("device_drafter.enabled needs async_scheduling: true (method ngram_gpu)")
        return self

    @property
    def max_budget(self) -> int:
        """Largest per-step draft length any request can get (= vLLM num_speculative_tokens)."""
        if not self.length_policy:
            return self.flat_budget.tokens
        return self.budgets.max_tokens

    @property
    def fill_budget(self) -> ClassBudget:
        """The budget of every request of a padded, drafted step (``fill_padded_drafts``): the
        largest draft length and the largest match-length factor any request can get."""
        if not self.length_policy:
            return self.flat_budget
        b = self.budgets
        return ClassBudget(tokens=b.max_tokens, factor=max(b.short.factor, b.medium.factor, b.long.factor))

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DASConfig":
        """Validate ``data`` (nested dicts; lists accepted for tuples) into a config."""
        return cls._validate(data)

    @classmethod
    def _validate(cls, data: Mapping[str, Any]) -> "DASConfig":
        try:
            return cls.model_validate_json(json.dumps(dict(data)))
        except ValidationError as exc:
            raise DASConfigError(_format_errors(exc)) from exc
        except TypeError as exc:
            raise DASConfigError(f"config is not JSON-serialisable: {exc}") from exc

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> "DASConfig":
        """Load a YAML file, apply dotted ``overrides`` (``{"gate.mode": "off"}``), validate."""
        p = Path(path)
        if not p.is_file():
            raise DASConfigError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise DASConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
        for key, value in (overrides or {}).items():
            _set_dotted(data, key, value)
        merged = cls().to_dict()  # a partial section (budgets.long.tokens alone) keeps its defaults
        _deep_merge(merged, data)
        return cls._validate(merged)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "DASConfig":
        """A copy with dotted-key overrides applied and re-validated."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return self._validate(data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return self.model_dump_json()


def overrides_from_items(items: Sequence[str]) -> dict[str, Any]:
    """Dotted overrides from ``KEY=VALUE`` strings (benchmark ``--das`` flags); each VALUE is
    read as YAML (``4`` an int, ``auto`` a string, ``off`` False, which ``gate.mode`` accepts)."""
    return {k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in items)}


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Merge ``update`` into ``base`` in place; unknown keys are kept (validation names them)."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise DASConfigError(f"{key}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<config>"
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "invalid DAS config: " + "; ".join(lines)
