"""The one error tree of cloudskills.

Every error an agent or a CLI user can see is one of these. Each carries one
sentence that says what went wrong and what to do next; the MCP layer turns it
into a tool error (``isError``) and the CLI prints it, never a stack trace.

    CloudSkillsError
    ├── InvalidInput          the arguments are wrong: fix them and call again
    ├── NotFound              no such thing for this caller (also: another tenant's)
    ├── Forbidden             the caller may not do this
    ├── BudgetExceeded        the tenant's budget cannot cover the worst case
    ├── QuotaExceeded         a per-tenant limit is reached: retry later
    ├── Timeout               the task ran past its deadline and was stopped
    ├── Cancelled             the task was cancelled
    ├── TaskFailed            the task's work failed (its own error, not the caller's)
    └── BackendUnavailable    Docker, the database or a model engine is not reachable

The tree lives in a leaf package that imports nothing of ours, so ``sandbox``
(isolation) and ``scheduler`` (tasks and money) can both raise these without
either importing the other.
"""

from __future__ import annotations


class CloudSkillsError(Exception):
    """Something went wrong; the message says what to do next."""

    code = "error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__ or self.code)

    @property
    def message(self) -> str:
        return str(self.args[0])


class InvalidInput(CloudSkillsError):
    """The arguments are not valid: check them against the tool's schema and call again."""

    code = "invalid_input"


class NotFound(CloudSkillsError):
    """Nothing by that id exists for you: list what you have and use one of those ids."""

    code = "not_found"


class Forbidden(CloudSkillsError):
    """You may not do this: use a key of a tenant that is allowed to."""

    code = "forbidden"


class BudgetExceeded(CloudSkillsError):
    """The tenant's budget cannot cover this task: raise the budget or ask for less."""

    code = "budget_exceeded"


class QuotaExceeded(CloudSkillsError):
    """A limit of the tenant is reached: free some resources or retry later."""

    code = "quota_exceeded"


class Timeout(CloudSkillsError):
    """The task ran past its deadline and was stopped: give it a longer timeout_s or do less."""

    code = "timed_out"


class Cancelled(CloudSkillsError):
    """The task was cancelled before it finished."""

    code = "cancelled"


class TaskFailed(CloudSkillsError):
    """The task failed: read the message, fix the cause and run it again."""

    code = "failed"


class BackendUnavailable(CloudSkillsError):
    """A backend is not reachable: run `cloudskills doctor` to see what is missing."""

    code = "backend_unavailable"


class BackendTimeout(Timeout, BackendUnavailable):
    """A backend (a model endpoint) did not answer in time: nothing it did reached the caller,
    so, like any unavailable backend, it costs nothing."""

    code = "timed_out"


ERRORS_BY_CODE: dict[str, type[CloudSkillsError]] = {
    cls.code: cls
    for cls in (
        CloudSkillsError,
        InvalidInput,
        NotFound,
        Forbidden,
        BudgetExceeded,
        QuotaExceeded,
        Timeout,
        Cancelled,
        TaskFailed,
        BackendUnavailable,
    )
}


def error_from_code(code: str, message: str) -> CloudSkillsError:
    """Rebuild an error recorded on a task row (its code and message)."""
    return ERRORS_BY_CODE.get(code, CloudSkillsError)(message)


def sole_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error inside (possibly nested) task-group wrappers, or the group itself."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error
