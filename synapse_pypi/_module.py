"""The entry class named in homeserver.yaml: wires the parts and registers them."""

import functools
import logging
import os
from typing import Any, Optional, Tuple

import attrs
from synapse.module_api import ModuleApi, make_deferred_yieldable, run_in_background
from twisted.internet import reactor

from synapse_pypi import _metrics, index
from synapse_pypi._addresses import AddressPolicy
from synapse_pypi._admin import AdminResource
from synapse_pypi._backends import Backends
from synapse_pypi._browse import make_resource as make_browse_resource
from synapse_pypi._community import CommunityIndexes, CommunityResource
from synapse_pypi._config import PyPIConfig, parse_config
from synapse_pypi._files import FileChain, LocalCache, blob_path
from synapse_pypi._local import LocalFirstPages, LocalProjects
from synapse_pypi._matrix_queue import MatrixQueue, QueueSettings, RequestGauge
from synapse_pypi._multipart_gate import let_multipart_uploads_through
from synapse_pypi._names import NormalizedName
from synapse_pypi._pages import PageBudget
from synapse_pypi._publish import LegacyUploadResource
from synapse_pypi._ready_answers import answer_ready_requests_first
from synapse_pypi._room_reader import RoomReader
from synapse_pypi._serve_policy import TrustServePolicy
from synapse_pypi._snapshot_names import SnapshotNames
from synapse_pypi._snapshots import SnapshotJudge, SnapshotReader, SnapshotResource
from synapse_pypi._store import Store
from synapse_pypi._synapse_fixes import give_notifications_their_own_context, skip_withheld_events_on_new_event
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
        # Our on_new_event callback would otherwise make Synapse warn about finished log
        # contexts for every event sent, and fail PDUs on redactions it withholds (see
        # _synapse_fixes.py).
        give_notifications_their_own_context(api.server_name)
        skip_withheld_events_on_new_event()
        os.makedirs(config.data_directory, exist_ok=True)
        self._store = Store(api.run_db_interaction)
        self._upstream = UpstreamClient(
            reactor,
            config.upstream_timeout_s,
            config.max_page_size,
            make_deferred_yieldable,
            # No request forgery: file URLs and redirects lead to global addresses only,
            # or to the upstream's own origin and the hosts the admin allows.
            policy=AddressPolicy.for_upstream(config.upstream_url, config.upstream_allowed_file_hosts),
        )
        # Uploaded files (docs/publishing.md): their pages come before the upstream's.
        self._local = LocalProjects(api.run_db_interaction, config.local_projects)
        self._pages = LocalFirstPages(
            self._store,
            self._upstream,
            config.upstream_url,
            config.page_ttl_ms,
            make_deferred_yieldable,
            fallback=self._page_without_upstream,
            defer_to_thread=api.defer_to_thread,
            retry_ms=config.upstream_retry_ms,
            budget=PageBudget(config.page_cache_size),
            on_change=self._page_changed,
            local=self._local,
        )
        # The attestation key is made on first start and kept under the data directory.
        self._signing_key = load_or_create_key(config.signing_key_path)
        # Requests in flight, which the Matrix queue yields to.
        self._gauge = RequestGauge(reactor)
        self._queue = MatrixQueue(
            reactor,
            api.run_as_background_process,
            self._gauge,
            QueueSettings(
                quiet_s=config.matrix_quiet_s,
                max_delay_s=config.matrix_max_delay_s,
                room_rate=config.room_creation_rate,
                max_pending=config.matrix_queue_size,
            ),
        )
        self._trust = TrustService(
            api,
            config,
            self._store,
            self._signing_key,
            self._queue,
            upstream_hashes=self._upstream_hash,
            on_vouch_lost=self._pages.expire,
            clock=reactor,
        )
        # What the file path asks of the trust layer, and tells it (see _serve_policy.py).
        self._policy = TrustServePolicy(self._trust, self._pages, self._store)
        # A peer's uploaded projects are served from the rooms, never from our upstream.
        self._pages.uploaded_elsewhere = self._trust.uploaded_elsewhere
        # A file request, top to bottom: SimpleResource -> policy.hash_to_serve -> FileChain
        # (LocalCache, then Backends, then UpstreamClient) -> a Responder the resource writes.
        cache_root = os.path.join(config.data_directory, "cache")
        self._backends: Optional[Backends] = None
        if config.storage_providers:
            context = BackendContext(
                reactor=reactor,
                data_directory=config.data_directory,
                defer_to_thread=api.defer_to_thread,
                yieldable=make_deferred_yieldable,
            )
            self._backends = Backends(
                config.storage_providers,
                context,
                self._store,
                functools.partial(blob_path, cache_root),
                api.run_as_background_process,
                listener=self._policy,
                retry_ms=config.storage_retry_ms,
                unpin_evicted=config.unpin_evicted,
                quiet_moment=self._queue.quiet_moment,
                seconds=reactor.seconds,
            )
        self._cache = LocalCache(
            cache_root,
            self._store,
            config.max_cache_size,
            # Uploads always stay (the cache is where they live).
            keep=self._local.keeps,
            min_free=config.min_free_space,
            # A blob that leaves the cache is dropped from the backends' queue, and removed
            # (unpinned) from them: neither grows beyond the cache's budget.
            on_removed=self._backends,
        )
        self._files = FileChain(
            self._cache,
            self._store,
            self._upstream,
            backends=self._backends,
            # The CIDs in others' attestations let the read path try IPFS for a file not
            # cached here: hints, within cid_hint_timeout.
            references=self._policy,
            hint_timeout=config.cid_hint_timeout_s,
            events=self._policy,
            run_background=api.run_as_background_process,
            run_in_background=run_in_background,
            defer_to_thread=api.defer_to_thread,
            yieldable=make_deferred_yieldable,
            clock=reactor,
        )
        api.register_third_party_rules_callbacks(on_new_event=self._trust.on_new_event)
        # Read at every scrape of Synapse's metrics listener (docs/operations.md).
        self._watched = _metrics.watch(_metrics.Watched(self._trust, self._queue, self._cache, self._backends))

        def index_resource(cls: Any, **extra: Any) -> Any:
            """A resource that serves index pages and files as /simple/ does."""
            return cls(
                self._pages,
                self._files,
                page_max_age=config.page_ttl_ms // 1000,
                run_in_background=run_in_background,
                yieldable=make_deferred_yieldable,
                clock=reactor,
                trust=self._trust,
                policy=self._policy,
                gauge=self._gauge,
                defer_to_thread=api.defer_to_thread,
                **extra,
            )

        self._simple = index_resource(SimpleResource, x_accel_redirect=config.x_accel_redirect)
        # Requests that arrive before start-up finished wait for it.
        started = api.run_as_background_process("synapse_pypi_start", self._start)
        # Snapshots (static indexes in IPFS), judged by the same rooms; and their names.
        self._snapshot_names = SnapshotNames(api, config, self._signing_key, reactor)
        snapshots = index_resource(
            SnapshotResource,
            reader=SnapshotReader(self._backends, config.max_page_size),
            judge=SnapshotJudge(self._trust),
            names=self._snapshot_names,
        )
        # Community indexes: a room's list of projects and versions, served as an index.
        communities = index_resource(CommunityResource, communities=CommunityIndexes(RoomReader(api, config, reactor)))
        for path, resource in (("/simple", self._simple), ("/snapshots", snapshots), ("/index", communities)):
            resource.gate_on(started)
            api.register_web_resource(path, resource)
        # Uploads (the legacy upload API of twine, uv, pdm, poetry): multipart forms,
        # which Synapse refuses everywhere unless let through (_multipart_gate.py).
        let_multipart_uploads_through(b"/legacy")
        # Warm pages answered moments ago are given again before Synapse's per-request work.
        answer_ready_requests_first()
        api.register_web_resource(
            "/legacy",
            LegacyUploadResource(
                api, config, self._local, self._pages, self._files, self._cache,
                run_in_background=run_in_background, defer_to_thread=api.defer_to_thread,
            ),
        )
        # Pages for people: what is served and why (read-only, like the rooms).
        api.register_web_resource("/pypi", make_browse_resource(api, self._trust, self._pages, self._store))
        api.register_web_resource(
            "/_synapse/pypi",
            AdminResource(
                api, self._store, self._cache, self._backends, self._trust, self._pages, self._files,
                snapshot_names=self._snapshot_names,
            ),
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
        await self._local.start()
        await self._cache.start()
        if self._backends is not None:
            await self._backends.start()
        await self._files.start()
        await self._trust.start()

    # -- trust glue ------------------------------------------------------------------

    async def _upstream_hash(self, project: str, filename: str) -> Tuple[Optional[str], bool]:
        """What the cached upstream page says of a file, and whether that page is fresh."""
        page, fresh = await self._pages.cached_with_freshness(project)
        dist = page.file(filename) if page is not None else None
        sha = dist.hashes.get("sha256") if dist is not None and dist.url else None
        return sha, fresh and sha is not None

    def _page_changed(
        self, project: str, old: Optional[index.ProjectPage], new: index.ProjectPage
    ) -> index.ProjectPage:
        """The upstream's page of a project was fetched (issue 14), `old` is the page we had
        (None the first time). A project it quarantined, also one quarantined before we ever
        fetched it, and files it stopped listing that we hold, are banned in our room with the
        upstream as the source, so that peers stop serving them too; unless the admin keeps
        removed files for the project (builds pinned to them), then they stay on the page.
        Files the upstream lists again lose our upstream-sourced ban."""

        def held(f: index.DistFile) -> bool:
            sha = f.hashes.get("sha256")
            return sha is not None and self._cache.has(sha)

        removed = [f for f in old.files if new.file(f.filename) is None and held(f)] if old is not None else []
        if new.quarantined and (old is None or not old.quarantined):
            why = f": {new.status_reason}" if new.status_reason else ""
            self._trust.ban(project, "project", project, f"quarantined by the upstream index{why}", "upstream")
        for rec in self._trust.our_bans(project):
            policy = rec.policy
            assert policy is not None
            back = (policy.kind == "file" and new.file(policy.entity) is not None) or (
                policy.kind == "project" and not new.quarantined
            )
            if policy.source == "upstream" and back:
                self._trust.unban(project, policy.kind, policy.entity, "listed by the upstream index again", "upstream")
        if not removed:
            return new
        if project in self._config.keep_removed_files:
            logger.info("%s: keeping %d files the upstream no longer lists (keep_removed_files)", project, len(removed))
            return attrs.evolve(new, files=new.files + tuple(removed))
        for f in removed:
            self._trust.ban(project, "file", f.filename, "no longer listed by the upstream index", "upstream")
        return new

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
