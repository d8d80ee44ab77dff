"""The PostgreSQL image: Debian's ``postgresql`` package, built here and cached by content.

Each instance is one container of this image. Its entry script initialises the
cluster on the first start (the superuser ``postgres`` reachable only through
the container's own socket; the tenant's user, by password, only over TCP and
only to its own database), then runs the server in the foreground.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sandbox.docker import DockerDriver
from sandbox.images import DEBIAN_SUITE, RECIPE_VERSION, Progress, build_rootfs_image, content_hash, image_exists

PACKAGES = ("postgresql-15",)
PG_BIN = "/usr/lib/postgresql/15/bin"
DATA_MOUNT = "/var/lib/postgresql/data"
PGDATA = f"{DATA_MOUNT}/pgdata"
ENTRY = "/usr/local/bin/cloudskills-postgres"

# Reads DB_NAME, DB_USER, DB_PASSWORD and PG_OPTIONS from the environment; the
# names are checked by the skill ([a-z][a-z0-9_]*) and the password is hex, so
# they need no quoting inside SQL.
ENTRY_SCRIPT = f"""#!/bin/sh
set -eu
export PGDATA={PGDATA}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  {PG_BIN}/initdb --no-sync -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=reject >/dev/null
  cat > "$PGDATA/pg_hba.conf" <<HBA
local all postgres peer
host $DB_NAME $DB_USER 0.0.0.0/0 scram-sha-256
host $DB_NAME $DB_USER ::/0 scram-sha-256
HBA
  {PG_BIN}/postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD'
CREATE DATABASE $DB_NAME OWNER $DB_USER
REVOKE ALL ON DATABASE $DB_NAME FROM PUBLIC
SQL
fi
# shellcheck disable=SC2086  # PG_OPTIONS is a list of -c settings
exec {PG_BIN}/postgres -c listen_addresses='*' -c unix_socket_directories=/tmp $PG_OPTIONS
"""


def image_tag() -> str:
    return f"cloudskills/postgres:{content_hash(RECIPE_VERSION, DEBIAN_SUITE, PACKAGES, ENTRY_SCRIPT)}"


def ensure_image(driver: DockerDriver, progress: Progress) -> str:
    tag = image_tag()
    if not image_exists(driver, tag):
        changes = ("USER postgres", f"WORKDIR {DATA_MOUNT}", f'CMD ["{ENTRY}"]')
        build_rootfs_image(driver, tag, PACKAGES, progress, prepare=prepare_rootfs, changes=changes)
    return tag


def prepare_rootfs(root: Path) -> None:
    # The package made a default cluster no instance uses.
    for default in ("var/lib/postgresql/15", "etc/postgresql/15"):
        shutil.rmtree(root / default, ignore_errors=True)
    uid, gid = postgres_ids(root)
    data = root / DATA_MOUNT.lstrip("/")
    data.mkdir(parents=True, exist_ok=True)
    # A new named volume copies this directory's owner and mode from the image.
    os.chown(data, uid, gid)
    data.chmod(0o700)
    entry = root / ENTRY.lstrip("/")
    entry.write_text(ENTRY_SCRIPT)
    entry.chmod(0o755)


def postgres_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "postgres":
            return int(fields[2]), int(fields[3])
    raise RuntimeError("the postgresql package did not create the postgres user")
