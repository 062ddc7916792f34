"""`Store` knows the pages it holds (issue 11, item 4: a new project's first page reads no
database), and still finds a page another worker stored when asked `surely`."""

from __future__ import annotations

from harness.syncdb import run, sqlite_run_db

from synapse_pypi._store import Store, StoredPage


def test_a_page_never_stored_reads_no_database_and_a_sure_read_finds_another_workers(tmp_path):
    calls = []
    plain = sqlite_run_db(tmp_path / "db.sqlite")

    async def counted(desc, fn, *args):
        calls.append(desc)
        return await plain(desc, fn, *args)

    ours, other = Store(counted), Store(sqlite_run_db(tmp_path / "db.sqlite"))
    run(ours.setup())
    run(other.setup())
    calls.clear()
    assert run(ours.get_page("never")) is None
    assert calls == []

    run(other.put_page(StoredPage("theirs", "{}", None, None, 1)))
    assert run(ours.get_page("theirs")) is None and calls == []
    found = run(ours.get_page("theirs", surely=True))
    assert found is not None and found.project == "theirs"
    # Known from then on.
    assert run(ours.get_page("theirs")) is not None

    run(ours.put_page(StoredPage("mine", "{}", None, None, 2)))
    assert run(ours.get_page("mine")).fetched_at == 2
    assert run(ours.delete_page("mine")) is True
    assert run(ours.get_page("mine")) is None and run(ours.get_page("mine", surely=True)) is None


def test_pages_stored_before_a_restart_are_known(tmp_path):
    first = Store(sqlite_run_db(tmp_path / "db.sqlite"))
    run(first.setup())
    run(first.put_page(StoredPage("kept", "{}", None, None, 3)))
    again = Store(sqlite_run_db(tmp_path / "db.sqlite"))
    run(again.setup())
    assert run(again.get_page("kept")).fetched_at == 3
