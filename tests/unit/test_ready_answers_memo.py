"""`ReadyAnswers` (issue 11, item 4): an answer is given again only while everything it was made
from is what it was, for at most a second and never past the page's TTL."""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers

from synapse_pypi._ready_answers import READY_ANSWERS, ReadyAnswers


class _Request:
    def __init__(self, uri: bytes = b"/simple/p/", accept: bytes = b"application/vnd.pypi.simple.v1+json"):
        self.uri = uri
        self.requestHeaders = Headers({b"accept": [accept], b"accept-encoding": [b"gzip"]})


class _World:
    def __init__(self) -> None:
        self.now = 1_000_000
        self.sources: dict = {"p": ("entry", 1, (3,))}
        self.held: dict = {}

    def answers(self) -> ReadyAnswers:
        return ReadyAnswers(
            lambda: self.now,
            lambda name: self.sources.get(name, (None,)),
            lambda key, rendered: self.held.get(key) is rendered,
        )

    def remember(self, answers: ReadyAnswers, request: Any, name: str = "p", fresh_until: int = 10**12) -> object:
        rendered = object()
        key = ("rendered", name, request.uri)
        self.held[key] = rendered
        answers.remember(request, name, key, rendered, "application/json", True, self.sources[name], fresh_until)
        return rendered


def test_an_answer_is_given_again_while_its_sources_hold():
    world = _World()
    answers = world.answers()
    rendered = world.remember(answers, _Request())
    found = answers.find(_Request())
    assert found is not None and found.rendered is rendered and found.content_type == "application/json"
    # Another representation, another URI: not this answer.
    assert answers.find(_Request(accept=b"text/html")) is None
    assert answers.find(_Request(uri=b"/simple/q/")) is None


def test_any_change_of_what_it_was_made_from_ends_it():
    for change in (
        lambda w: w.sources.update(p=("another entry", 1, (3,))),  # revalidated, expired, forgotten
        lambda w: w.sources.update(p=("entry", 2, (3,))),  # cached or evicted a file
        lambda w: w.sources.update(p=("entry", 1, (4,))),  # an attestation, a ban, a redaction
        lambda w: w.sources.update(p=("entry", 1, (3, 1))),  # a peer's room joined
        lambda w: w.held.clear(),  # the budget dropped the rendered bytes
        lambda w: setattr(w, "now", w.now + 1000),  # a second passed
    ):
        world = _World()
        answers = world.answers()
        world.remember(answers, _Request())
        change(world)
        assert answers.find(_Request()) is None
        # And it is forgotten, not found again once the change is undone.
        world.sources = _World().sources
        world.now = _World().now
        assert answers.find(_Request()) is None


def test_never_past_the_pages_ttl_and_never_without_a_page_in_memory():
    world = _World()
    answers = world.answers()
    world.remember(answers, _Request(), fresh_until=world.now + 300)
    world.now += 299
    assert answers.find(_Request()) is not None
    world.now += 1
    assert answers.find(_Request()) is None
    # A page that cannot be answered without I/O (upstream outage, not in memory): nothing kept.
    world.sources["p"] = (None, 1, (3,))
    world.now = _World().now
    world.remember(answers, _Request())
    assert answers.find(_Request()) is None


def test_the_number_of_answers_is_bounded():
    world = _World()
    answers = world.answers()
    for i in range(READY_ANSWERS + 10):
        world.remember(answers, _Request(uri=b"/simple/p/?%d" % i))
    assert answers.find(_Request(uri=b"/simple/p/?0")) is None
    assert answers.find(_Request(uri=b"/simple/p/?%d" % (READY_ANSWERS + 9))) is not None
    assert len(answers._answers) == READY_ANSWERS
