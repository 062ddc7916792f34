"""The entry class named in homeserver.yaml: wires the parts and registers them."""

import logging
import os
from typing import Any

from synapse.module_api import ModuleApi, make_deferred_yieldable, run_in_background
from twisted.internet import reactor

from synapse_pypi._config import PyPIConfig, parse_config
from synapse_pypi._files import FileService, LocalCache
from synapse_pypi._pages import PageService
from synapse_pypi._store import Store
from synapse_pypi._upstream import UpstreamClient
from synapse_pypi._web import SimpleResource

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
        self._upstream = UpstreamClient(
            reactor, config.upstream_timeout_s, config.max_page_size, make_deferred_yieldable
        )
        self._pages = PageService(
            self._store, self._upstream, config.upstream_url, config.page_ttl_ms, make_deferred_yieldable
        )
        self._files = FileService(self._cache, self._store, self._upstream, api.run_as_background_process)
        self._simple = SimpleResource(
            self._pages,
            self._files,
            self._cache,
            page_max_age=config.page_ttl_ms // 1000,
            run_in_background=run_in_background,
            yieldable=make_deferred_yieldable,
            clock=reactor,
        )
        # Requests that arrive before start-up finished wait for it (see _Gate in _web).
        self._simple.gate_on(api.run_as_background_process("synapse_pypi_start", self._start))
        api.register_web_resource("/simple", self._simple)
        api.looping_background_call(self._cache.flush_touches, TOUCH_FLUSH_MS, run_on_all_instances=True)
        logger.info("synapse-pypi serving /simple/ from upstream %s", config.upstream_url)

    @staticmethod
    def parse_config(config: Any) -> PyPIConfig:
        return parse_config(config)

    async def _start(self) -> None:
        await self._store.setup()
        await self._cache.start()
