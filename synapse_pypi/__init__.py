"""synapse-pypi: a caching Python package index inside a Matrix homeserver.

The module entry class and the storage-backend base class are imported on first use (PEP 562),
not with the package: `synapse-pypi keygen`, `key`, `attest` and `verify` import this package
and run where Synapse (and Twisted) are not installed.
"""

from typing import TYPE_CHECKING, Any

from synapse_pypi._version import __version__

if TYPE_CHECKING:
    from synapse_pypi._module import PyPIModule
    from synapse_pypi.storage import StorageBackend

__all__ = ["PyPIModule", "StorageBackend", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "PyPIModule":
        from synapse_pypi._module import PyPIModule

        return PyPIModule
    if name == "StorageBackend":
        from synapse_pypi.storage import StorageBackend

        return StorageBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
