"""Python SDK for EnterSandBox (agentbox): run untrusted Python in isolated sandboxes.

Standard library only. See ``Sandbox``.
"""

from ._client import (
    AgentboxError,
    CommandResult,
    ConflictError,
    ExecutionError,
    ForbiddenError,
    InvalidArgumentError,
    NotFoundError,
    Output,
    OverloadedError,
    Sandbox,
    SandboxConfig,
    SandboxResult,
    UnauthenticatedError,
)

__all__ = [
    "AgentboxError",
    "CommandResult",
    "ConflictError",
    "ExecutionError",
    "ForbiddenError",
    "InvalidArgumentError",
    "NotFoundError",
    "Output",
    "OverloadedError",
    "Sandbox",
    "SandboxConfig",
    "SandboxResult",
    "UnauthenticatedError",
]
__version__ = "0.1.0"
