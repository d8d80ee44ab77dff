"""Sandbox templates: the catalog (``sandbox_templates``) and a tenant's custom templates.

A custom template is a tenant's name for an image built here from a built-in
template plus Debian and PyPI packages (``sandbox.custom_images``). The image is
named by the hash of its recipe, so the same recipe is built once for every
tenant; the row (``SandboxTemplate``) is what makes it one tenant's, and only
that tenant can list, use or delete it. Building runs in a worker thread, one
build per recipe at a time in this process, and reports its steps as progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import BackendUnavailable, InvalidInput, QuotaExceeded
from sandbox.custom_images import CustomRecipe, build, ensure_agent_layer, image_size, remove, sweep
from sandbox.docker import DockerDriver
from sandbox.images import IMAGES
from sandbox.templates import TEMPLATES, Template
from scheduler import ledger
from scheduler.pricing import Usage
from scheduler.resources import LiveQuota
from scheduler.tasks import TaskContext, new_id
from skills.sandbox.manager import SandboxManager
from skills.sandbox.records import LIVE_STATES, resolve_template
from skills.sandbox.rows import Sandbox
from skills.sandbox.template_models import (
    TemplateCreateInput,
    TemplateCreateOutput,
    TemplateDeleteInput,
    TemplateDeleteOutput,
    TemplateInfo,
    TemplatesInput,
    TemplatesOutput,
)
from skills.sandbox.template_rows import SandboxTemplate

log = logging.getLogger("cloudskills.templates")

BUILD_METER = "template_build.vcpu_ms"
# The longest a build may take (apt and pip included); its worst case is held at admission.
BUILD_TIMEOUT_S = 1200.0
# The most MiB a tenant's custom templates' images may take, all together (a tenant setting).
SIZE_QUOTA = "max_live_template_mib"
SIZE_QUOTA_DEFAULT = 8192
MIB = 1 << 20


def count_templates(session: Session, tenant_id: str) -> int:
    return int(session.scalar(select(func.count()).where(SandboxTemplate.tenant_id == tenant_id)) or 0)


TEMPLATE_QUOTA = LiveQuota(
    "max_live_sandbox_templates",
    10,
    "custom templates",
    "delete one with sandbox_template_delete (sandbox_templates lists yours)",
    count_templates,
)

# One build per recipe at a time in this process: a second caller waits, then finds it built.
_BUILDING: dict[str, threading.Lock] = {}
_BUILDING_LOCK = threading.Lock()


def docker_of(sandboxes: SandboxManager) -> DockerDriver:
    if not isinstance(sandboxes.driver, DockerDriver):
        raise BackendUnavailable("custom templates need the Docker Engine, which this server does not use.")
    return sandboxes.driver


def recipe_of(row: SandboxTemplate) -> CustomRecipe:
    return CustomRecipe.of(TEMPLATES[row.base].image, list(row.debian_packages), list(row.pypi_packages))


def find(session: Session, tenant_id: str, name: str) -> SandboxTemplate | None:
    query = select(SandboxTemplate).where(SandboxTemplate.tenant_id == tenant_id, SandboxTemplate.name == name)
    return session.scalars(query).first()


async def template_for(ctx: TaskContext, name: str) -> Template:
    """The template a sandbox of this tenant starts from: a built-in one, or one of its own."""
    if name in TEMPLATES:
        return TEMPLATES[name]
    sandboxes = ctx.service(SandboxManager)
    with sandboxes.store.transaction() as session:
        row = find(session, ctx.tenant_id, name)
        if row is None:
            raise InvalidInput(
                f"unknown template {name[:64]!r}: use one of {', '.join(sorted(TEMPLATES))} or one of yours "
                "(sandbox_templates lists them all)."
            )
        base, wanted = TEMPLATES[row.base], recipe_of(row)
    tag = await anyio.to_thread.run_sync(ensure_agent_layer, docker_of(sandboxes), wanted, log.info)
    return Template(name, base.language, f"{base.name} with your packages", base.limits, base.runtime, image=tag)


def language_of(ctx: TaskContext, name: str) -> str:
    """A template's default language (a custom one's base's; python if it has been deleted since)."""
    if name in TEMPLATES:
        return TEMPLATES[name].language
    with ctx.service(SandboxManager).store.transaction() as session:
        row = find(session, ctx.tenant_id, name)
        return TEMPLATES[row.base].language if row is not None else "python"


def info(
    template: Template,
    sandboxes: SandboxManager,
    size: int | None,
    row: SandboxTemplate | None = None,
) -> TemplateInfo:
    warm, ready = sandboxes.pool.warmth(template.name) if sandboxes.pool and row is None else (0, 0)
    limits = template.limits
    return TemplateInfo(
        name=row.name if row else template.name,
        language=template.language,
        description=template.description,
        custom=row is not None,
        base=row.base if row else None,
        debian_packages=list(row.debian_packages) if row else list(IMAGES.get(template.image, ())),
        pypi_packages=list(row.pypi_packages) if row else [],
        image_mib=round(size / MIB, 1) if size is not None else None,
        built=size is not None,
        vcpus=limits.vcpus,
        memory_mib=limits.memory_mib,
        pids=limits.pids,
        disk_mib=limits.disk_mib,
        runtime=template.runtime or "runc",
        warm=warm,
        warm_ready=ready,
    )


async def templates(ctx: TaskContext, args: TemplatesInput) -> TemplatesOutput:
    """Every built-in template and the caller's own, with their packages, sizes and warmth."""
    sandboxes = ctx.service(SandboxManager)
    driver = docker_of(sandboxes)
    with sandboxes.store.transaction() as session:
        query = select(SandboxTemplate).where(SandboxTemplate.tenant_id == ctx.tenant_id)
        rows = list(session.scalars(query.order_by(SandboxTemplate.name)))

    def sizes() -> dict[str, int | None]:
        tags = {sandboxes.images[t.image] for t in TEMPLATES.values()} | {recipe_of(r).base_tag for r in rows}
        return {tag: image_size(driver, tag) for tag in tags}

    found = await anyio.to_thread.run_sync(sizes)
    listed = [info(t, sandboxes, found[sandboxes.images[t.image]]) for t in TEMPLATES.values()]
    listed += [info(custom_template(row), sandboxes, found[recipe_of(row).base_tag], row) for row in rows]
    return TemplatesOutput(templates=listed)


def custom_template(row: SandboxTemplate) -> Template:
    base = TEMPLATES[row.base]
    return Template(row.name, base.language, f"{base.name} with your packages", base.limits, base.runtime)


def build_once(driver: DockerDriver, wanted: CustomRecipe, progress: Callable[[str], None]) -> tuple[str, bool]:
    """Build the image (in a worker thread); return its tag and whether it was built already."""
    with _BUILDING_LOCK:
        lock = _BUILDING.setdefault(wanted.base_tag, threading.Lock())
    with lock:
        cached = image_size(driver, wanted.base_tag) is not None
        return build(driver, wanted, progress), cached


async def template_create(ctx: TaskContext, args: TemplateCreateInput) -> TemplateCreateOutput:
    """Build a custom template from a built-in one and packages, or find it built already."""
    if args.name in TEMPLATES:
        raise InvalidInput(f"{args.name!r} is a built-in template's name: choose another name.")
    base = resolve_template(args.base)
    if not args.debian_packages and not args.pypi_packages:
        raise InvalidInput(
            f"give at least one package in debian_packages or pypi_packages; with none, use the {base.name!r} "
            "template itself."
        )
    wanted = CustomRecipe.of(base.image, args.debian_packages, args.pypi_packages)
    sandboxes = ctx.service(SandboxManager)
    driver = docker_of(sandboxes)
    with sandboxes.store.transaction() as session:
        existing = find(session, ctx.tenant_id, args.name)
        if existing is not None and (existing.base, recipe_of(existing)) != (base.name, wanted):
            raise InvalidInput(
                f"you already have a template named {args.name!r} with other packages: delete it with "
                "sandbox_template_delete first, or choose another name."
            )
        if existing is None:
            TEMPLATE_QUOTA.check(session, ctx.tenant_id)
    steps = 0

    def progress(line: str) -> None:
        nonlocal steps
        steps += 1
        try:
            anyio.from_thread.run(ctx.report, float(steps), line[:200])
        except Exception:  # the caller went away: the build goes on and is cached
            log.debug("template build progress not delivered: %s", line)

    await ctx.report(0, f"building {args.name} from {base.name}")
    begun = time.monotonic()
    # abandon_on_cancel: a cancelled task ends now; the build finishes and is cached.
    tag, cached = await anyio.to_thread.run_sync(build_once, driver, wanted, progress, abandon_on_cancel=True)
    build_ms = 0 if cached else int((time.monotonic() - begun) * 1000)
    if build_ms and BUILD_METER in sandboxes.leases.catalog.rates:
        ctx.add_usage(Usage.of({BUILD_METER: build_ms}))
    size = await anyio.to_thread.run_sync(image_size, driver, wanted.base_tag) or 0
    if existing is None:
        await record(ctx, sandboxes, driver, args, wanted, size, build_ms)
    await ctx.report(float(steps + 1), f"{args.name} is ready ({size / MIB:.0f} MiB)")
    with sandboxes.store.transaction() as session:
        row = find(session, ctx.tenant_id, args.name)
        assert row is not None
        shown = info(custom_template(row), sandboxes, size, row)
    log.info("template %s of %s: %s (%s)", args.name, ctx.tenant_id, tag, "cached" if cached else "built")
    return TemplateCreateOutput(**shown.model_dump(), cached=cached, build_s=round(build_ms / 1000, 1))


async def record(
    ctx: TaskContext,
    sandboxes: SandboxManager,
    driver: DockerDriver,
    args: TemplateCreateInput,
    wanted: CustomRecipe,
    size: int,
    build_ms: int,
) -> None:
    """The tenant's row for the built image, within its count and size quotas."""
    try:
        with sandboxes.store.transaction() as session:
            TEMPLATE_QUOTA.check(session, ctx.tenant_id)
            tenant = ledger.locked_tenant(session, ctx.tenant_id)
            most_mib = int((tenant.quotas or {}).get(SIZE_QUOTA, SIZE_QUOTA_DEFAULT))
            used = session.scalar(
                select(func.coalesce(func.sum(SandboxTemplate.size_bytes), 0)).where(
                    SandboxTemplate.tenant_id == ctx.tenant_id
                )
            )
            if int(used or 0) + size > most_mib * MIB:
                raise QuotaExceeded(
                    f"this template's image takes {size / MIB:.0f} MiB and your templates already take "
                    f"{int(used or 0) / MIB:.0f} MiB of your {most_mib} MiB: delete one with "
                    "sandbox_template_delete, or use fewer packages, then retry."
                )
            session.add(
                SandboxTemplate(
                    id=new_id("tpl"),
                    tenant_id=ctx.tenant_id,
                    name=args.name,
                    base=args.base,
                    debian_packages=list(wanted.debian),
                    pypi_packages=list(wanted.pypi),
                    image=wanted.base_tag,
                    size_bytes=size,
                    build_ms=build_ms,
                )
            )
    except IntegrityError as exc:
        raise InvalidInput(
            f"a template named {args.name!r} was created meanwhile: call sandbox_templates to see it."
        ) from exc
    except QuotaExceeded:
        await anyio.to_thread.run_sync(remove_unused, sandboxes, driver, wanted)
        raise


def remove_unused(sandboxes: SandboxManager, driver: DockerDriver, wanted: CustomRecipe) -> None:
    """Remove the image if no tenant's template names it any more, and any other custom
    image left unused earlier (a sandbox was still running on it then)."""
    with sandboxes.store.transaction() as session:
        used = set(session.scalars(select(SandboxTemplate.image).distinct()))
        sessions = session.scalar(
            select(func.count()).where(Sandbox.image == wanted.tag, Sandbox.state.in_(LIVE_STATES))
        )
    if wanted.base_tag not in used and not sessions:  # else a later sweep removes it
        remove(driver, wanted)
    sweep(driver, used)


async def template_delete(ctx: TaskContext, args: TemplateDeleteInput) -> TemplateDeleteOutput:
    """Delete one of the caller's custom templates; its image goes when no one else's names it."""
    sandboxes = ctx.service(SandboxManager)
    with sandboxes.store.transaction() as session:
        row = find(session, ctx.tenant_id, args.name)
        if row is None:
            return TemplateDeleteOutput(name=args.name, deleted=False)
        wanted = recipe_of(row)
        session.delete(row)
    if isinstance(sandboxes.driver, DockerDriver):
        await anyio.to_thread.run_sync(remove_unused, sandboxes, sandboxes.driver, wanted)
    return TemplateDeleteOutput(name=args.name, deleted=True)


def create_worst_case(args: TemplateCreateInput) -> Usage:
    return Usage.of({BUILD_METER: int(BUILD_TIMEOUT_S * 1000)})
