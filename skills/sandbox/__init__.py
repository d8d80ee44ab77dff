"""The sandbox skill: run code in hardened Docker sandboxes."""

from __future__ import annotations

from sandbox.driver import SandboxDriver
from sandbox.images import IMAGES, sandbox_image
from sandbox.templates import TEMPLATES
from scheduler.workers import Workers
from skills.base import Op, Platform
from skills.registry import skill_from_doc
from skills.sandbox import describe, expose, lifecycle, ops, processes, templates_ops
from skills.sandbox import models as m
from skills.sandbox import template_models as tm
from skills.sandbox.manager import SandboxManager
from skills.sandbox.pausing import PausePolicy
from skills.sandbox.pool import Shape, WarmPool
from skills.sandbox.records import CREATE_DEFAULT, QUOTA, RUN_DEFAULT
from skills.sandbox.results import RichOutput
from skills.sandbox.templates_ops import BUILD_TIMEOUT_S, TEMPLATE_QUOTA


def from_platform(platform: Platform) -> SandboxManager:
    """The sandbox manager and its warm pool (every built-in template, sized by use), on
    the process's Docker Engine."""
    assert platform.docker is not None
    settings = platform.settings
    images = {name: sandbox_image(name) for name in IMAGES}
    shapes = {t.name: Shape(t.name, images[t.image], t.limits, t.runtime) for t in TEMPLATES.values()}
    defaults = [shapes.pop(RUN_DEFAULT), shapes.pop(CREATE_DEFAULT)]
    # Sandboxes go to the engines docker_hosts names (sandbox/engines.py), or the one engine.
    driver: SandboxDriver = platform.engines or platform.docker
    pool = WarmPool(
        driver,
        platform.store.store_id,
        defaults,
        settings.pool_size,
        settings.pool_memory_mib,
        drain_s=settings.pool_drain_s,
        others=list(shapes.values()),  # the other templates: warm once used
        worker_id=platform.scheduler.worker_id,
    )
    # Exposed ports and egress: services of their own beside the manager (skills/sandbox/expose.py).
    from skills.sandbox.expose import Exposures
    from skills.sandbox.network import Egress

    engines = platform.engines
    engine_of = (lambda container_id: engines.engine_of(container_id).driver) if engines is not None else None
    platform.services.add(Exposures(platform.store, platform.docker, getattr(settings, "public_url", None), engine_of))
    platform.services.add(Egress(platform.store, platform.docker, getattr(settings, "sandbox_egress_cap", None)))
    pausing = PausePolicy(
        idle_pause=getattr(settings, "sandbox_idle_pause", False),
        retention_s=getattr(settings, "sandbox_paused_retention_s", PausePolicy.retention_s),
    )
    manager = SandboxManager(platform.store, driver, platform.leases, images, pool, pausing)
    manager.workers = platform.services.get(Workers)
    return manager


SKILL = skill_from_doc(
    __name__,
    (
        Op(
            "run",
            "Run Python or bash code (or a shell command) in a fresh sandbox and return exit_code, stdout, "
            "stderr and files; the sandbox is destroyed afterwards.",
            m.RunInput,
            m.RunOutput,
            ops.run,
            timeout_s=lambda a: a.timeout_s,
            worst_case=ops.run_worst_case,
            runs_long=lambda a: True,
            ask_less="a shorter timeout_s",
        ),
        Op(
            "create",
            "Start a session sandbox (template 'python' or 'bash') that keeps files between calls; returns sandbox_id.",
            m.CreateInput,
            m.CreateOutput,
            ops.create,
        ),
        Op(
            "exec",
            "Run a shell command in a session sandbox (its output streams as progress), or start it in the "
            "background (background: true) and get its process_id at once.",
            m.ExecInput,
            m.SessionExecOutput,
            ops.exec_,
            timeout_s=lambda a: a.timeout_s,
        ),
        Op(
            "run_code",
            "Run code in a session sandbox (the template's language unless `language` is given); files it "
            "writes under /work/outputs come back as images or resources.",
            m.RunCodeInput,
            RichOutput,
            ops.run_code,
            timeout_s=lambda a: a.timeout_s,
        ),
        Op(
            "process_list",
            "List a session sandbox's background processes (started by sandbox_exec with background: true).",
            processes.ProcessListInput,
            processes.ProcessListOutput,
            processes.list_processes,
            read_only=True,
        ),
        Op(
            "process_output",
            "Read a background process's output (stdout and stderr together) from an offset.",
            processes.ProcessOutputInput,
            processes.ProcessOutputOutput,
            processes.process_output,
            read_only=True,
        ),
        Op(
            "process_kill",
            "Kill a background process and what it started; killing one that has ended succeeds.",
            processes.ProcessKillInput,
            processes.ProcessKillOutput,
            processes.kill_process,
            destructive=True,
            idempotent=True,
            releases=True,
        ),
        Op(
            "write_file",
            "Write a file into a session sandbox.",
            m.WriteFileInput,
            m.WriteFileOutput,
            ops.write_file,
            idempotent=True,
        ),
        Op(
            "read_file",
            "Read a file from a session sandbox.",
            m.ReadFileInput,
            m.ReadFileOutput,
            ops.read_file,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "list_files",
            "List a directory in a session sandbox.",
            m.ListFilesInput,
            m.ListFilesOutput,
            ops.list_files,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "list",
            "List your live session sandboxes.",
            m.ListInput,
            m.ListOutput,
            ops.list_,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "destroy",
            "Destroy a session sandbox; destroying one that is already gone succeeds.",
            m.DestroyInput,
            m.DestroyOutput,
            ops.destroy,
            destructive=True,
            releases=True,
            idempotent=True,
        ),
        Op(
            "expose",
            "Expose a port a server listens on inside a session sandbox at an HTTP URL guarded by a secret token "
            "(closed when the sandbox is destroyed); exposing it again issues a new URL.",
            expose.ExposeInput,
            expose.ExposeOutput,
            expose.expose,
        ),
        Op(
            "describe",
            "Describe a session sandbox: state, template, CPU seconds, memory now and at its peak, disk used, "
            "processes, exposed ports and network policy.",
            describe.DescribeInput,
            describe.DescribeOutput,
            describe.describe,
            read_only=True,
        ),
        Op(
            "pause",
            "Pause a session sandbox to disk: its processes, memory and files are kept and its CPU and memory "
            "freed; while paused it is billed for its disk only. Sandboxes of the gVisor templates can pause; "
            "for others the error says why and the sandbox runs on. Pausing a paused one succeeds.",
            lifecycle.PauseInput,
            lifecycle.PauseOutput,
            lifecycle.pause,
            releases=True,
            idempotent=True,
        ),
        Op(
            "resume",
            "Resume a paused session sandbox with every process, variable and file as it was; resuming one that "
            "runs succeeds.",
            lifecycle.PauseInput,
            lifecycle.PauseOutput,
            lifecycle.resume,
            idempotent=True,
        ),
        Op(
            "templates",
            "List the sandbox templates: the built-in ones and your custom ones, with their language, packages, "
            "image size, limits and whether the warm pool keeps them ready.",
            tm.TemplatesInput,
            tm.TemplatesOutput,
            templates_ops.templates,
            read_only=True,
            idempotent=True,
        ),
        Op(
            "template_create",
            "Build a custom template, private to you: a built-in template plus Debian and PyPI packages, "
            "installed when the image is built (never when a sandbox starts). The same recipe is built once and "
            "reused; a build takes a minute or more and reports progress.",
            tm.TemplateCreateInput,
            tm.TemplateCreateOutput,
            templates_ops.template_create,
            idempotent=True,
            open_world=True,
            timeout_s=lambda a: BUILD_TIMEOUT_S,
            worst_case=templates_ops.create_worst_case,
            runs_long=lambda a: True,
        ),
        Op(
            "template_delete",
            "Delete one of your custom templates; deleting one that is gone succeeds.",
            tm.TemplateDeleteInput,
            tm.TemplateDeleteOutput,
            templates_ops.template_delete,
            destructive=True,
            releases=True,
            idempotent=True,
        ),
    ),
    resource=from_platform,
    quota=(QUOTA, TEMPLATE_QUOTA),
)
