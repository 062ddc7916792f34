"""What the module knows, kept in Synapse's own database (SQLite or PostgreSQL).

All SQL uses `?` placeholders (Synapse turns them into `%s` on PostgreSQL) and never a
literal `%` or `?` in the text (SYNAPSE-FACTS §4). Times are milliseconds since the epoch.
"""

import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple

import attrs

SCHEMA = [
    # One row per project page we have seen, in our own storage form (index.page_to_json);
    # project "" is the root /simple/ list.
    """CREATE TABLE IF NOT EXISTS synapse_pypi_pages (
        project TEXT NOT NULL PRIMARY KEY,
        page TEXT NOT NULL,
        etag TEXT,
        last_modified TEXT,
        fetched_at BIGINT NOT NULL
    )""",
    # One row per committed file in the local content-addressed cache.
    """CREATE TABLE IF NOT EXISTS synapse_pypi_blobs (
        sha256 TEXT NOT NULL PRIMARY KEY,
        size BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        last_access BIGINT NOT NULL
    )""",
    # Which file of which project is which blob (distributions and their .metadata).
    """CREATE TABLE IF NOT EXISTS synapse_pypi_files (
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (project, filename)
    )""",
    "CREATE INDEX IF NOT EXISTS synapse_pypi_files_sha256 ON synapse_pypi_files (sha256)",
    # References by which storage backends can fetch a blob: the CID our node gave us,
    # or one learned from another mirror. One per kind ("cid").
    """CREATE TABLE IF NOT EXISTS synapse_pypi_refs (
        sha256 TEXT NOT NULL,
        kind TEXT NOT NULL,
        reference TEXT NOT NULL,
        learned_from TEXT NOT NULL,
        PRIMARY KEY (sha256, kind)
    )""",
    # Which backend holds which blob, and since when (commit-to-pinned is measured here).
    """CREATE TABLE IF NOT EXISTS synapse_pypi_stored (
        sha256 TEXT NOT NULL,
        backend TEXT NOT NULL,
        reference TEXT NOT NULL,
        stored_at BIGINT NOT NULL,
        PRIMARY KEY (sha256, backend)
    )""",
    # Blobs still to be stored in a backend (the node was down, or we just committed).
    """CREATE TABLE IF NOT EXISTS synapse_pypi_pending (
        sha256 TEXT NOT NULL,
        backend TEXT NOT NULL,
        queued_at BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sha256, backend)
    )""",
    # Blobs a storage backend still has to forget (for IPFS: unpin), because they left the
    # local cache (evicted or purged) while the backend held them. A row stays until the
    # backend confirms, so an unpin asked of a node that is down is not lost.
    """CREATE TABLE IF NOT EXISTS synapse_pypi_removals (
        sha256 TEXT NOT NULL,
        backend TEXT NOT NULL,
        reference TEXT NOT NULL,
        queued_at BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (sha256, backend)
    )""",
    # Files we know of without an upstream page: taught through the admin API (and,
    # later, learned from attestations). Offline pages are built from these.
    """CREATE TABLE IF NOT EXISTS synapse_pypi_known (
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT,
        requires_python TEXT,
        learned_from TEXT NOT NULL,
        PRIMARY KEY (project, filename)
    )""",
    # Attestations found wrong (fraud) or invalid, and what was done about them.
    """CREATE TABLE IF NOT EXISTS synapse_pypi_flagged (
        event_id TEXT NOT NULL PRIMARY KEY,
        project TEXT NOT NULL,
        filename TEXT NOT NULL,
        publisher TEXT NOT NULL,
        claimed TEXT NOT NULL,
        truth TEXT NOT NULL,
        kind TEXT NOT NULL,
        flagged_at BIGINT NOT NULL
    )""",
    # The content of attestation and key events the trust view relied on. Synapse drops an
    # event's content when it applies a redaction, also one the trust view must ignore (sent
    # without the power, from the original sender's own server): with this copy, such an
    # event still counts after a restart (trust/_fold.py).
    """CREATE TABLE IF NOT EXISTS synapse_pypi_kept (
        event_id TEXT NOT NULL PRIMARY KEY,
        room_id TEXT NOT NULL,
        content TEXT NOT NULL
    )""",
]


@attrs.frozen
class StoredPage:
    project: str
    page: str
    etag: Optional[str]
    last_modified: Optional[str]
    fetched_at: int


RunDb = Callable[..., Awaitable[Any]]


class Store:
    """Typed queries over the module's tables.

    Args:
        run_db: `ModuleApi.run_db_interaction`.
    """

    def __init__(self, run_db: RunDb):
        self._run_db = run_db
        # The pages stored (their keys, read at setup; this module is the tables' only
        # writer): a page never fetched costs no database read. With SQLite's single
        # connection that read used to wait behind the Matrix queue's event writes, on the
        # way of a new project's first page.
        self._page_keys: Optional[Set[str]] = None

    async def setup(self) -> None:
        def txn(t: Any) -> Set[str]:
            for stmt in SCHEMA:
                t.execute(stmt)
            t.execute("SELECT project FROM synapse_pypi_pages")
            return {r[0] for r in t.fetchall()}

        self._page_keys = await self._run_db("synapse_pypi_setup", txn)

    async def get_page(self, project: str, surely: bool = False) -> Optional[StoredPage]:
        """The stored page of `project`. Without `surely`, a page this process never stored
        nor found at start is taken to be missing without asking the database (another
        worker may have stored it since: ask `surely` before going without it)."""
        def txn(t: Any) -> Optional[StoredPage]:
            t.execute(
                "SELECT project, page, etag, last_modified, fetched_at FROM synapse_pypi_pages"
                " WHERE project = ?",
                (project,),
            )
            row = t.fetchone()
            return StoredPage(*row) if row else None

        if not surely and self._page_keys is not None and project not in self._page_keys:
            return None
        page = await self._run_db("synapse_pypi_get_page", txn)
        if page is not None and self._page_keys is not None:
            self._page_keys.add(project)
        return page

    async def put_page(self, page: StoredPage) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_pages (project, page, etag, last_modified, fetched_at)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (project) DO UPDATE SET page = excluded.page, etag = excluded.etag,"
                " last_modified = excluded.last_modified, fetched_at = excluded.fetched_at",
                (page.project, page.page, page.etag, page.last_modified, page.fetched_at),
            )

        await self._run_db("synapse_pypi_put_page", txn)
        if self._page_keys is not None:
            self._page_keys.add(page.project)

    async def touch_page(self, project: str, fetched_at: int) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "UPDATE synapse_pypi_pages SET fetched_at = ? WHERE project = ?",
                (fetched_at, project),
            )

        await self._run_db("synapse_pypi_touch_page", txn)

    async def delete_page(self, project: str) -> bool:
        def txn(t: Any) -> bool:
            t.execute("DELETE FROM synapse_pypi_pages WHERE project = ?", (project,))
            return t.rowcount > 0

        if self._page_keys is not None:
            self._page_keys.discard(project)
        try:
            return await self._run_db("synapse_pypi_delete_page", txn)
        except BaseException:
            if self._page_keys is not None:
                self._page_keys.add(project)  # (a read will tell)
            raise

    async def list_projects(self) -> List[str]:
        def txn(t: Any) -> List[str]:
            t.execute("SELECT project FROM synapse_pypi_pages WHERE project <> '' ORDER BY project")
            return [r[0] for r in t.fetchall()]

        return await self._run_db("synapse_pypi_list_projects", txn)

    async def all_blobs(self) -> Dict[str, Tuple[int, int]]:
        """sha256 -> (size, last_access) for every committed blob."""

        def txn(t: Any) -> Dict[str, Tuple[int, int]]:
            t.execute("SELECT sha256, size, last_access FROM synapse_pypi_blobs")
            return {r[0]: (int(r[1]), int(r[2])) for r in t.fetchall()}

        return await self._run_db("synapse_pypi_all_blobs", txn)

    async def add_blob(self, project: str, filename: str, sha256: str, size: int, now: int) -> None:
        """Record a committed file and which project file it is, in one transaction."""

        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_blobs (sha256, size, created_at, last_access)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256) DO UPDATE SET last_access = excluded.last_access",
                (sha256, size, now, now),
            )
            t.execute(
                "INSERT INTO synapse_pypi_files (project, filename, sha256) VALUES (?, ?, ?)"
                " ON CONFLICT (project, filename) DO UPDATE SET sha256 = excluded.sha256",
                (project, filename, sha256),
            )

        await self._run_db("synapse_pypi_add_blob", txn)

    async def touch_blobs(self, accesses: Dict[str, int]) -> None:
        def txn(t: Any) -> None:
            for sha256, when in accesses.items():
                t.execute(
                    "UPDATE synapse_pypi_blobs SET last_access = ? WHERE sha256 = ? AND last_access < ?",
                    (when, sha256, when),
                )

        await self._run_db("synapse_pypi_touch_blobs", txn)

    async def remove_blob(self, sha256: str) -> None:
        def txn(t: Any) -> None:
            t.execute("DELETE FROM synapse_pypi_files WHERE sha256 = ?", (sha256,))
            t.execute("DELETE FROM synapse_pypi_blobs WHERE sha256 = ?", (sha256,))

        await self._run_db("synapse_pypi_remove_blob", txn)

    async def file_digest(self, project: str, filename: str) -> Optional[str]:
        def txn(t: Any) -> Optional[str]:
            t.execute(
                "SELECT f.sha256 FROM synapse_pypi_files f JOIN synapse_pypi_blobs b"
                " ON b.sha256 = f.sha256 WHERE f.project = ? AND f.filename = ?",
                (project, filename),
            )
            row = t.fetchone()
            return row[0] if row else None

        return await self._run_db("synapse_pypi_file_digest", txn)

    async def cached_files(self, project: str) -> Dict[str, Tuple[str, int]]:
        """filename -> (sha256, size) for the files of `project` in the local cache."""

        def txn(t: Any) -> Dict[str, Tuple[str, int]]:
            t.execute(
                "SELECT f.filename, f.sha256, b.size FROM synapse_pypi_files f"
                " JOIN synapse_pypi_blobs b ON b.sha256 = f.sha256 WHERE f.project = ?",
                (project,),
            )
            return {r[0]: (r[1], int(r[2])) for r in t.fetchall()}

        return await self._run_db("synapse_pypi_cached_files", txn)

    async def wheels_without_metadata(self) -> List[Tuple[str, str, str]]:
        """(project, filename, sha256) of cached wheels with no `<wheel>.metadata` cached."""

        def txn(t: Any) -> List[Tuple[str, str, str]]:
            # Wildcards and the suffix are parameters: no literal % or ? in SQL (SYNAPSE-FACTS §4).
            t.execute(
                "SELECT f.project, f.filename, f.sha256 FROM synapse_pypi_files f"
                " JOIN synapse_pypi_blobs b ON b.sha256 = f.sha256"
                " WHERE f.filename LIKE ? AND NOT EXISTS (SELECT 1 FROM synapse_pypi_files m"
                " WHERE m.project = f.project AND m.filename = f.filename || ?)",
                ("%.whl", ".metadata"),
            )
            return [(r[0], r[1], r[2]) for r in t.fetchall()]

        return await self._run_db("synapse_pypi_wheels_without_metadata", txn)

    # -- storage backends ------------------------------------------------------------

    async def refs_for(self, sha256: str) -> Dict[str, str]:
        """kind -> reference for a blob."""

        def txn(t: Any) -> Dict[str, str]:
            t.execute("SELECT kind, reference FROM synapse_pypi_refs WHERE sha256 = ?", (sha256,))
            return {r[0]: r[1] for r in t.fetchall()}

        return await self._run_db("synapse_pypi_refs_for", txn)

    async def own_refs_for(self, sha256: str) -> Dict[str, str]:
        """kind -> reference for a blob, those our own backends made only (earlier versions
        also kept CIDs learnt from attestations here: those are hints, asked of the trust
        layer when needed, and forgotten with a redaction)."""

        def txn(t: Any) -> Dict[str, str]:
            t.execute(
                "SELECT kind, reference FROM synapse_pypi_refs WHERE sha256 = ? AND learned_from NOT LIKE ?",
                (sha256, "attestation%"),
            )
            return {r[0]: r[1] for r in t.fetchall()}

        return await self._run_db("synapse_pypi_own_refs_for", txn)

    async def add_ref(self, sha256: str, kind: str, reference: str, learned_from: str) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_refs (sha256, kind, reference, learned_from) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256, kind) DO UPDATE SET reference = excluded.reference,"
                " learned_from = excluded.learned_from",
                (sha256, kind, reference, learned_from),
            )

        await self._run_db("synapse_pypi_add_ref", txn)

    async def record_stored(self, sha256: str, backend: str, kind: str, reference: str, now: int) -> None:
        """A backend now holds the blob: remember where, forget the pending add."""

        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_stored (sha256, backend, reference, stored_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256, backend) DO UPDATE SET reference = excluded.reference,"
                " stored_at = excluded.stored_at",
                (sha256, backend, reference, now),
            )
            t.execute(
                "INSERT INTO synapse_pypi_refs (sha256, kind, reference, learned_from) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256, kind) DO UPDATE SET reference = excluded.reference,"
                " learned_from = excluded.learned_from",
                (sha256, kind, reference, backend),
            )
            t.execute("DELETE FROM synapse_pypi_pending WHERE sha256 = ? AND backend = ?", (sha256, backend))

        await self._run_db("synapse_pypi_record_stored", txn)

    async def stored_in(self, sha256: str) -> Dict[str, Tuple[str, int]]:
        """backend -> (reference, stored_at) for a blob."""

        def txn(t: Any) -> Dict[str, Tuple[str, int]]:
            t.execute("SELECT backend, reference, stored_at FROM synapse_pypi_stored WHERE sha256 = ?", (sha256,))
            return {r[0]: (r[1], int(r[2])) for r in t.fetchall()}

        return await self._run_db("synapse_pypi_stored_in", txn)

    async def queue_stores(self, sha256: str, backends: List[str], now: int) -> None:
        """Queue adds of a freshly committed blob; a removal still queued for it is called
        off (the add keeps, or makes again, the backend's copy)."""

        def txn(t: Any) -> None:
            for backend in backends:
                t.execute(
                    "INSERT INTO synapse_pypi_pending (sha256, backend, queued_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (sha256, backend) DO NOTHING",
                    (sha256, backend, now),
                )
                t.execute("DELETE FROM synapse_pypi_removals WHERE sha256 = ? AND backend = ?", (sha256, backend))

        await self._run_db("synapse_pypi_queue_stores", txn)

    async def pending(self, limit: int = 100) -> List[Tuple[str, str, int]]:
        """(sha256, backend, attempts) of pending adds, oldest first."""

        def txn(t: Any) -> List[Tuple[str, str, int]]:
            t.execute(
                "SELECT sha256, backend, attempts FROM synapse_pypi_pending ORDER BY queued_at LIMIT ?", (limit,)
            )
            return [(r[0], r[1], int(r[2])) for r in t.fetchall()]

        return await self._run_db("synapse_pypi_pending", txn)

    async def pending_blobs(self) -> List[str]:
        def txn(t: Any) -> List[str]:
            t.execute("SELECT DISTINCT sha256 FROM synapse_pypi_pending")
            return [r[0] for r in t.fetchall()]

        return await self._run_db("synapse_pypi_pending_blobs", txn)

    async def drop_pending(self, sha256: str, backend: str) -> None:
        def txn(t: Any) -> None:
            t.execute("DELETE FROM synapse_pypi_pending WHERE sha256 = ? AND backend = ?", (sha256, backend))

        await self._run_db("synapse_pypi_drop_pending", txn)

    async def count_attempt(self, sha256: str, backend: str) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "UPDATE synapse_pypi_pending SET attempts = attempts + 1 WHERE sha256 = ? AND backend = ?",
                (sha256, backend),
            )

        await self._run_db("synapse_pypi_count_attempt", txn)

    async def count_outage(self, backend: str, max_attempts: int) -> List[str]:
        """Count a failed attempt for every pending add to `backend` (its service could not
        be reached); the adds that reached `max_attempts` are dropped.

        Returns:
            The sha256 of every dropped add.
        """

        def txn(t: Any) -> List[str]:
            t.execute("UPDATE synapse_pypi_pending SET attempts = attempts + 1 WHERE backend = ?", (backend,))
            t.execute(
                "SELECT sha256 FROM synapse_pypi_pending WHERE backend = ? AND attempts >= ?", (backend, max_attempts)
            )
            dropped = [r[0] for r in t.fetchall()]
            t.execute("DELETE FROM synapse_pypi_pending WHERE backend = ? AND attempts >= ?", (backend, max_attempts))
            return dropped

        return await self._run_db("synapse_pypi_count_outage", txn)

    async def forget_stored(self, sha256: str, unstore: bool, now: int) -> List[str]:
        """A blob left the local cache: drop its pending adds and, with `unstore`, move what
        the backends hold of it to the removal queue and forget the references they made
        (so that it is neither read from them nor attested with them again).

        Returns:
            The backends whose pending add was dropped (the blob never reached them).
        """

        def txn(t: Any) -> List[str]:
            t.execute("SELECT backend FROM synapse_pypi_pending WHERE sha256 = ?", (sha256,))
            dropped = sorted(r[0] for r in t.fetchall())
            t.execute("DELETE FROM synapse_pypi_pending WHERE sha256 = ?", (sha256,))
            if not unstore:
                return dropped
            t.execute("SELECT backend, reference FROM synapse_pypi_stored WHERE sha256 = ?", (sha256,))
            for backend, reference in t.fetchall():
                t.execute(
                    "INSERT INTO synapse_pypi_removals (sha256, backend, reference, queued_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (sha256, backend) DO UPDATE SET reference = excluded.reference",
                    (sha256, backend, reference, now),
                )
                t.execute("DELETE FROM synapse_pypi_refs WHERE sha256 = ? AND learned_from = ?", (sha256, backend))
            t.execute("DELETE FROM synapse_pypi_stored WHERE sha256 = ?", (sha256,))
            return dropped

        return await self._run_db("synapse_pypi_forget_stored", txn)

    async def queue_removal(self, sha256: str, backend: str, reference: str, now: int) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_removals (sha256, backend, reference, queued_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256, backend) DO UPDATE SET reference = excluded.reference",
                (sha256, backend, reference, now),
            )

        await self._run_db("synapse_pypi_queue_removal", txn)

    async def removals(self, limit: int = 100) -> List[Tuple[str, str, str, int]]:
        """(sha256, backend, reference, attempts) of queued removals, oldest first."""

        def txn(t: Any) -> List[Tuple[str, str, str, int]]:
            t.execute(
                "SELECT sha256, backend, reference, attempts FROM synapse_pypi_removals ORDER BY queued_at LIMIT ?",
                (limit,),
            )
            return [(r[0], r[1], r[2], int(r[3])) for r in t.fetchall()]

        return await self._run_db("synapse_pypi_removals", txn)

    async def drop_removal(self, sha256: str, backend: str) -> None:
        def txn(t: Any) -> None:
            t.execute("DELETE FROM synapse_pypi_removals WHERE sha256 = ? AND backend = ?", (sha256, backend))

        await self._run_db("synapse_pypi_drop_removal", txn)

    async def count_removal_attempt(self, sha256: str, backend: str) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "UPDATE synapse_pypi_removals SET attempts = attempts + 1 WHERE sha256 = ? AND backend = ?",
                (sha256, backend),
            )

        await self._run_db("synapse_pypi_count_removal_attempt", txn)

    # -- files known without an upstream page ----------------------------------------

    async def add_known(
        self,
        project: str,
        filename: str,
        sha256: str,
        size: Optional[int],
        requires_python: Optional[str],
        learned_from: str,
    ) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_known (project, filename, sha256, size, requires_python, learned_from)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (project, filename) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size,"
                " requires_python = excluded.requires_python, learned_from = excluded.learned_from",
                (project, filename, sha256, size, requires_python, learned_from),
            )

        await self._run_db("synapse_pypi_add_known", txn)

    async def known_files(self, project: str) -> List[Tuple[str, str, Optional[int], Optional[str]]]:
        """(filename, sha256, size, requires_python) of the files known for `project`."""

        def txn(t: Any) -> List[Tuple[str, str, Optional[int], Optional[str]]]:
            t.execute(
                "SELECT filename, sha256, size, requires_python FROM synapse_pypi_known WHERE project = ?"
                " ORDER BY filename",
                (project,),
            )
            return [(r[0], r[1], None if r[2] is None else int(r[2]), r[3]) for r in t.fetchall()]

        return await self._run_db("synapse_pypi_known_files", txn)

    # -- trust -----------------------------------------------------------------------

    async def record_fraud(
        self, event_id: str, project: str, filename: str, publisher: str, claimed: str, truth: str, kind: str
    ) -> None:
        now = int(time.time() * 1000)

        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_flagged (event_id, project, filename, publisher, claimed, truth, kind,"
                " flagged_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
                (event_id, project, filename, publisher[:512], claimed[:128], truth[:128], kind, now),
            )

        await self._run_db("synapse_pypi_record_fraud", txn)

    async def flagged(self, project: str) -> List[Dict[str, Any]]:
        def txn(t: Any) -> List[Dict[str, Any]]:
            t.execute(
                "SELECT event_id, filename, publisher, claimed, truth, kind, flagged_at FROM synapse_pypi_flagged"
                " WHERE project = ? ORDER BY flagged_at",
                (project,),
            )
            cols = ("event_id", "filename", "publisher", "claimed", "truth", "kind", "flagged_at")
            return [dict(zip(cols, r)) for r in t.fetchall()]

        return await self._run_db("synapse_pypi_flagged", txn)

    async def add_ref_if_missing(self, sha256: str, kind: str, reference: str, learned_from: str) -> None:
        def txn(t: Any) -> None:
            t.execute(
                "INSERT INTO synapse_pypi_refs (sha256, kind, reference, learned_from) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (sha256, kind) DO NOTHING",
                (sha256, kind, reference, learned_from[:512]),
            )

        await self._run_db("synapse_pypi_add_ref_if_missing", txn)

    async def own_cid(self, sha256: str) -> Optional[str]:
        """The CID one of our own storage backends computed for the blob, if any (never one
        learnt from someone else's attestation)."""

        def txn(t: Any) -> Optional[str]:
            t.execute(
                "SELECT r.reference FROM synapse_pypi_refs AS r INNER JOIN synapse_pypi_stored AS s"
                " ON s.sha256 = r.sha256 AND s.reference = r.reference WHERE r.sha256 = ? AND r.kind = ?",
                (sha256, "cid"),
            )
            row = t.fetchone()
            return str(row[0]) if row else None

        return await self._run_db("synapse_pypi_own_cid", txn)

    async def keep_contents(self, room_id: str, contents: List[Tuple[str, str]]) -> None:
        """Keep (event id, content JSON) pairs of events the trust view relies on."""

        def txn(t: Any) -> None:
            for event_id, content in contents:
                t.execute(
                    "INSERT INTO synapse_pypi_kept (event_id, room_id, content) VALUES (?, ?, ?)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    (event_id, room_id, content),
                )

        if contents:
            await self._run_db("synapse_pypi_keep_contents", txn)

    async def kept_contents(self, event_ids: List[str]) -> Dict[str, str]:
        """event id -> content JSON for those of `event_ids` we kept."""

        def txn(t: Any) -> Dict[str, str]:
            out: Dict[str, str] = {}
            for chunk in _chunks(event_ids):
                marks = ", ".join("?" for _ in chunk)
                t.execute(f"SELECT event_id, content FROM synapse_pypi_kept WHERE event_id IN ({marks})", chunk)
                out.update((r[0], r[1]) for r in t.fetchall())
            return out

        return await self._run_db("synapse_pypi_kept_contents", txn) if event_ids else {}

    async def redacters(self, event_ids: List[str]) -> Dict[str, List[str]]:
        """event id -> the senders of the redactions of it that Synapse holds.

        Read from Synapse's own `redactions` and `events` tables (stable since 2016): the
        module API says that an event is redacted, not by whom, and the trust view counts a
        redaction only when its sender may redact (trust/_fold.py)."""

        def txn(t: Any) -> Dict[str, List[str]]:
            out: Dict[str, List[str]] = {}
            for chunk in _chunks(event_ids):
                marks = ", ".join("?" for _ in chunk)
                t.execute(
                    "SELECT r.redacts, e.sender FROM redactions AS r INNER JOIN events AS e"
                    f" ON e.event_id = r.event_id WHERE r.redacts IN ({marks})",
                    chunk,
                )
                for redacts, sender in t.fetchall():
                    out.setdefault(redacts, []).append(sender)
            return out

        return await self._run_db("synapse_pypi_redacters", txn) if event_ids else {}

    async def files_for_blob(self, sha256: str) -> List[Tuple[str, str]]:
        """(project, filename) pairs whose content is this blob."""

        def txn(t: Any) -> List[Tuple[str, str]]:
            t.execute("SELECT project, filename FROM synapse_pypi_files WHERE sha256 = ?", (sha256,))
            return [(r[0], r[1]) for r in t.fetchall()]

        return await self._run_db("synapse_pypi_files_for_blob", txn)

    async def forget_file(self, project: str, filename: str) -> Optional[str]:
        """Drop a file's mapping; returns its blob's sha256 if no other file uses the blob."""

        def txn(t: Any) -> Optional[str]:
            t.execute(
                "SELECT sha256 FROM synapse_pypi_files WHERE project = ? AND filename = ?", (project, filename)
            )
            row = t.fetchone()
            if row is None:
                return None
            t.execute("DELETE FROM synapse_pypi_files WHERE project = ? AND filename = ?", (project, filename))
            t.execute("SELECT COUNT(*) FROM synapse_pypi_files WHERE sha256 = ?", (row[0],))
            return row[0] if t.fetchone()[0] == 0 else None

        return await self._run_db("synapse_pypi_forget_file", txn)


def _chunks(items: List[str], size: int = 200) -> List[List[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
