"""The sandbox that runs model-written code for `code_reward` (README "The code sandbox").

- `policy.py`: which sandbox runs (`code_sandbox`: auto | bwrap | namespace | unsafe-process),
  probing each backend once, the refusal when none works;
- `run.py`: one sandboxed run: the candidate server (`_candidate_server.py`) behind its
  isolation backend (`isolation.py`, `_namespace_init.py`) and in its own cgroup (`cgroups.py`),
  the trusted tester (`_tester.py`) beside it, plain-data messages between them (`_wire.py`).
The `_*.py` files are scripts run in child processes, not imported.
"""
from .policy import (
    MODES,
    SandboxUnavailableError,
    cgroup_status,
    default_sandbox,
    probe,
    resolve_sandbox,
    sandbox_status,
    set_default_sandbox,
    validate_mode,
)
from .run import SandboxLimits, SandboxResult, run_job, warn_once

__all__ = ["MODES", "SandboxLimits", "SandboxResult", "SandboxUnavailableError", "cgroup_status", "default_sandbox",
           "probe", "resolve_sandbox", "run_job", "sandbox_status", "set_default_sandbox", "validate_mode", "warn_once"]
