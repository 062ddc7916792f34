"""Warm project pages answered at once, without Synapse's per-request machinery.

A warm page is a few hundred microseconds of work, and profiling showed that about two thirds of
that was Synapse's own handling of every request rather than the module's: a logging context
per request, request metrics, a coroutine started with `run_in_background`, and the access log
line with its resource usage (py-spy at 16 clients; figures in benchmarks/README.md). So when a
page was answered moments ago and nothing it was made from has changed since, the same answer
is given again directly from `SynapseRequest.render`, before any of that is set up:

* what the answer was made from must be exactly as it was: the same cached page object (not
  revalidated, expired or forgotten since, and the upstream not in an outage), the same cache
  generation (nothing cached or evicted since) and the same trust generation of the project's
  rooms (no attestation, ban or redaction since);
* and it is given again for at most `READY_SECONDS` and never past the page's own TTL, so that
  what runs only on the full path (the rate-limited first lookup of a peer's room, say) still
  runs on time.

A request that is not such a page goes the full way, as before. The answers still count in the
module's metrics, and each still gets an access log line in Synapse's format (with the fields a
request without a logging context cannot have given as 0), so an admin's log tools keep seeing
every request.
"""

import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Tuple

import attrs
from twisted.web.server import Request

from synapse_pypi import _metrics
from synapse_pypi._negotiate import accepts_gzip

logger = logging.getLogger(__name__)

# How long the same answer may be given again without going the full way.
READY_SECONDS = 1.0
# How many answers are remembered at most (each holds the rendered page it sends, which the
# page budget holds as well: an answer whose rendered bytes the budget dropped is not given).
READY_ANSWERS = 4096


@attrs.frozen(eq=False)
class ReadyAnswer:
    """A page answer that may be given again while `sources` is what it was."""

    name: str
    rendered_key: Hashable
    rendered: Any  # the _Rendered bytes sent
    content_type: str
    sources: Tuple[Any, ...]
    until_ms: int


class ReadyAnswers:
    """The answers remembered, by what selects them: the URI, and the Accept and Accept-Encoding
    headers as the full way reads them (the last of each; gzip taken or not).

    Answers are kept for at most `READY_SECONDS` (the expired ones are dropped as new ones come),
    so that the pages they hold are not kept past the page budget's own bounds for longer.

    Args:
        now_ms: milliseconds since the epoch (the page service's clock).
        sources: what an answer for a project is made from, now: the page token (compared with
            `is`; None when the page cannot be answered without I/O), then values compared with
            `==` (the cache's and the rooms' generations).
        still_held: whether the budget still holds the rendered bytes under a key, as the
            same object.
    """

    def __init__(
        self,
        now_ms: Callable[[], int],
        sources: Callable[[str], Tuple[Any, ...]],
        still_held: Callable[[Hashable, Any], bool],
    ):
        self._now_ms = now_ms
        self._sources = sources
        self._still_held = still_held
        # In the order they were made, so the expired ones are at the front.
        self._answers: OrderedDict[Hashable, ReadyAnswer] = OrderedDict()

    @staticmethod
    def key_of(request: Any) -> Hashable:
        return (request.uri, request.getHeader(b"accept"), accepts_gzip(request.getHeader(b"accept-encoding")))

    def remember(
        self,
        request: Any,
        name: str,
        rendered_key: Hashable,
        rendered: Any,
        content_type: str,
        sources: Tuple[Any, ...],
        fresh_until_ms: int,
    ) -> None:
        """Remember the answer just sent, made from `sources` (read before the page was
        made, so that a change while it was made shows as a difference)."""
        now = self._now_ms()
        self._drop_expired(now)
        if sources[0] is None:
            return
        until = min(fresh_until_ms, now + int(READY_SECONDS * 1000))
        key = self.key_of(request)
        self._answers.pop(key, None)
        self._answers[key] = ReadyAnswer(name, rendered_key, rendered, content_type, sources, until)
        while len(self._answers) > READY_ANSWERS:
            self._answers.popitem(last=False)

    def find(self, request: Any) -> Optional[ReadyAnswer]:
        """The answer to give `request` at once, if there is one that still holds."""
        key = self.key_of(request)
        answer = self._answers.get(key)
        if answer is None:
            return None
        if self._now_ms() < answer.until_ms:
            current = self._sources(answer.name)
            if (
                current[0] is answer.sources[0]
                and current[1:] == answer.sources[1:]
                and self._still_held(answer.rendered_key, answer.rendered)
            ):
                return answer
        del self._answers[key]
        return None

    def _drop_expired(self, now: int) -> None:
        answers = self._answers
        while answers:
            first = next(iter(answers.values()))
            if first.until_ms > now:
                return
            answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)


def answer_ready_requests_first() -> bool:
    """Let a resource answer a request before Synapse sets up its per-request work: a resource
    with an `answer_now(request, finish)` method is asked first and, when it answered, the
    request is finished without Synapse's logging context, metrics or coroutine. Applied once
    per process; whether it is in place (False if Synapse's code has moved on)."""
    try:
        from synapse.http.site import SynapseRequest
    except ImportError:  # pragma: no cover - only outside Synapse
        return False
    current = getattr(SynapseRequest, "render", None)
    if current is None:
        logger.info("SynapseRequest has no render: pages take the full way")
        return False
    if getattr(current, "_synapse_pypi_ready", False):
        return True

    def render(self: Any, resrc: Any) -> Any:
        answer_now = getattr(resrc, "answer_now", None)
        if answer_now is not None:
            self.start_time = time.time()
            # What Synapse's render sets first (Twisted's default names Twisted).
            self.setHeader(b"Server", self.synapse_site.server_version_string)
            try:
                if answer_now(self, _finish_quietly):
                    return None
            except Exception:
                # Never worse than the full way: it answers instead, unless this one had
                # begun to (then the connection is closed, as for any failed response).
                logger.exception("answering %s at once failed", self.uri.decode("ascii", "replace"))
                if self.startedWriting or self.finished:
                    self.loseConnection()
                    return None
        return current(self, resrc)

    render._synapse_pypi_ready = True  # type: ignore[attr-defined]  # a marker on the function
    SynapseRequest.render = render  # type: ignore[method-assign]  # the one method patched
    return True


def _finish_quietly(request: Any) -> None:
    """Finish a request that Synapse's render never saw: Twisted's own finish, then the access
    log line Synapse would have written and the module's request metric."""
    request.finish_time = time.time()
    Request.finish(request)
    try:
        _access_log(request)
        _metrics.page_answered_at_once(request.code)
    except Exception:  # the response went out whole: only its record failed
        logger.exception("recording %s failed", request.uri.decode("ascii", "replace"))


def _access_log(request: Any) -> None:
    site = request.synapse_site
    access = site.access_logger
    if not access.isEnabledFor(logging.INFO):
        return
    # Synapse's line (docs/usage/administration/request_log.md), with no requester, no
    # logging context and so no resource usage or database figures.
    took = request.finish_time - request.start_time  # both set by the quick path
    access.info(
        "%s - %s - {%s} Processed request: %.3fsec/%.3fsec ru=(%.3fsec, %.3fsec) db=(%.3fsec/%.3fsec/%d)"
        ' %sB %s "%s %s %s" "%s" [%d dbevts]',
        request.get_client_ip_if_available(),
        site.site_tag,
        None,
        took,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0,
        request.sentLength,
        str(int(request.code)),
        request.method.decode("ascii", "replace"),
        request.uri.decode("ascii", "replace"),
        request.clientproto.decode("ascii", "replace"),
        (request.getHeader(b"user-agent") or b"-").decode("ascii", "replace"),
        0,
    )
