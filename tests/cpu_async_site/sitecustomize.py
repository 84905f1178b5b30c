"""Test-only start-up hook (``tests/cpu_async.py``): with ``OPENRLHF_DAS_TEST_CPU_ASYNC=1``, every
process whose ``PYTHONPATH`` holds this folder gets the CPU async-scheduling mocks as it imports
torch and vLLM's CPU platform. Never raises."""


def _run() -> None:
    import os
    import sys

    if os.environ.get("OPENRLHF_DAS_TEST_CPU_ASYNC") != "1":
        return
    try:
        tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        sys.path.insert(0, tests_dir)
        try:
            import cpu_async
        finally:
            sys.path.remove(tests_dir)
        cpu_async.install_on_import()
    except Exception as exc:  # noqa: BLE001 - a startup hook must not stop the interpreter
        print(f"[openrlhf-das tests] cpu_async sitecustomize failed: {exc!r}", file=sys.stderr)


_run()
del _run
