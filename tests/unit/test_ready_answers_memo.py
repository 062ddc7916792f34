"""`ReadyAnswers` (issue 11, item 4): an answer is given again only while everything it was made
from is what it was, for at most a second and never past the page's TTL."""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers

from synapse_pypi._ready_answers import READY_ANSWERS, ReadyAnswers


class _Request:
    def __init__(self, uri: bytes = b"/simple/p/", accept: Any = b"application/vnd.pypi.simple.v1+json",
                 encoding: bytes = b"gzip"):
        self.uri = uri
        accepts = accept if isinstance(accept, list) else [accept]
        self.requestHeaders = Headers({b"accept": accepts, b"accept-encoding": [encoding]})

    def getHeader(self, name: bytes) -> Any:  # as Twisted's: the last one
        values = self.requestHeaders.getRawHeaders(name)
        return values[-1] if values else None


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
        answers.remember(request, name, key, rendered, "application/json", self.sources[name], fresh_until)
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


def test_selected_as_the_full_way_negotiates():
    world = _World()
    answers = world.answers()
    world.remember(answers, _Request(accept=[b"text/html", b"application/vnd.pypi.simple.v1+json"]))
    # The last Accept header is the one negotiated (Twisted's getHeader), and Accept-Encoding
    # only selects by whether gzip is taken: clients cannot make a key per header spelling.
    assert answers.find(_Request(accept=[b"image/png", b"application/vnd.pypi.simple.v1+json"])) is not None
    assert answers.find(_Request(accept=[b"application/vnd.pypi.simple.v1+json", b"image/png"])) is None
    assert answers.find(_Request(encoding=b"x-gzip, deflate")) is not None
    assert answers.find(_Request(encoding=b"identity")) is None


def test_an_equal_but_other_page_object_is_another_source():
    world = _World()
    answers = world.answers()
    world.sources["p"] = (["page"], 1, (3,))
    world.remember(answers, _Request())
    world.sources["p"] = (["page"], 1, (3,))  # reloaded: equal, not the same object
    assert answers.find(_Request()) is None


def test_expired_answers_are_dropped_as_new_ones_come():
    world = _World()
    answers = world.answers()
    for i in range(10):
        world.remember(answers, _Request(uri=b"/simple/p/?%d" % i))
    assert len(answers) == 10
    world.now += 1000
    world.remember(answers, _Request(uri=b"/simple/p/?new"))
    assert len(answers) == 1


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
    assert len(answers) == READY_ANSWERS
