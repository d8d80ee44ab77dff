"""PostgreSQL: one real server per instance, in its own container.

The container runs the image built in ``postgres_image``; its data lives on a
named volume, and it listens on a free port of 127.0.0.1. Tenants reach it as
their own user with a generated password, and only their own database; the
superuser is reachable only through the container's socket, which we use (by
``docker exec``) for backups and restores. Queries run as the tenant's user, so
the server itself enforces what that user may do.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import docker.errors
import psycopg
import psycopg.errors
import requests.exceptions

from common.errors import BackendUnavailable, InvalidInput
from sandbox.docker import DockerDriver, docker_unavailable
from sandbox.driver import LABEL_MANAGED, LABEL_TENANT
from skills.db.engines.base import (
    SIZES,
    ColumnInfo,
    IndexInfo,
    Instance,
    Params,
    Placement,
    QueryResult,
    Size,
    TableInfo,
)
from skills.db.engines.pg_pool import ConnectionPool
from skills.db.engines.postgres_container import container_name, free_port, killed_for_memory, readable
from skills.db.engines.postgres_image import DATA_MOUNT, PG_BIN, image_tag
from skills.db.engines.postgres_sql import (
    SCHEMA_COLUMNS,
    SCHEMA_INDEXES,
    copy_error,
    copy_rows,
    run_statement,
    statement_error,
)

T = TypeVar("T")
LABEL_DATABASE = "cloudskills.database"
LABEL_DATABASE_STORE = "cloudskills.database.store"
READY_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 5
RESTORE_FILE = f"{DATA_MOUNT}/restore.dump"


class PostgresEngine:
    name = "postgres"

    def __init__(self, driver: DockerDriver, store_id: str) -> None:
        self.driver = driver
        self.store_id = store_id
        self.pool = ConnectionPool()

    @property
    def client(self) -> docker.DockerClient:
        return self.driver.client

    def labels(self, instance: Instance) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_DATABASE_STORE: self.store_id,
            LABEL_DATABASE: instance.id,
            LABEL_TENANT: instance.tenant_id,
        }

    def provision(self, instance: Instance, size: Size) -> Placement:
        volume = f"cloudskills-{instance.id}"
        try:
            self.client.volumes.create(name=volume, labels=self.labels(instance))
            container_id, port = self._start(instance, size, volume)
        except requests.exceptions.RequestException as exc:
            raise docker_unavailable(exc) from exc
        placement = Placement(container_id=container_id, volume=volume, port=port)
        self._wait_ready(Instance(**{**instance.__dict__, **placement.__dict__}))
        return placement

    def _start(self, instance: Instance, size: Size, volume: str) -> tuple[str, int]:
        options = [
            f"-c shared_buffers={max(size.memory_mib // 4, 16)}MB",
            f"-c max_connections={size.max_connections}",
        ]
        for attempt in range(3):
            port = free_port()
            try:
                container = self.client.containers.run(
                    image_tag(),
                    detach=True,
                    name=container_name(instance),
                    environment={
                        "DB_NAME": instance.name,
                        "DB_USER": str(instance.user),
                        "DB_PASSWORD": str(instance.password),
                        "PG_OPTIONS": " ".join(options),
                    },
                    read_only=True,
                    tmpfs={"/tmp": "rw,mode=1777,size=64m"},
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    mem_limit=f"{size.memory_mib}m",
                    memswap_limit=f"{size.memory_mib}m",
                    nano_cpus=int(size.vcpus * 1e9),
                    pids_limit=size.max_connections + 64,
                    shm_size="128m",
                    volumes={volume: {"bind": DATA_MOUNT, "mode": "rw"}},
                    ports={"5432/tcp": ("127.0.0.1", port)},
                    labels=self.labels(instance),
                    # The instance comes back with the Docker Engine after a reboot.
                    restart_policy=cast(Any, {"Name": "unless-stopped"}),
                )
                return str(container.id), port
            except docker.errors.ImageNotFound as exc:
                raise BackendUnavailable(
                    "the PostgreSQL image is not built: run `cloudskills images build`, then try again."
                ) from exc
            except docker.errors.APIError as exc:
                # Another process took the port between our probe and Docker's bind.
                if "port is already allocated" not in str(exc) and "address already in use" not in str(exc):
                    raise BackendUnavailable(f"Docker could not start the database: {exc.explanation}.") from exc
                self._remove_container(container_name(instance))
                if attempt == 2:
                    raise BackendUnavailable("no free port for the database after 3 tries: try again.") from exc
        raise AssertionError("unreachable")

    def suspend(self, instance: Instance) -> None:
        """Stop the server; its volume keeps the data (and no container stands running)."""
        self.pool.close(instance.id)
        try:
            self.client.containers.get(container_name(instance)).stop(timeout=10)
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc

    def resume(self, instance: Instance) -> None:
        try:
            self.client.containers.get(container_name(instance)).start()
        except docker.errors.NotFound as exc:
            raise BackendUnavailable(
                "the database's server is gone: db_delete it and restore a snapshot into a new one."
            ) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise docker_unavailable(exc) from exc
        self._wait_ready(instance)

    def _wait_ready(self, instance: Instance) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                with self.connect(instance, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline or not self._running(instance):
                    raise BackendUnavailable(
                        f"the PostgreSQL server did not start ({exc}); its log ends: {self._log_tail(instance)!r}. "
                        "Delete it with db_delete and try again."
                    ) from exc
                time.sleep(0.1)

    def _running(self, instance: Instance) -> bool:
        try:
            return bool(self.client.containers.get(container_name(instance)).status in ("created", "running"))
        except docker.errors.NotFound:
            return False

    def _log_tail(self, instance: Instance) -> str:
        try:
            logs = self.client.containers.get(container_name(instance)).logs(tail=3)
            return bytes(logs).decode(errors="replace").strip()
        except docker.errors.DockerException:
            return ""

    @contextlib.contextmanager
    def connect(self, instance: Instance, connect_timeout: int = CONNECT_TIMEOUT_S) -> Iterator[psycopg.Connection]:
        conn = self._new_connection(instance, connect_timeout)
        try:
            yield conn
        finally:
            conn.close()

    def _new_connection(self, instance: Instance, connect_timeout: int = CONNECT_TIMEOUT_S) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=instance.port,
            dbname=instance.name,
            user=instance.user,
            password=instance.password,
            connect_timeout=connect_timeout,
            autocommit=True,
            prepare_threshold=None,
        )

    def run(self, instance: Instance, work: Callable[[psycopg.Connection], T]) -> T:
        """``work`` on a pooled connection (or a fresh one), translating a server that does not answer.

        The pool hands out only connections the server still holds (none from
        before a restart), so ``work`` runs once: a connection lost in the middle
        of it is the caller's to explain, never a reason to run it again."""
        pooled = self.pool.take(instance.id)
        if pooled is not None:
            return self._on(instance, pooled, work)
        try:
            conn = self._new_connection(instance)
        except psycopg.OperationalError as exc:
            raise BackendUnavailable(
                f"database {instance.id!r} is not answering ({str(exc).strip()}); try again in a moment, "
                "or db_describe it to see its state."
            ) from exc
        return self._on(instance, conn, work)

    def _on(self, instance: Instance, conn: psycopg.Connection, work: Callable[[psycopg.Connection], T]) -> T:
        try:
            result = work(conn)
        except BaseException:
            conn.close()
            raise
        self.pool.give_back(instance.id, conn)
        return result

    def query(
        self, instance: Instance, sql: str, params: Params, read_only: bool, max_rows: int, timeout_s: float
    ) -> QueryResult:
        if isinstance(params, Mapping):
            raise InvalidInput("PostgreSQL takes params as a list, for the placeholders $1, $2, ... in order.")

        def statement(conn: psycopg.Connection) -> QueryResult:
            return run_statement(conn, sql, params, read_only, max_rows, timeout_s)

        started = time.time()
        try:
            return self.run(instance, statement)
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None or exc.sqlstate.startswith("57P"):  # the server ended the connection
                raise self._lost(instance, exc, started) from exc
            raise statement_error(exc, read_only, timeout_s) from exc
        except psycopg.Error as exc:
            raise statement_error(exc, read_only, timeout_s) from exc

    def import_rows(
        self, instance: Instance, table: str, columns: list[str], rows: list[list[str | None]], timeout_s: float
    ) -> int:
        def copy(conn: psycopg.Connection) -> int:
            return copy_rows(conn, table, columns, rows, timeout_s)

        started = time.time()
        try:
            return self.run(instance, copy)
        except psycopg.OperationalError as exc:
            if exc.sqlstate is None or exc.sqlstate.startswith("57P"):
                raise self._lost(instance, exc, started) from exc
            raise copy_error(exc, timeout_s) from exc
        except psycopg.Error as exc:
            raise copy_error(exc, timeout_s) from exc

    def _lost(self, instance: Instance, exc: psycopg.Error, started: float) -> Exception:
        """What to tell the caller whose statement lost its connection: if the kernel killed a
        server process for memory (PostgreSQL then restarts, cutting every connection), say so
        once the instance answers again."""
        memory = f"{SIZES[instance.size].memory_mib} MiB" if instance.size in SIZES else "the memory of its size"
        if killed_for_memory(self.client, instance, started):
            self.pool.close(instance.id)  # every connection of the old server is gone
            try:
                self._wait_ready(instance)
                now = "it has restarted and answers again"
            except BackendUnavailable:
                now = "it is restarting: try again in a moment"
            return InvalidInput(
                f"database {instance.id!r} ran out of memory while this statement ran: it has {memory}, the kernel "
                f"killed a PostgreSQL process and PostgreSQL restarted, which cut every open connection; {now}. "
                "Nothing the statement did was kept. Use less memory per statement (smaller values, fewer rows at "
                "once), or make the database on a larger size."
            )
        return BackendUnavailable(
            f"database {instance.id!r} closed the connection while this statement ran ({str(exc).strip()}); "
            "nothing it did was kept. Try again in a moment, or db_describe it to see its state."
        )

    def schema(self, instance: Instance) -> list[TableInfo]:
        def read(conn: psycopg.Connection) -> tuple[list[Any], list[Any]]:
            return conn.execute(SCHEMA_COLUMNS).fetchall(), conn.execute(SCHEMA_INDEXES).fetchall()

        columns, indexes = self.run(instance, read)
        tables: dict[str, TableInfo] = {}
        for table, kind, name, data_type, nullable, default in columns:
            info = tables.setdefault(table, TableInfo(name=table, kind="view" if kind == "VIEW" else "table"))
            info.columns.append(ColumnInfo(name=name, type=data_type, nullable=bool(nullable), default=default))
        for table, name, definition in indexes:
            if table in tables:
                tables[table].indexes.append(
                    IndexInfo(name=name, unique=definition.startswith("CREATE UNIQUE"), definition=definition)
                )
        return list(tables.values())

    def _exec(self, instance: Instance, argv: list[str]) -> tuple[int, bytes]:
        """Run a command in the instance's container as ``postgres``; its exit code and output."""
        api = self.client.api
        try:
            created = api.exec_create(container_name(instance), argv, user="postgres")
            output = api.exec_start(created["Id"])
            code = api.exec_inspect(created["Id"])["ExitCode"]
        except docker.errors.NotFound as exc:
            raise BackendUnavailable(
                f"the container of database {instance.id!r} is gone: delete it with db_delete."
            ) from exc
        except docker.errors.APIError as exc:
            raise BackendUnavailable(f"Docker refused to run a command in the database: {exc.explanation}.") from exc
        return int(code or 0), bytes(output)

    def backup(self, instance: Instance, dest: Path) -> int:
        dest.parent.mkdir(parents=True, exist_ok=True)
        api = self.client.api
        argv = [f"{PG_BIN}/pg_dump", "-h", "/tmp", "--format=custom", "--no-owner", "-d", instance.name]
        try:
            created = api.exec_create(container_name(instance), argv, user="postgres")
            with open(dest, "wb") as out:
                errors = b""
                for stdout, stderr in api.exec_start(created["Id"], stream=True, demux=True):
                    if stdout:
                        out.write(stdout)
                    if stderr:
                        errors += stderr
            code = api.exec_inspect(created["Id"])["ExitCode"]
        except docker.errors.APIError as exc:
            dest.unlink(missing_ok=True)
            raise BackendUnavailable(f"Docker refused to run pg_dump: {exc.explanation}.") from exc
        if code != 0:
            dest.unlink(missing_ok=True)
            raise BackendUnavailable(f"pg_dump failed: {errors.decode(errors='replace').strip()[-300:]}.")
        return dest.stat().st_size

    def restore(self, instance: Instance, source: Path) -> None:
        self.pool.close(instance.id)  # the restore drops the database under them
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(source, arcname=Path(RESTORE_FILE).name, filter=readable)
        self.client.api.put_archive(container_name(instance), DATA_MOUNT, archive.getvalue())
        db, user = instance.name, instance.user
        # A fresh database, then the snapshot into it as the tenant's user: the
        # content becomes exactly the snapshot's, owned as before.
        script = (
            f"{PG_BIN}/psql -h /tmp -q -v ON_ERROR_STOP=1 -d postgres "
            f"-c 'DROP DATABASE IF EXISTS {db} WITH (FORCE)' -c 'CREATE DATABASE {db} OWNER {user}' "
            f"-c 'REVOKE ALL ON DATABASE {db} FROM PUBLIC' && "
            f"{PG_BIN}/pg_restore -h /tmp --no-owner --role={user} --exit-on-error -d {db} {RESTORE_FILE}; "
            f"code=$?; rm -f {RESTORE_FILE}; exit $code"
        )
        code, output = self._exec(instance, ["sh", "-c", script])
        if code != 0:
            raise BackendUnavailable(f"the restore failed: {output.decode(errors='replace').strip()[-300:]}.")

    def remove(self, instance: Instance) -> None:
        self.pool.close(instance.id)
        try:
            self._remove_container(container_name(instance))
            if instance.volume:
                with contextlib.suppress(docker.errors.NotFound):
                    self.client.volumes.get(instance.volume).remove(force=True)
        except docker.errors.APIError as exc:  # Docker answered: it refused
            raise BackendUnavailable(
                f"Docker could not remove database {instance.id!r} ({exc.explanation}); the reaper retries it."
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise docker_unavailable(exc) from exc

    def _remove_container(self, name: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.containers.get(name).remove(force=True)

    def leftovers(self) -> tuple[dict[str, str], dict[str, str]]:
        """This store's database containers and volumes: name -> database id."""
        selector = f"{LABEL_DATABASE_STORE}={self.store_id}"
        containers = {
            str(c.name): c.labels.get(LABEL_DATABASE, "")
            for c in self.client.containers.list(all=True, filters={"label": [selector]})
        }
        volumes = {
            str(v.name): (v.attrs.get("Labels") or {}).get(LABEL_DATABASE, "")
            for v in self.client.volumes.list(filters={"label": selector})
        }
        return containers, volumes

    def connection_string(self, instance: Instance) -> str:
        return f"postgresql://{instance.user}:{instance.password}@127.0.0.1:{instance.port}/{instance.name}"
