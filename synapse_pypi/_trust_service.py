"""The trust layer inside Synapse: what the serve path asks, and what `on_new_event` feeds.

It puts together the package rooms (`_rooms.Rooms`: finding, reading, creating them), the pure
fold of their state (`trust._fold`) and the serve policy (`trust._policy`), moderation
(`_moderation.Moderation`: fraud, alarms, conflicts, notices), publishing our own word
(`_publisher.Publisher`) and bans (`_ban_service.Bans`). The serve path reads views from memory and submits Matrix work to the
queue; it never waits for a Matrix write (DESIGN.md §3).
"""

import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple

from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from synapse_pypi import index
from synapse_pypi._ban_service import Bans
from synapse_pypi._config import PyPIConfig
from synapse_pypi._event_feed import EventFeed
from synapse_pypi._matrix_queue import MatrixQueue
from synapse_pypi._matrix_writes import MatrixWrites
from synapse_pypi._moderation import Moderation
from synapse_pypi._names import NormalizedName
from synapse_pypi._publisher import Publisher
from synapse_pypi._rooms import ProjectTrust, Rooms
from synapse_pypi._store import Store
from synapse_pypi.trust import (
    Decision,
    Outcome,
    Record,
    RoomView,
    Rules,
    Verdict,
    decide,
    key_id,
    parse_public_key,
)

logger = logging.getLogger(__name__)

class UpstreamHashes(Protocol):
    async def __call__(self, project: str, filename: str) -> Tuple[Optional[str], bool]:
        """(the sha256 the cached upstream page gives for a file or None, page fresh?)."""


def version_of(filename: str) -> Optional[str]:
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


class TrustService:
    """Package rooms, peers' rooms and the serve policy.

    Args:
        api: the ModuleApi.
        config: the module config.
        store: the module's tables.
        signing_key: this server's attestation key.
        queue: the Matrix queue.
        upstream_hashes: what the cached upstream page says of a file.
        on_vouch_lost: called with a project when a vouch goes away (its page is revalidated).
        clock: the reactor.
    """

    def __init__(
        self,
        api: Any,
        config: PyPIConfig,
        store: Store,
        signing_key: Any,
        queue: MatrixQueue,
        upstream_hashes: UpstreamHashes,
        on_vouch_lost: Callable[[str], None],
        clock: Any,
    ):
        self._api = api
        self._config = config
        self._upstream_hashes = upstream_hashes
        self._on_vouch_lost = on_vouch_lost
        self._run_background = api.run_as_background_process
        #: `ModuleApi.run_as_background_process`, for the parts that hand work over.
        self.run_background = api.run_as_background_process
        self.queue = queue
        self.bot = f"@{config.bot_localpart}:{api.server_name}"
        # project -> (project_generation, whether a valid attestation says "upload").
        self._uploads_seen: Dict[str, Tuple[Tuple[int, ...], bool]] = {}
        self._pinned: Dict[str, Dict[str, Any]] = {}
        for mxid, keys in config.trusted_keys.items():
            self._pinned[mxid] = dict(parse_public_key(k) for k in keys)
        self._pinned.setdefault(self.bot, {})[key_id(signing_key)] = signing_key.verify_key
        # project -> maintainer -> key id -> VerifyKey: they outrank the upstream there.
        self._maintainers: Dict[str, Dict[str, Dict[str, Any]]] = {
            project: {user: dict(parse_public_key(k) for k in keys) for user, keys in users.items()}
            for project, users in config.maintainer_keys.items()
        }
        writes = MatrixWrites(api)
        self._writes = writes
        self.rooms = Rooms(
            api, config, store, self._rules, self._run_background, self._local_loaded, self.on_new_event, clock, writes
        )
        self.publisher = Publisher(api, config, store, queue, self.rooms, signing_key, version_of, writes)
        self.moderation = Moderation(
            api, store, queue, self.bot, config.moderators, self._run_background,
            our_room=self._our_room, make_room=self.publisher.make_room, writes=writes,
        )
        #: Bans: refusals, ours, and moderators' commands.
        self.bans_service = Bans(config, self.rooms, self.publisher, self.moderation, self.bot, version_of)
        self.feed = EventFeed(
            api, store, self.rooms, self.moderation, self.publisher, self.bot,
            on_vouch_lost=on_vouch_lost, check_files=self._check_files, command=self.bans_service.command,
        )

    async def start(self) -> None:
        existing = await self._api.check_user_exists(self.bot)
        if existing is None:
            await self._writes.register_user(self._config.bot_localpart, displayname="PyPI mirror bot", admin=False)
            logger.info("registered the package-room bot %s", self.bot)
        logger.info("attestations signed by %s as %s", self.bot, key_id(self.publisher._key))
        if self._config.peers:
            logger.info("peers: %s", ", ".join(self._config.peers))

    def _rules(self, project: str, local: bool) -> Rules:
        return Rules(
            project=project,
            local=local,
            pinned=self._pinned,
            maintainers=self._maintainers.get(project, {}),
            key_power_level=self._config.trusted_key_power_level,
            own=self.bot if local else None,
        )

    def _our_room(self, project: str) -> Optional[RoomView]:
        pt = self.rooms.projects.get(project)
        return pt.local if pt is not None else None

    def _local_loaded(self, room: RoomView) -> None:
        self.publisher.check_key(room)
        self.publisher.restore_overwritten(room)

    # -- views -----------------------------------------------------------------------

    @property
    def known_rooms(self) -> Mapping[str, ProjectTrust]:
        """Projects whose rooms are loaded."""
        return self.rooms.projects

    def alias_for(self, project: str, server: Optional[str] = None) -> str:
        return self.rooms.alias_for(project, server)

    def project_generation(self, project: str) -> Tuple[int, ...]:
        """Changes whenever a verdict on the project's files may have (rendered pages
        depend on it)."""
        pt = self.rooms.projects.get(project)
        if pt is None:
            return ()
        return tuple(room.generation for room in pt.rooms) + (id(pt),)

    def attested(self, project: str, filename: str, sha256: str) -> bool:
        """Whether our bot's valid attestation of the file says these bytes."""
        pt = self.rooms.projects.get(project)
        mine = pt.local.record(filename, self.bot) if pt is not None and pt.local is not None else None
        return mine is not None and mine.valid and mine.sha256 == sha256

    async def view(self, project: str) -> ProjectTrust:
        """Our own room's view (read the first time; no Matrix writes)."""
        return await self.rooms.view(project)

    async def view_for_serve(self, project: str) -> ProjectTrust:
        """What a file serve needs: our room and peers' rooms (joined the first time, each
        within `peer_timeout`)."""
        return await self.rooms.with_peers(project)

    async def view_for_page(self, project: str) -> ProjectTrust:
        """What a project page needs: as for a file, so that the page carries the hash the
        file will be served with, but the first peer lookup is rate-limited."""
        return await self.rooms.with_peers(project, page_view=True)

    async def reload(self, project: str) -> ProjectTrust:
        """Forget what we know of the project's rooms and read them again (admin re-verify)."""
        return await self.rooms.reload(project)

    # -- the serve policy ------------------------------------------------------------

    def decide(
        self, pt: Optional[ProjectTrust], filename: str, upstream_sha256: Optional[str], online: bool
    ) -> Decision:
        claims = pt.claims(filename) if pt is not None else []
        return decide(claims, upstream_sha256, online, self._config.corroboration)

    def handle_decision(self, project: str, pt: Optional[ProjectTrust], filename: str, decision: Decision) -> None:
        """What a decision finds (`Moderation.handle`)."""
        self.moderation.handle(project, pt, filename, decision)

    async def make_room(self, project: str) -> Dict[str, Any]:
        """Our room for a project, made now if it is missing (the admin API: a maintainer may
        want to attest a release before anyone downloads it). Goes through the Matrix queue
        like every room; answers once it exists."""
        pt = await self.view(project)
        if pt.local is None:
            self.publisher.make_room(project)
            await self.queue.drain()
        pt = await self.view(project)
        return {"project": project, "room_id": pt.local.room_id if pt.local else None,
                "alias": self.alias_for(project)}

    def served(
        self, project: str, dist: index.DistFile, sha256: str, size: int, upstream_sha256: Optional[str],
        uploaded: bool = False,
    ) -> None:
        """A file was served or committed with these (verified) bytes: attest them. Returns
        at once; the attestation is made in the Matrix queue."""
        basis = "upload" if uploaded else "upstream" if upstream_sha256 == sha256 else "attestations"
        self.publisher.served(project, dist, sha256, size, basis)

    def stored(
        self, project: str, dist: index.DistFile, sha256: str, size: int, uploaded: bool = False,
        upstream_sha256: Optional[str] = None,
    ) -> None:
        """A backend holds the file now (a CID): attest it again with it, checked against
        what `served` would say (this job replaces a waiting one of `served`)."""
        basis = "upload" if uploaded else "upstream" if upstream_sha256 == sha256 else "attestations"
        self.publisher.stored(project, dist, sha256, size, basis)

    def attested_details(
        self, pt: Optional[ProjectTrust], filename: str, sha256: Optional[str]
    ) -> Tuple[Optional[int], Optional[str]]:
        """(size, requires-python) that the valid attestations of these bytes agree on; None
        where they disagree or say nothing (a losing upstream's page says nothing true)."""
        if pt is None or sha256 is None:
            return None, None
        agreeing = [rec.attestation for _, rec in pt.records(filename)
                    if rec.valid and rec.attestation is not None and rec.sha256 == sha256]
        sizes = {a.size for a in agreeing}
        pythons = {a.requires_python for a in agreeing}
        return (sizes.pop() if len(sizes) == 1 else None), (pythons.pop() if len(pythons) == 1 else None)

    # -- bans (policies): `_ban_service.Bans` ------------------------------------------

    def refusal(self, pt: Optional[ProjectTrust], project: str, filename: Optional[str]) -> Optional[str]:
        return self.bans_service.refusal(pt, project, filename)

    def ban(self, project: str, kind: str, entity: str, reason: str, source: str, reply: Any = None) -> None:
        self.bans_service.ban(project, kind, entity, reason, source, reply)

    def unban(self, project: str, kind: str, entity: str, reason: str, source: str, reply: Any = None) -> None:
        self.bans_service.unban(project, kind, entity, reason, source, reply)

    def our_bans(self, project: str) -> List[Record]:
        return self.bans_service.ours(project)

    def bans(self, pt: Optional[ProjectTrust]) -> List[Dict[str, Any]]:
        return self.bans_service.listing(pt)

    def cid_hints(self, pt: Optional[ProjectTrust], filename: str, sha256: str) -> List[str]:
        """CIDs that valid attestations of exactly these bytes carry: hints, not trust (the
        bytes are checked against the sha256 as they stream in). Our own bot's first."""
        if pt is None:
            return []
        recs = sorted(
            (rec for _, rec in pt.records(filename) if rec.valid and rec.sha256 == sha256 and rec.cid),
            key=lambda r: r.publisher != self.bot,
        )
        return list(dict.fromkeys(r.cid for r in recs if r.cid))

    async def on_new_event(self, event: Any, state: Mapping[Tuple[str, str], Any]) -> None:
        """Synapse's `on_new_event` callback: see `_event_feed.EventFeed`."""
        await self.feed.on_new_event(event, state)

    async def _check_files(self, project: str, files: List[str]) -> None:
        """New valid attestations, held against what the cached page says the upstream
        published: fraud, alarms and conflicts are found as they arrive."""
        pt = self.rooms.projects.get(project)
        for filename in files:
            upstream_sha, fresh = await self._upstream_hashes(project, filename)
            self.handle_decision(project, pt, filename, self.decide(pt, filename, upstream_sha, fresh))

    # -- offline pages and the admin API ---------------------------------------------

    async def uploaded_elsewhere(self, project: str) -> Optional[index.ProjectPage]:
        """The page of a project that a peer (or we) published from uploads: built from the
        rooms when a valid attestation of one of its files says it was an upload, else None.
        Such a project is served from the rooms only, never from our upstream (which might
        register the name later: dependency confusion)."""
        pt = await self.view_for_page(project)
        generation = self.project_generation(project)
        known = self._uploads_seen.get(project)
        if known is None or known[0] != generation:
            # Once per change of the rooms' verdicts, not per page request.
            uploaded = any(
                rec.valid and rec.attestation is not None and rec.attestation.verified_against == "upload"
                for filename in pt.filenames() for _, rec in pt.records(filename)
            )
            self._uploads_seen[project] = known = (generation, uploaded)
        return await self.page_from_room(project) if known[1] else None

    async def page_from_room(self, project: str) -> Optional[index.ProjectPage]:
        """A page built from the rooms' valid attestations (upstream unreachable, no cache).

        A file whose attestations conflict is listed without a hash, so that a client asking
        for it gets the 409 that names every side."""
        pt = await self.view_for_serve(project)
        files = []
        for filename in pt.filenames():
            decision = self.decide(pt, filename, None, False)
            if decision.outcome is Outcome.UNKNOWN:
                continue
            size, rp = self.attested_details(pt, filename, decision.sha256)
            hashes = {"sha256": decision.sha256} if decision.sha256 else {}
            files.append(index.DistFile(filename=filename, url="", hashes=hashes, requires_python=rp, size=size))
        if not files:
            return None
        return index.ProjectPage(
            name=NormalizedName(project),
            files=tuple(files),
            versions=index.versions_from_filenames(f.filename for f in files),
        )

    def status(
        self, pt: Optional[ProjectTrust], filename: str, upstream_sha256: Optional[str], online: bool
    ) -> Dict[str, Any]:
        """A file's attestations and the verdict on each, for the admin API."""
        decision = self.decide(pt, filename, upstream_sha256, online)
        return {
            "room_id": pt.local.room_id if pt and pt.local else None,
            "peer_rooms": {peer: room.room_id for peer, room in pt.peers.items()} if pt else {},
            "decision": {
                "outcome": decision.outcome.name.lower(),
                "sha256": decision.sha256,
                "reason": decision.reason,
                "fraud": [[c.publisher, c.sha256] for c in decision.fraud],
                "upstream_lost": decision.upstream_lost,
                "conflicting": [list(c) for c in decision.conflicting],
            },
            "attestations": [
                {
                    "room_id": room.room_id,
                    "publisher": r.publisher,
                    "sender": r.sender,
                    "event_id": r.event_id,
                    "sha256": r.sha256 or r.claimed,
                    "cid": r.cid,
                    **({"slot_of": r.publisher, "publisher": r.sender} if r.sender != r.publisher else {}),
                    "verdict": r.verdict.name.lower(),
                    "reason": r.reason,
                }
                for room, r in (pt.reports(filename) if pt else [])
            ],
        }

    def invalid_records(self, pt: Optional[ProjectTrust], filename: str) -> List[Tuple[RoomView, Record]]:
        if pt is None:
            return []
        return [(room, r) for room, r in pt.reports(filename) if r.verdict not in (Verdict.VALID, Verdict.REDACTED)]

    def counters(self) -> Dict[str, Any]:
        return {**self.moderation.counters(), "queue": self.queue.status(), "ignored_rooms": list(self.rooms.ignored)}
