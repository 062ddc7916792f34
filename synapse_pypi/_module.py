"""The entry class named in homeserver.yaml: wires the parts and registers them."""

import logging
import os
from typing import Any, Optional

from synapse.module_api import ModuleApi, make_deferred_yieldable, run_in_background
from twisted.internet import reactor

from synapse_pypi import index
from synapse_pypi._admin import AdminResource
from synapse_pypi._backends import Backends
from synapse_pypi._config import PyPIConfig, parse_config
from synapse_pypi._files import FileService, LocalCache
from synapse_pypi._names import NormalizedName
from synapse_pypi._pages import PageService
from synapse_pypi._store import Store
from synapse_pypi._upstream import UpstreamClient
from synapse_pypi._web import SimpleResource
from synapse_pypi.storage import BackendContext

logger = logging.getLogger(__name__)

# Flush last-access times of served files to the database this often.
TOUCH_FLUSH_MS = 60_000


class PyPIModule:
    """A caching Python package index at `/simple/`, inside Synapse.

    Enable it in homeserver.yaml (see sample_homeserver.yaml):

        modules:
          - module: synapse_pypi.PyPIModule
            config: {data_directory: /var/lib/synapse-pypi/pypi}
    """

    def __init__(self, config: PyPIConfig, api: ModuleApi):
        self._config = config
        self._api = api
        os.makedirs(config.data_directory, exist_ok=True)
        self._store = Store(api.run_db_interaction)
        self._cache = LocalCache(os.path.join(config.data_directory, "cache"), self._store, config.max_cache_size)
        self._backends: Optional[Backends] = None
        if config.storage_providers:
            context = BackendContext(
                reactor=reactor,
                data_directory=config.data_directory,
                defer_to_thread=api.defer_to_thread,
                yieldable=make_deferred_yieldable,
            )
            self._backends = Backends(
                config.storage_providers, context, self._store, self._cache.blob_path, api.run_as_background_process
            )
            self._cache.keep = self._backends.has_pending
        self._upstream = UpstreamClient(
            reactor, config.upstream_timeout_s, config.max_page_size, make_deferred_yieldable
        )
        self._pages = PageService(
            self._store,
            self._upstream,
            config.upstream_url,
            config.page_ttl_ms,
            make_deferred_yieldable,
            fallback=self._page_without_upstream,
            defer_to_thread=api.defer_to_thread,
        )
        self._files = FileService(
            self._cache, self._store, self._upstream, api.run_as_background_process, self._backends
        )
        self._simple = SimpleResource(
            self._pages,
            self._files,
            self._cache,
            page_max_age=config.page_ttl_ms // 1000,
            run_in_background=run_in_background,
            yieldable=make_deferred_yieldable,
            clock=reactor,
        )
        # Requests that arrive before start-up finished wait for it.
        self._simple.gate_on(api.run_as_background_process("synapse_pypi_start", self._start))
        api.register_web_resource("/simple", self._simple)
        api.register_web_resource("/_synapse/pypi", AdminResource(api, self._store, self._cache, self._backends))
        api.looping_background_call(self._cache.flush_touches, TOUCH_FLUSH_MS, run_on_all_instances=True)
        if self._backends is not None:
            api.looping_background_call(self._backends.retry, config.storage_retry_ms)
        logger.info("synapse-pypi serving /simple/ from upstream %s", config.upstream_url)

    @staticmethod
    def parse_config(config: Any) -> PyPIConfig:
        return parse_config(config)

    async def _start(self) -> None:
        await self._store.setup()
        await self._cache.start()
        if self._backends is not None:
            await self._backends.start()

    async def _page_without_upstream(self, project: str) -> Optional[index.ProjectPage]:
        """A project page from files we know of without the upstream (admin-taught)."""
        known = await self._store.known_files(project)
        if not known:
            return None
        files = tuple(
            index.DistFile(
                filename=filename,
                url="",
                hashes={"sha256": sha256},
                requires_python=requires_python,
                size=size,
            )
            for filename, sha256, size, requires_python in known
        )
        return index.ProjectPage(
            name=NormalizedName(project), files=files, versions=index.versions_from_filenames(f.filename for f in files)
        )
