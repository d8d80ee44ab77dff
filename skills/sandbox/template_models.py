"""What crosses the wire for sandbox templates: the catalog, and a tenant's custom templates."""

from __future__ import annotations

from pydantic import BaseModel, Field

from skills.base import OpInput

TEMPLATE_NAME = Field(
    pattern=r"^[a-z][a-z0-9-]{1,39}$",
    description="The template's name: 2 to 40 lower-case letters, digits and '-', starting with a letter; "
    "not a built-in template's name.",
)
MAX_PACKAGES = 50


class TemplatesInput(OpInput):
    pass


class TemplateInfo(BaseModel):
    name: str
    language: str = Field(description="The language sandbox_run_code uses by default.")
    description: str
    custom: bool = Field(description="True for a template you made with sandbox_template_create.")
    base: str | None = Field(default=None, description="The built-in template a custom template extends.")
    debian_packages: list[str] = Field(description="The Debian packages of its image (a custom one's own).")
    pypi_packages: list[str] = Field(default_factory=list, description="The PyPI packages added to its image.")
    image_mib: float | None = Field(description="The image's size in MiB; null when it is not built here.")
    built: bool = Field(description="Whether its image is built on this machine (else `cloudskills images build`).")
    vcpus: float
    memory_mib: int
    pids: int
    disk_mib: int
    runtime: str = Field(description="'runc', or 'runsc' for gVisor.")
    warm: int = Field(description="Sandboxes of it the warm pool keeps now, by use (0: each starts cold).")
    warm_ready: int = Field(description="Of those, how many are ready this moment.")


class TemplatesOutput(BaseModel):
    templates: list[TemplateInfo]


class TemplateCreateInput(OpInput):
    name: str = TEMPLATE_NAME
    base: str = Field(
        default="python",
        description="The built-in template to extend: 'python', 'python-data', 'node', 'dev', 'bash', ... "
        "(sandbox_templates lists them); its language and limits carry over.",
    )
    debian_packages: list[str] = Field(
        default_factory=list,
        max_length=MAX_PACKAGES,
        description="Debian 12 packages to install with apt, e.g. ['jq', 'python3-yaml'].",
    )
    pypi_packages: list[str] = Field(
        default_factory=list,
        max_length=MAX_PACKAGES,
        description="PyPI requirements to install with pip (built wheels for CPython 3.11, Linux x86-64), "
        "e.g. ['tabulate', 'requests==2.32.3'].",
    )


class TemplateCreateOutput(TemplateInfo):
    cached: bool = Field(description="True when an image of this exact recipe was already built (no build ran).")
    build_s: float = Field(description="Seconds the build took (0 when cached); billed as template_build time.")


class TemplateDeleteInput(OpInput):
    name: str = Field(max_length=64, description="The name of one of your custom templates.")


class TemplateDeleteOutput(BaseModel):
    name: str
    deleted: bool = Field(description="False when you had no template of that name (delete is idempotent).")
