"""The trust layer inside Synapse: package rooms, the in-memory view of their attestations,
our own attestations, and what happens to fraud.

One room per project (alias `#<prefix><project>:<server_name>`), created by the bot the
first time the project is needed. The view of a room is read from its state once and then
kept current by `on_new_event`; the serve policy (trust._policy.decide) runs on it before
every serve without touching the database.
"""

import logging
import time
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

import attrs
from packaging.utils import InvalidSdistFilename, InvalidWheelFilename, parse_sdist_filename, parse_wheel_filename

from synapse_pypi import index
from synapse_pypi._config import PyPIConfig
from synapse_pypi._context import SingleFlight
from synapse_pypi._names import NormalizedName
from synapse_pypi._store import Store
from synapse_pypi.trust import (
    ATTESTATION_TYPE,
    KEY_TYPE,
    Decision,
    MalformedAttestation,
    Outcome,
    Verdict,
    build_content,
    decide,
    key_id,
    parse_public_key,
    split_state_key,
    state_key_for,
    verify_attestation,
    verify_key_base64,
)

logger = logging.getLogger(__name__)

POWER_LEVELS = "m.room.power_levels"
# How many overwrites of one slot are walked back to find its owner's own attestation.
MAX_SLOT_HISTORY = 20
REDACTION = "m.room.redaction"


@attrs.define
class Record:
    """One attestation slot as we last saw it."""

    event_id: str
    publisher: str  # the slot's publisher (state key), not necessarily the sender
    sender: str
    verdict: Verdict
    sha256: Optional[str]  # what it claims, if it could be read
    cid: Optional[str]
    reason: str
    content: Dict[str, Any]


@attrs.define
class RoomView:
    project: str
    room_id: str
    # Our own room (room-published keys count there) or a peer's (only pinned keys do).
    local: bool = True
    alias: str = ""
    # filename -> publisher -> Record
    files: Dict[str, Dict[str, Record]] = attrs.Factory(dict)
    power: Dict[str, int] = attrs.Factory(dict)
    users_default: int = 0
    redact_level: int = 50
    room_keys: Dict[str, Dict[str, Any]] = attrs.Factory(dict)  # mxid -> key id -> VerifyKey
    by_event: Dict[str, Tuple[str, str]] = attrs.Factory(dict)  # event id -> (filename, publisher)
    creator: Optional[str] = None
    bot_joined: bool = False

    def level(self, user: str) -> int:
        if user == self.creator:
            return 10**9  # room v12: the creator's power is unlimited
        return self.power.get(user, self.users_default)


@attrs.define
class ProjectTrust:
    """Everything we know about one project's attestations: our room and peers' rooms."""

    project: str
    local: Optional[RoomView] = None
    peers: Dict[str, RoomView] = attrs.Factory(dict)  # peer server name -> its room
    peer_misses: Dict[str, float] = attrs.Factory(dict)  # peer -> when we last failed to find it

    @property
    def rooms(self) -> List[RoomView]:
        return ([self.local] if self.local else []) + list(self.peers.values())

    def records(self, filename: str) -> List[Tuple[RoomView, Record]]:
        return [(room, rec) for room in self.rooms for rec in room.files.get(filename, {}).values()]

    def filenames(self) -> List[str]:
        return sorted({f for room in self.rooms for f in room.files})


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
        run_background: `api.run_as_background_process`.
        clock: the reactor (timeouts for peers).
    """

    def __init__(
        self,
        api: Any,
        config: PyPIConfig,
        store: Store,
        signing_key: Any,
        run_background: Callable,
        clock: Any = None,
    ):
        self._api = api
        self._config = config
        self._store = store
        self._key = signing_key
        self._key_id = key_id(signing_key)
        self._run_background = run_background
        self._clock = clock
        self.bot = f"@{config.bot_localpart}:{api.server_name}"
        self._projects: Dict[str, ProjectTrust] = {}
        self._rooms: Dict[str, RoomView] = {}  # room id -> view
        self._handled: Set[str] = set()  # event ids already flagged
        self.fraud_count = 0
        self.reported_count = 0
        self._pinned: Dict[str, Dict[str, Any]] = {}
        for mxid, keys in config.trusted_keys.items():
            self._pinned[mxid] = dict(parse_public_key(k) for k in keys)
        self._pinned.setdefault(self.bot, {})[self._key_id] = signing_key.verify_key
        # project -> maintainer -> key id -> VerifyKey: outrank the upstream for that project.
        self._maintainers: Dict[str, Dict[str, Dict[str, Any]]] = {
            project: {user: dict(parse_public_key(k) for k in keys) for user, keys in users.items()}
            for project, users in config.maintainer_keys.items()
        }
        self._upstream_noticed: Set[Tuple[str, str, str]] = set()
        self._flights = SingleFlight()
        self._attest_locks: Dict[str, Any] = {}
        # Bumped on every change to any view (rendered pages depend on the views).
        self.generation = 0
        # (project, filename) -> (upstream sha256 or None, page fresh?); set by the module.
        self.lookup_upstream: Optional[Callable[[str, str], Awaitable[Tuple[Optional[str], bool]]]] = None
        # Called when a vouch disappears, so the next serve re-verifies with the upstream.
        self.on_vouch_lost: Callable[[str], None] = lambda project: None

    # -- start-up --------------------------------------------------------------------

    async def start(self) -> None:
        existing = await self._api.check_user_exists(self.bot)
        if existing is None:
            await self._api.register_user(self._config.bot_localpart, displayname="PyPI mirror bot", admin=False)
            logger.info("registered the package-room bot %s", self.bot)
        logger.info("attestations signed by %s as %s", self.bot, self._key_id)
        if self._config.peers:
            logger.info("peers: %s", ", ".join(self._config.peers))

    # -- keys ------------------------------------------------------------------------

    def keys_for(self, room: Optional[RoomView], user: str) -> Mapping[str, Any]:
        """The verify keys we trust for `user`: pinned in config (and our own), plus, in
        our own rooms only, keys the user published there while at or above the
        configured power level. A peer's room power is the peer's to give, not ours."""
        if room is not None and user in self._maintainers.get(room.project, {}):
            # A maintainer of this project is known by the pinned keys alone.
            return self._maintainers[room.project][user]
        keys = dict(self._pinned.get(user, {}))
        if room is not None and room.local and room.level(user) >= self._config.trusted_key_power_level:
            keys.update(room.room_keys.get(user, {}))
        return keys

    # -- views -----------------------------------------------------------------------

    @property
    def known_rooms(self) -> Mapping[str, ProjectTrust]:
        """Projects whose rooms are loaded."""
        return self._projects

    def alias_for(self, project: str, server: Optional[str] = None) -> str:
        return f"#{self._config.room_alias_prefix}{project}:{server or self._api.server_name}"

    async def view(self, project: str) -> ProjectTrust:
        """What we know of `project`: our room and peers' rooms, read from their state the
        first time (peers joined over federation, each within `peer_timeout`)."""
        pt = self._projects.get(project)
        if pt is not None:
            self._maybe_retry_peers(pt)
            return pt
        # One key for loading and creating: a half-made room (its alias is bound before
        # the bot has joined) is never loaded by a concurrent request.
        return await self._flights.run(("room", project), lambda: self._load(project))

    async def _load(self, project: str) -> ProjectTrust:
        pt = self._projects.get(project)
        if pt is not None:
            return pt
        pt = ProjectTrust(project)
        pt.local = await self._load_local(project)
        if self._config.peers:
            await self._join_peers(pt, self._config.peers)
        self._projects[project] = pt
        return pt

    async def _load_local(self, project: str) -> Optional[RoomView]:
        alias = self.alias_for(project)
        try:
            room_id, _ = await self._api.lookup_room_alias(alias)
        except Exception as e:
            if getattr(e, "code", None) == 404:
                return None
            raise
        room = await self._read_room(project, room_id, local=True, alias=alias)
        if room.creator == self.bot and room.bot_joined:
            if self._key_id not in room.room_keys.get(self.bot, {}):
                # The key was rotated: the room must name the key we sign with now, and
                # only that one, so attestations made with the old key stop counting (the
                # bot attests again as files are served).
                try:
                    await self._publish_key(room)
                except Exception as e:
                    logger.warning("could not publish our key in %s: %s", room_id, e)
            return room
        self._rooms.pop(room_id, None)
        if room.creator == self.bot:
            # A room whose creation was cut short (Synapse stopped after binding the alias,
            # before the bot's join): nothing can be posted there. Start again.
            logger.warning("%s points at %s, which was never finished: making a new room", alias, room_id)
        else:
            # Someone else bound our alias to a room of theirs, where they hold unlimited
            # power: nothing in it is trusted. The alias namespace is the mirror's: take it
            # back, and the project gets a room of the bot's own.
            logger.warning(
                "%s points at %s, created by %s and not by %s: ignoring that room and reclaiming the alias",
                alias,
                room_id,
                room.creator,
                self.bot,
            )
        await self._unbind_alias(alias)
        return None

    async def _unbind_alias(self, alias: str) -> None:
        # The module API can bind aliases (create_room) but not unbind them; the directory
        # handler's own deletion, without the requester checks, is what an admin's would do.
        from synapse.types import RoomAlias

        handler = self._api._hs.get_directory_handler()
        await handler._delete_association(RoomAlias.from_string(alias))

    async def _read_room(self, project: str, room_id: str, local: bool, alias: str) -> RoomView:
        state = await self._api.get_room_state(room_id)
        room = RoomView(project=project, room_id=room_id, local=local, alias=alias)
        self._rebuild(room, state)
        await self._recover_overwritten(room, state)
        self._rooms[room_id] = room
        return room

    async def _recover_overwritten(self, room: RoomView, state: Mapping[Tuple[str, str], Any]) -> None:
        """For each slot whose current event was sent by someone other than its owner, find
        the owner's own last attestation there (the events it replaced), so an intruder's
        write does not erase the owner's vouch across a restart or a re-verify. A redacted
        owner's event counts as redacted, as it would have."""
        for (etype, skey), ev in state.items():
            if etype != ATTESTATION_TYPE:
                continue
            try:
                _, publisher = split_state_key(skey)
            except MalformedAttestation:
                continue
            if ev.sender == publisher:
                continue
            replaced = ev.unsigned.get("replaces_state")
            for _ in range(MAX_SLOT_HISTORY):
                if not isinstance(replaced, str):
                    break
                prev = await self._api._store.get_event(replaced, allow_none=True)
                if prev is None or prev.room_id != room.room_id:
                    break
                if prev.sender == publisher:
                    self._read_attestation(room, prev)
                    logger.info("%s: %s's attestation %s restored under an overwrite", skey, publisher, prev.event_id)
                    break
                replaced = prev.unsigned.get("replaces_state")

    # -- peers -----------------------------------------------------------------------

    async def _join_peers(self, pt: ProjectTrust, peers: Tuple[str, ...]) -> None:
        """Join the peers' rooms for this project, in parallel, each within the timeout."""
        from synapse.module_api import run_in_background
        from twisted.internet import defer

        from synapse_pypi._context import make_deferred_yieldable

        calls = [run_in_background(self._join_peer, pt, peer) for peer in peers]
        await make_deferred_yieldable(defer.gatherResults(calls, consumeErrors=True))

    async def _join_peer(self, pt: ProjectTrust, peer: str) -> None:
        alias = self.alias_for(pt.project, peer)
        started = time.monotonic()
        try:
            # One bound for the lookup and the join together: `peer_timeout` is the most a
            # peer can add to a request.
            room_id = await self._bounded(self._find_and_join(alias, peer))
            room = await self._read_room(pt.project, room_id, local=False, alias=alias)
        except Exception as e:
            pt.peer_misses[peer] = time.monotonic()
            code = getattr(e, "code", None)
            if code == 404:
                logger.info("peer %s has no room for %s", peer, pt.project)
            else:
                logger.warning("peer %s: cannot join %s (%s: %s)", peer, alias, e.__class__.__name__, e)
            return
        pt.peers[peer] = room
        pt.peer_misses.pop(peer, None)
        logger.info(
            "joined %s's room %s for %s in %.2fs (%d attested files)",
            peer,
            room.room_id,
            pt.project,
            time.monotonic() - started,
            len(room.files),
        )

    async def _find_and_join(self, alias: str, peer: str) -> str:
        room_id, servers = await self._api.lookup_room_alias(alias)
        membership = await self._api.get_room_state(room_id, [("m.room.member", self.bot)])
        member = membership.get(("m.room.member", self.bot))
        if member is None or dict(member.content).get("membership") != "join":
            await self._api.update_room_membership(
                sender=self.bot,
                target=self.bot,
                room_id=room_id,
                new_membership="join",
                remote_room_hosts=[peer] + [s for s in servers if s != peer],
            )
        return room_id

    async def _bounded(self, awaitable: Any) -> Any:
        """Await a Synapse call for at most `peer_timeout`: a slow or dead peer must never
        hold a request for longer."""
        from synapse.module_api import make_deferred_yieldable, run_in_background
        from twisted.internet import defer

        async def call() -> Any:
            return await awaitable

        d = run_in_background(call)
        d.addTimeout(self._config.peer_timeout_s, self._clock or _reactor())
        try:
            return await make_deferred_yieldable(d)
        except defer.TimeoutError:
            raise TimeoutError(f"no answer within {self._config.peer_timeout_s:g}s")

    def _maybe_retry_peers(self, pt: ProjectTrust) -> None:
        """Peers we could not reach are tried again, in the background, after a while."""
        now = time.monotonic()
        due = tuple(
            p
            for p in self._config.peers
            if p not in pt.peers and now - pt.peer_misses.get(p, 0) > self._config.peer_retry_s
        )
        if due:
            for p in due:
                pt.peer_misses[p] = now  # one retry in flight per peer
            self._run_background("synapse_pypi_join_peers", self._join_peers, pt, due)

    # -- reading room state ----------------------------------------------------------

    def _rebuild(self, view: RoomView, state: Mapping[Tuple[str, str], Any]) -> None:
        """Read power levels, keys and every attestation from a room's state."""
        create = state.get(("m.room.create", ""))
        if create is not None:
            view.creator = create.sender
        member = state.get(("m.room.member", self.bot))
        view.bot_joined = member is not None and dict(member.content).get("membership") == "join"
        self._read_power(view, state.get((POWER_LEVELS, "")))
        view.room_keys = {}
        for (etype, _skey), ev in state.items():
            if etype == KEY_TYPE:
                self._read_keys(view, ev)
        view.files = {}
        view.by_event = {}
        for (etype, _skey), ev in state.items():
            if etype == ATTESTATION_TYPE:
                self._read_attestation(view, ev)

    def _read_power(self, view: RoomView, ev: Any) -> None:
        content = dict(ev.content) if ev is not None else {}
        users = content.get("users") or {}
        view.power = {u: int(v) for u, v in users.items() if isinstance(v, int)}
        default = content.get("users_default", 0)
        view.users_default = default if isinstance(default, int) else 0
        redact = content.get("redact", 50)
        view.redact_level = redact if isinstance(redact, int) else 50

    def _read_keys(self, view: RoomView, ev: Any) -> None:
        # A key event counts only in its owner's own slot, and only while not redacted.
        if ev.internal_metadata.is_redacted() or ev.get_state_key() != ev.sender:
            view.room_keys.pop(ev.get_state_key(), None)
            return
        keys = {}
        for kid, b64 in (dict(ev.content).get("keys") or {}).items():
            try:
                parsed_id, verify_key = parse_public_key(f"{kid} {b64}")
            except Exception:
                continue
            keys[parsed_id] = verify_key
        view.room_keys[ev.sender] = keys

    def _read_attestation(self, view: RoomView, ev: Any) -> Record:
        state_key = ev.get_state_key()
        redacted = ev.internal_metadata.is_redacted()
        content = ev.get_dict().get("content") or {}
        verdict, att, reason = verify_attestation(
            content, state_key, ev.sender, redacted, lambda user: self.keys_for(view, user)
        )
        if verdict is Verdict.VALID and att is not None and att.project != view.project:
            verdict, reason = Verdict.MALFORMED, f"attestation for project {att.project!r} in the room of {view.project}"
        try:
            filename, publisher = split_state_key(state_key)
        except MalformedAttestation:
            filename, publisher = state_key, ev.sender
        # Only a VALID attestation's parsed claim vouches; for the others keep what they
        # say (bounded), for the notice.
        sha = att.sha256 if att is not None else None
        cid = att.cid if att is not None and verdict is Verdict.VALID else None
        if sha is None:
            hashes = content.get("hashes") if isinstance(content, dict) else None
            if isinstance(hashes, dict) and isinstance(hashes.get("sha256"), str):
                sha = hashes["sha256"][:64]
        record = Record(ev.event_id, publisher, ev.sender, verdict, sha, cid, reason, content)
        old = view.files.setdefault(filename, {}).get(publisher)
        if ev.sender != publisher and old is not None and old.verdict is Verdict.VALID:
            # Someone wrote into another publisher's slot. Matrix lets anyone with the power
            # level do that; it must not erase the owner's vouch. The owner's signed
            # attestation stays relied on, and the intruder's event is only reported.
            return record
        if old is not None:
            view.by_event.pop(old.event_id, None)
        view.files[filename][publisher] = record
        view.by_event[ev.event_id] = (filename, publisher)
        self.generation += 1
        return record

    def _reverify_all(self, view: RoomView) -> None:
        self.generation += 1
        for filename, slots in view.files.items():
            for publisher, rec in list(slots.items()):
                if rec.verdict is Verdict.REDACTED:
                    continue
                verdict, _, reason = verify_attestation(
                    rec.content, state_key_for(filename, publisher), rec.sender, False,
                    lambda user: self.keys_for(view, user),
                )
                rec.verdict, rec.reason = verdict, reason

    # -- on_new_event ----------------------------------------------------------------

    async def on_new_event(self, event: Any, state: Mapping[Tuple[str, str], Any]) -> None:
        """Keep views current, for our rooms and peers' rooms alike. Cheap (it runs inline
        for federated events): checks go to the background."""
        room = self._rooms.get(event.room_id)
        if room is None:
            return
        etype = event.type
        if etype == REDACTION:
            target = event.redacts or dict(event.content).get("redacts")
            where = room.by_event.get(target) if isinstance(target, str) else None
            if where is not None:
                filename, publisher = where
                rec = room.files[filename][publisher]
                was_valid = rec.verdict is Verdict.VALID
                rec.verdict, rec.reason, rec.sha256 = Verdict.REDACTED, "redacted", None
                self.generation += 1
                logger.info(
                    "attestation %s for %s by %s redacted by %s", target, filename, publisher, event.sender
                )
                if was_valid:
                    self.on_vouch_lost(room.project)
            elif target is not None:
                ev = state.get((KEY_TYPE, _state_key_of(state, target)))
                if ev is not None:
                    self._read_keys(room, ev)
                    self._reverify_all(room)
            return
        if not event.is_state():
            return
        if etype == ATTESTATION_TYPE:
            rec = self._read_attestation(room, event)
            self._run_background("synapse_pypi_check_attestation", self._check_new, room, event.get_state_key(), rec)
        elif etype == KEY_TYPE:
            self._read_keys(room, event)
            self._reverify_all(room)
        elif etype == POWER_LEVELS:
            self._read_power(room, event)
            self._reverify_all(room)

    async def _check_new(self, room: RoomView, state_key: str, rec: Record) -> None:
        """A new attestation, checked as it arrives: reported if invalid; if valid, held
        against what the cached page says the upstream published (with its own claim,
        even if a redaction overtook this check)."""
        if rec.sender == self.bot:
            return
        try:
            filename, _ = split_state_key(state_key)
        except MalformedAttestation:
            filename = state_key
        if rec.verdict not in (Verdict.VALID, Verdict.REDACTED):
            await self.report_invalid(room, filename, rec)
            if rec.publisher == self.bot:
                await self._restore_own(room, filename)
            return
        if rec.verdict is not Verdict.VALID or self.lookup_upstream is None or not rec.sha256:
            return
        upstream_sha, fresh = await self.lookup_upstream(room.project, filename)
        pt = self._projects.get(room.project)
        claims = self._claims(pt, filename) if pt else {}
        claims[rec.publisher] = rec.sha256
        decision = decide(claims, upstream_sha, fresh, self._pinned_claims(room.project, claims))
        if any(p == rec.publisher for p, _ in decision.fraud) and rec.event_id not in self._handled:
            self._handled.add(rec.event_id)
            await self._flag_fraud(room, filename, rec, rec.sha256, decision)

    async def _restore_own(self, room: RoomView, filename: str) -> None:
        """Someone overwrote our slot: send our attestation again, so that the room's
        state (what peers and a restarted server read) carries it again."""
        mine = room.files.get(filename, {}).get(self.bot)
        if mine is None or mine.verdict is not Verdict.VALID or mine.sender != self.bot:
            return
        try:
            ev = await self._api.create_and_send_event_into_room(
                {
                    "type": ATTESTATION_TYPE,
                    "room_id": room.room_id,
                    "sender": self.bot,
                    "state_key": state_key_for(filename, self.bot),
                    "content": mine.content,
                }
            )
        except Exception as e:
            logger.warning("could not restore our attestation of %s in %s: %s", filename, room.room_id, e)
            return
        self._read_attestation(room, ev)
        logger.info("restored our attestation of %s in %s after someone overwrote it", filename, room.room_id)

    # -- the serve policy ------------------------------------------------------------

    @staticmethod
    def _claims(pt: Optional[ProjectTrust], filename: str) -> Dict[str, str]:
        """publisher -> sha256 of the valid attestations for a file, across rooms. One
        publisher saying two things in two rooms counts as two claims."""
        claims: Dict[str, str] = {}
        if pt is None:
            return claims
        for room, rec in pt.records(filename):
            if rec.verdict is not Verdict.VALID or not rec.sha256:
                continue
            if rec.publisher in claims and claims[rec.publisher] != rec.sha256:
                claims[f"{rec.publisher} (in {room.alias or room.room_id})"] = rec.sha256
            else:
                claims[rec.publisher] = rec.sha256
        return claims

    def decide(
        self, pt: Optional[ProjectTrust], filename: str, upstream_sha256: Optional[str], online: bool
    ) -> Decision:
        claims = self._claims(pt, filename)
        pinned = self._pinned_claims(pt.project, claims) if pt is not None else {}
        return decide(claims, upstream_sha256, online, pinned)

    def _pinned_claims(self, project: str, claims: Mapping[str, str]) -> Dict[str, str]:
        """The claims made by maintainers pinned to the project: they outrank the upstream,
        for the serve and for judging a newly arrived attestation alike."""
        maintainers = self._maintainers.get(project, {})
        return {p: sha for p, sha in claims.items() if p in maintainers}

    def maintainer_overrules(
        self, pt: Optional[ProjectTrust], filename: str, upstream_sha256: Optional[str], decision: Decision
    ) -> None:
        """A pinned maintainer's hash differs from the upstream's: say so in the room, once."""
        if pt is None or pt.local is None or not upstream_sha256 or not decision.sha256:
            return
        maintainers = self._maintainers.get(pt.project, {})
        if decision.sha256 == upstream_sha256 or not maintainers:
            return
        key = (pt.project, filename, upstream_sha256)
        if key in self._upstream_noticed:
            return
        who = sorted(p for p, sha in self._claims(pt, filename).items() if p in maintainers and sha == decision.sha256)
        if not who:
            return
        self._upstream_noticed.add(key)
        text = (
            f"Upstream contradicts the maintainer: the upstream index publishes sha256 {upstream_sha256} for "
            f"{filename}, but {', '.join(who)} attested {decision.sha256}. {self._api.server_name} serves only "
            "the maintainer's bytes."
        )
        logger.warning("%s", text)
        self._run_background("synapse_pypi_notice", self._notice, pt.local, text)

    def invalid_records(self, pt: Optional[ProjectTrust], filename: str) -> List[Tuple[RoomView, Record]]:
        if pt is None:
            return []
        return [(room, r) for room, r in pt.records(filename) if r.verdict not in (Verdict.VALID, Verdict.REDACTED)]

    def handle_decision(self, project: str, pt: Optional[ProjectTrust], filename: str, decision: Decision) -> None:
        """Flag fraud found by a decision, and report invalid attestations, in the background."""
        if pt is None:
            return
        wrong = {(p.split(" (in ")[0], sha) for p, sha in decision.fraud}
        for room, rec in pt.records(filename):
            if (rec.publisher, rec.sha256) in wrong and rec.verdict is Verdict.VALID:
                if rec.event_id not in self._handled:
                    self._handled.add(rec.event_id)
                    self._run_background(
                        "synapse_pypi_fraud", self._flag_fraud, room, filename, rec, rec.sha256, decision
                    )
        for room, rec in self.invalid_records(pt, filename):
            if rec.event_id not in self._handled:
                self._run_background("synapse_pypi_report", self.report_invalid, room, filename, rec)

    async def _flag_fraud(
        self, room: RoomView, filename: str, rec: Record, claimed: Optional[str], decision: Decision
    ) -> None:
        self.fraud_count += 1
        truth = decision.sha256
        if decision.outcome is Outcome.SERVE:  # with fraud, only when pinned maintainers decide
            source = "the hash the project's pinned maintainer attested"
        else:
            source = "the upstream index's hash"
        text = (
            f"Fraudulent attestation: {rec.publisher} says {filename} has sha256 {claimed}, "
            f"but it is {truth} ({source}, checked by {self._api.server_name}). "
            "This attestation is not relied on."
        )
        redacted = await self._redact(room, rec.event_id, f"fraud: wrong sha256 for {filename}")
        await self._notice(room, text + (" It has been redacted." if redacted else " Moderators: please redact it."))
        await self._store.record_fraud(
            rec.event_id, room.project, filename, rec.publisher, claimed or "", truth or "", "fraud"
        )
        logger.warning("fraud in %s: %s", room.room_id, text)

    async def report_invalid(self, room: RoomView, filename: str, rec: Record) -> None:
        if rec.event_id in self._handled:
            return
        self._handled.add(rec.event_id)
        if rec.sender == self.bot and rec.publisher == self.bot and rec.verdict is Verdict.UNKNOWN_KEY:
            # Signed with our own previous key: we attest again when the file is served.
            logger.info("our attestation of %s in %s is signed with a previous key", filename, room.room_id)
            return
        self.reported_count += 1
        text = (
            f"Invalid attestation for {filename} in the slot of {rec.publisher} (sent by {rec.sender}): {rec.reason}."
        )
        # Unknown keys may be legitimate (a key not yet published): report, do not redact.
        redacted = False
        if rec.verdict is not Verdict.UNKNOWN_KEY:
            redacted = await self._redact(room, rec.event_id, f"invalid attestation: {rec.reason}")
        await self._notice(room, text + (" It has been redacted." if redacted else " It is not relied on."))
        await self._store.record_fraud(
            rec.event_id, room.project, filename, rec.publisher, rec.sha256 or "", "", rec.verdict.name.lower()
        )
        logger.warning("invalid attestation in %s: %s", room.room_id, text)

    async def _redact(self, view: RoomView, event_id: str, reason: str) -> bool:
        if view.level(self.bot) < view.redact_level:
            return False
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": REDACTION,
                    "room_id": view.room_id,
                    "sender": self.bot,
                    "redacts": event_id,
                    "content": {"redacts": event_id, "reason": reason},
                }
            )
            return True
        except Exception as e:
            logger.warning("could not redact %s in %s: %s", event_id, view.room_id, e)
            return False

    async def _notice(self, view: RoomView, text: str) -> None:
        try:
            await self._api.create_and_send_event_into_room(
                {
                    "type": "m.room.message",
                    "room_id": view.room_id,
                    "sender": self.bot,
                    "content": {"msgtype": "m.notice", "body": text},
                }
            )
        except Exception as e:
            logger.warning("could not post a notice in %s: %s", view.room_id, e)

    # -- rooms -----------------------------------------------------------------------

    async def ensure_room(self, project: str) -> RoomView:
        """Our room for the project, created (once, whatever the concurrency) if missing."""
        pt = await self.view(project)
        while pt.local is None:
            pt = await self._flights.run(("room", project), lambda: self._create(project))
        return pt.local

    async def _create(self, project: str) -> ProjectTrust:
        pt = await self._load(project)
        if pt.local is not None:
            return pt
        levels = self._config
        users = {m: levels.moderator_power_level for m in levels.moderators}
        users.update({p: levels.attestation_power_level for p in levels.publishers})
        users.pop(self.bot, None)  # v12: the creator must not be listed
        room_id, _ = await self._api.create_room(
            self.bot,
            {
                "preset": "public_chat",
                "room_alias_name": f"{levels.room_alias_prefix}{project}",
                "name": f"{project} — attestations for files served by {self._api.server_name}",
                "topic": (
                    f"Signed attestations (sha256, size, CID) for the files of the Python project {project}, "
                    f"published by the mirror {self._api.server_name} and other trusted publishers. "
                    "Moderators: redact any attestation that is wrong."
                ),
                "power_level_content_override": {
                    "users": users,
                    # This map replaces Synapse's defaults, so it names every event that
                    # shapes the room: moderators redact, they do not re-plumb the room.
                    "events": {
                        ATTESTATION_TYPE: levels.attestation_power_level,
                        KEY_TYPE: levels.attestation_power_level,
                        POWER_LEVELS: 100,
                        "m.room.join_rules": 100,
                        "m.room.history_visibility": 100,
                        "m.room.canonical_alias": 100,
                        "m.room.server_acl": 100,
                        "m.room.encryption": 100,
                        "m.room.tombstone": 100,
                        "m.room.guest_access": 100,
                        "m.room.name": 50,
                        "m.room.topic": 50,
                        "m.room.avatar": 50,
                    },
                    "redact": levels.moderator_power_level,
                    "state_default": 50,
                    "events_default": 0,
                },
            },
            ratelimit=False,
        )
        logger.info("created package room %s for %s", room_id, project)
        room = await self._read_room(project, room_id, local=True, alias=self.alias_for(project))
        await self._publish_key(room)
        pt.local = room
        return pt

    async def _publish_key(self, room: RoomView) -> None:
        """Publish this server's attestation key in the bot's key slot of `room`."""
        ev = await self._api.create_and_send_event_into_room(
            {
                "type": KEY_TYPE,
                "room_id": room.room_id,
                "sender": self.bot,
                "state_key": self.bot,
                "content": {"keys": {self._key_id: verify_key_base64(self._key)}},
            }
        )
        self._read_keys(room, ev)
        self._reverify_all(room)
        logger.info("published key %s in %s", self._key_id, room.room_id)

    # -- our own attestations --------------------------------------------------------

    async def attest(self, project: str, dist: index.DistFile, sha256: str, size: int) -> None:
        """Publish (or refresh with a CID) this server's attestation for a verified file.

        One at a time per file, and the CID is read when sending: an attestation made on
        commit must not overwrite the one made when IPFS returned the CID."""
        from twisted.internet import defer

        from synapse_pypi._context import make_deferred_yieldable

        lock = self._attest_locks.setdefault(dist.filename, defer.DeferredLock())
        await make_deferred_yieldable(lock.acquire())
        try:
            await self._attest(project, dist, sha256, size)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._attest_locks.pop(dist.filename, None)

    async def _attest(self, project: str, dist: index.DistFile, sha256: str, size: int) -> None:
        version = version_of(dist.filename)
        if version is None:
            logger.info("not attesting %s: not a wheel or sdist file name", dist.filename)
            return
        cid = (await self._store.refs_for(sha256)).get("cid")
        view = await self.ensure_room(project)
        mine = view.files.get(dist.filename, {}).get(self.bot)
        if mine is not None and mine.verdict is Verdict.VALID and mine.sha256 == sha256 and (mine.cid or not cid):
            return
        content = build_content(
            project=project,
            version=version,
            filename=dist.filename,
            size=size,
            sha256=sha256,
            cid=cid,
            upstream_url=dist.url or None,
            requires_python=dist.requires_python,
            timestamp=int(time.time() * 1000),
            publisher=self.bot,
            signing_key=self._key,
        )
        ev = await self._api.create_and_send_event_into_room(
            {
                "type": ATTESTATION_TYPE,
                "room_id": view.room_id,
                "sender": self.bot,
                "state_key": state_key_for(dist.filename, self.bot),
                "content": content,
            }
        )
        # on_new_event will see it too; record it now so the next serve already knows.
        self._read_attestation(view, ev)
        logger.info("attested %s/%s sha256 %s cid %s", project, dist.filename, sha256, cid)

    # -- references from attestations ------------------------------------------------

    async def learn_references(self, project: str, filename: str, sha256: str) -> None:
        """Record the CIDs that valid attestations of exactly these bytes carry, so the
        read path can fetch the file from IPFS (whatever the page came from)."""
        pt = self._projects.get(project)
        if pt is None:
            return
        for _, r in pt.records(filename):
            if r.verdict is Verdict.VALID and r.sha256 == sha256 and r.cid:
                await self._store.add_ref_if_missing(sha256, "cid", r.cid, f"attestation by {r.publisher}")

    # -- offline pages ---------------------------------------------------------------

    async def page_from_room(self, project: str) -> Optional[index.ProjectPage]:
        """A page built from the room's valid attestations (upstream unreachable, no cache).

        Files whose valid attestations disagree are listed without a hash, so that a
        client asking for them gets the 409 that names the publishers."""
        pt = await self.view(project)
        files = []
        for filename in pt.filenames():
            valid = [r for _, r in pt.records(filename) if r.verdict is Verdict.VALID and r.sha256]
            if not valid:
                continue
            hashes = {r.sha256 for r in valid if r.sha256}
            first = valid[0].content
            size = first.get("size") if isinstance(first.get("size"), int) else None
            rp = first.get("requires_python") if isinstance(first.get("requires_python"), str) else None
            if len(hashes) == 1:
                sha = hashes.pop()
                await self.learn_references(project, filename, sha)
                files.append(index.DistFile(filename=filename, url="", hashes={"sha256": sha}, requires_python=rp, size=size))
            else:
                files.append(index.DistFile(filename=filename, url="", hashes={}, requires_python=rp))
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
                "fraud": [list(f) for f in decision.fraud],
            },
            "attestations": [
                {
                    "room_id": room.room_id,
                    "publisher": r.publisher,
                    "sender": r.sender,
                    "event_id": r.event_id,
                    "sha256": r.sha256,
                    "cid": r.cid,
                    "verdict": r.verdict.name.lower(),
                    "reason": r.reason,
                }
                for room, r in (pt.records(filename) if pt else [])
            ],
        }

    async def reload(self, project: str) -> ProjectTrust:
        """Forget what we know of the project's rooms and read them again (admin re-verify)."""
        pt = self._projects.pop(project, None)
        if pt is not None:
            for room in pt.rooms:
                self._rooms.pop(room.room_id, None)
        return await self.view(project)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _state_key_of(state: Mapping[Tuple[str, str], Any], event_id: str) -> str:
    for (etype, skey), ev in state.items():
        if etype == KEY_TYPE and ev.event_id == event_id:
            return skey
    return ""
