"""Places: where a resource lives is the data dir that made it.

A database's file, a VM's disk and process and a workspace's image live in the data
dir of the server that made them, on that server's machine. Each data dir has an id
of its own, made on its first start and kept in a file inside it (``PLACE_FILE``):
the *place* that servers record on their worker rows and leases on what they make
(``scheduler.routing``). It follows the data, not the host's name: a server started
again on the same data dir under another host name (a container or a Pod made anew
on the same volume) is the same place, and replicas that share one data dir are one.

Places were once ``host:data dir``; the start that gives a data dir its id adopts the
rows recorded under its old name (``settle_place``).
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from sqlalchemy import update

from scheduler.models import Lease, Task
from scheduler.store import Store

PLACE_FILE = "place"


def place_of(home: Path) -> str:
    """This data dir's id, made now if it has none. Servers starting on one data dir at
    once agree: the first file linked into place wins, the others read it. A data dir
    this process cannot write (its store elsewhere) goes by its old name."""
    path = home / PLACE_FILE
    try:
        if not path.exists():
            home.mkdir(parents=True, exist_ok=True)
            draft = home / f".{PLACE_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
            try:
                draft.write_text(f"place_{uuid.uuid4().hex[:16]}\n")
                os.link(draft, path)  # never overwrites: one made meanwhile stays
            except FileExistsError:
                pass
            finally:
                draft.unlink(missing_ok=True)
        return path.read_text().strip()
    except OSError:
        return legacy_place(home)


def legacy_place(home: Path) -> str:
    """What a place was called before data dirs had ids: the host's name and the dir."""
    return f"{socket.gethostname()}:{home.resolve()}"


def settle_place(store: Store, home: Path) -> str:
    """The place of a server starting on ``home``. Only the start that gives the data dir
    its id has rows under the old name to adopt: later starts read nothing more."""
    first = not (home / PLACE_FILE).exists()
    place = place_of(home)
    if first and place != legacy_place(home):
        adopt_legacy(store, home, place)
    return place


def adopt_legacy(store: Store, home: Path, place: str) -> None:
    """Record what this data dir made under its old name as made here."""
    old = legacy_place(home)
    with store.transaction() as session:
        session.execute(update(Lease).where(Lease.place == old).values(place=place))
        session.execute(update(Task).where(Task.place == old).values(place=place))
