"""The sandbox skill: run code in hardened Docker sandboxes."""

from __future__ import annotations

from skills.base import Op
from skills.registry import skill_from_doc
from skills.sandbox import models as m
from skills.sandbox import ops
from skills.sandbox.manager import from_platform
from skills.sandbox.records import QUOTA

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
            "Run a shell command in a session sandbox.",
            m.ExecInput,
            m.ExecOutput,
            ops.exec_,
            timeout_s=lambda a: a.timeout_s,
        ),
        Op(
            "run_code",
            "Run code in a session sandbox (the template's language unless `language` is given).",
            m.RunCodeInput,
            m.ExecOutput,
            ops.run_code,
            timeout_s=lambda a: a.timeout_s,
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
    ),
    resource=from_platform,
    quota=QUOTA,
)
