"""The entry class named in homeserver.yaml: wires the parts and registers them."""

import logging
import os
from typing import Any, Optional, Tuple

from synapse.module_api import ModuleApi, make_deferred_yieldable, run_in_background
from twisted.internet import reactor

from synapse_pypi import index
from synapse_pypi._admin import AdminResource
from synapse_pypi._backends import Backends
from synapse_pypi._config import PyPIConfig, parse_config
from synapse_pypi._files import FileService, LocalCache
from synapse_pypi._names import NormalizedName
from synapse_pypi._pages import PageBudget, PageService
from synapse_pypi._store import Store
from synapse_pypi._trust_service import TrustService
from synapse_pypi._upstream import UpstreamClient
from synapse_pypi._web import SimpleResource
from synapse_pypi.storage import BackendContext
from synapse_pypi.trust import load_or_create_key

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
            retry_ms=config.upstream_retry_ms,
            budget=PageBudget(config.page_cache_size),
        )
        self._files = FileService(
            self._cache, self._store, self._upstream, api.run_as_background_process, self._backends
        )
        # The attestation key is made on first start and kept under the data directory.
        self._signing_key = load_or_create_key(config.signing_key_path)
        self._trust = TrustService(
            api, config, self._store, self._signing_key, api.run_as_background_process, clock=reactor
        )
        self._trust.lookup_upstream = self._upstream_hash
        self._trust.on_vouch_lost = self._pages.expire
        self._files.on_committed = self._attest
        # The CIDs in attestations let the read path try IPFS for a file not cached here.
        self._files.learn_references = self._trust.learn_references
        if self._backends is not None:
            self._backends.on_stored = self._stored
        api.register_third_party_rules_callbacks(on_new_event=self._trust.on_new_event)
        self._simple = SimpleResource(
            self._pages,
            self._files,
            self._cache,
            page_max_age=config.page_ttl_ms // 1000,
            run_in_background=run_in_background,
            yieldable=make_deferred_yieldable,
            clock=reactor,
            trust=self._trust,
            attest=self._attest_in_background,
            defer_to_thread=api.defer_to_thread,
        )
        # Requests that arrive before start-up finished wait for it.
        self._simple.gate_on(api.run_as_background_process("synapse_pypi_start", self._start))
        api.register_web_resource("/simple", self._simple)
        api.register_web_resource(
            "/_synapse/pypi",
            AdminResource(api, self._store, self._cache, self._backends, self._trust, self._pages, self._files),
        )
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
        await self._trust.start()

    # -- trust glue ------------------------------------------------------------------

    async def _upstream_hash(self, project: str, filename: str) -> Tuple[Optional[str], bool]:
        """What the cached upstream page says of a file, and whether that page is fresh."""
        page, fresh = await self._pages.cached_with_freshness(project)
        dist = page.file(filename) if page is not None else None
        sha = dist.hashes.get("sha256") if dist is not None and dist.url else None
        return sha, fresh and sha is not None

    async def _attest(self, project: str, filename: str, sha256: str, size: int) -> None:
        """Publish this server's attestation for a verified file (not for .metadata)."""
        if filename.endswith(".metadata"):
            return
        page = await self._pages.cached(project)
        dist = page.file(filename) if page is not None else None
        if dist is None:
            dist = index.DistFile(filename=filename, url="", hashes={"sha256": sha256})
        try:
            await self._trust.attest(project, dist, sha256, size)
        except Exception:
            logger.exception("could not attest %s/%s", project, filename)

    def _attest_in_background(self, project: str, filename: str, sha256: str, size: int) -> None:
        self._api.run_as_background_process("synapse_pypi_attest", self._attest, project, filename, sha256, size)

    async def _stored(self, sha256: str, kind: str, reference: str) -> None:
        """A backend stored a blob: refresh our attestations with its CID."""
        if kind != "cid":
            return
        size = self._cache.size_of(sha256)
        for project, filename in await self._store.files_for_blob(sha256):
            if size is not None:
                await self._attest(project, filename, sha256, size)

    async def _page_without_upstream(self, project: str) -> Optional[index.ProjectPage]:
        """A project page without the upstream: from the room's attestations, else from
        files taught through the admin API."""
        from_room = await self._trust.page_from_room(project)
        known = await self._store.known_files(project)
        if not known:
            return from_room
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
        if from_room is not None:
            # The room's view wins where both know a file; taught files fill the gaps.
            in_room = {f.filename for f in from_room.files}
            files = from_room.files + tuple(f for f in files if f.filename not in in_room)
        return index.ProjectPage(
            name=NormalizedName(project), files=files, versions=index.versions_from_filenames(f.filename for f in files)
        )
