"""A place is its data dir's own id (scheduler/places.py): made once, the same for every
server on that data dir whatever the host is called, and rows recorded under a data dir's
old name (host and path) are adopted as its own."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from scheduler.leases import Leases
from scheduler.models import Lease
from scheduler.places import PLACE_FILE, legacy_place, place_of, settle_place
from scheduler.pricing import PriceCatalog, Rate, Usage
from scheduler.store import Store

CATALOG = PriceCatalog("test-places", "USD", rates={"thing.ms": Rate(1, 1)})


def test_a_data_dir_keeps_its_place_under_another_host_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    place = place_of(home)
    assert place.startswith("place_") and (home / PLACE_FILE).read_text().strip() == place
    monkeypatch.setattr(socket, "gethostname", lambda: "a-pod-made-anew")
    assert place_of(home) == place
    assert place_of(tmp_path / "other") != place


def test_servers_starting_on_one_data_dir_at_once_agree(tmp_path: Path) -> None:
    homes = [tmp_path / "shared"] * 8
    with ThreadPoolExecutor(8) as pool:
        places = set(pool.map(place_of, homes))
    assert len(places) == 1
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [PLACE_FILE], "no draft left behind"


def test_a_data_dir_that_cannot_be_written_goes_by_its_old_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refused)
    assert place_of(tmp_path / "home") == legacy_place(tmp_path / "home")
    assert not (tmp_path / "home" / PLACE_FILE).exists()


def test_what_a_data_dir_made_under_its_old_name_is_its_own(store: Store, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    old = Leases(store, CATALOG, lease_s=1.0, place=legacy_place(home))
    elsewhere = Leases(store, CATALOG, lease_s=1.0, place="otherhost:/srv/data")
    for leases, resource_id in ((old, "db_mine"), (elsewhere, "db_theirs")):
        with store.transaction() as session:
            leases.open(
                session,
                kind="thing",
                resource_id=resource_id,
                tenant_id="acme",
                op="on",
                per_s=Usage.of({"thing.ms": 1}),
            )
    place = settle_place(store, home)  # the start that gives the data dir its id
    with store.transaction() as session:
        places = {row.id: row.place for row in session.execute(select(Lease.id, Lease.place))}
    assert places == {"db_mine": place, "db_theirs": "otherhost:/srv/data"}
    mine = Leases(store, CATALOG, lease_s=1.0, place=place)
    assert mine.made_elsewhere(place), "db_theirs lives at another place"
    with store.transaction() as session:
        elsewhere.close(session, "db_theirs", "deleted")
    assert not mine.made_elsewhere(place), "only what ended lives elsewhere"
