"""Error types, split by whose fault it is (see docs/architecture.md).

* ``UserError``: bad input from a person or a script (CLI, config file, API request).
  The CLI prints its message on one line and exits 2; nothing has been changed.
* ``PeerError``: garbage from the network (a malformed packet). Cores count and drop
  it at one boundary; it never escapes a core.
* Anything else is a bug in meshnet and is allowed to raise.
"""


class MeshnetError(Exception):
    """Base class of meshnet's own errors."""


class UserError(MeshnetError):
    """Invalid input from a user; reported as one line, exit status 2."""

    exit_code = 2


class ConfigError(UserError):
    """Invalid configuration file or flags."""


class ModelError(UserError, ValueError):
    """A model object was given a value that cannot exist (bad CIDR, VNI, port...)."""


class NotFound(UserError):
    """The named object does not exist."""


class Conflict(UserError):
    """The request conflicts with existing state (name taken, port published...)."""


class PeerError(MeshnetError):
    """A peer sent something we cannot decode; counted and dropped by the receiver."""


class KernelError(MeshnetError):
    """The kernel refused an operation meshnet expected to succeed."""
