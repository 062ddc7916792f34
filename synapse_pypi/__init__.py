"""synapse-pypi: a caching Python package index inside a Matrix homeserver."""

from synapse_pypi._module import PyPIModule
from synapse_pypi._version import __version__
from synapse_pypi.storage import StorageBackend

__all__ = ["PyPIModule", "StorageBackend", "__version__"]
