"""What crosses the wire for the memory skill: the ops' arguments and results."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from skills.base import OpInput

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A metadata value: flat JSON only (no objects or lists inside); a key is a plain name, so a
# filter on it is a plain path into the stored JSON on every store.
Scalar = str | int | float | bool | None
MetadataKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")]
Metadata = dict[MetadataKey, Scalar]
MAX_TTL_S = 10 * 365 * 86400

NAMESPACE = Field(
    default=None,
    pattern=NAMESPACE_PATTERN,
    description="Where the memory lives: by default your own namespace (named after your agent); 'shared' for "
    "every agent of your tenant; or any other name (1-64 letters, digits, '_', '-', '.').",
)
MEMORY_ID = Field(min_length=1, max_length=64, description="A memory_id from memory_put, memory_search or memory_list.")


class MemoryIn(BaseModel):
    text: str = Field(min_length=1, description="One memory: a fact, a preference, what happened. At most 4096 bytes.")
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Your own name for it: a put with the same key replaces.",
    )
    metadata: Metadata = Field(default_factory=dict, max_length=32, description="A flat JSON object, for filters.")
    ttl_s: int | None = Field(default=None, ge=1, le=MAX_TTL_S, description="Seconds it lives (default: for good).")


class PutInput(OpInput, MemoryIn):
    namespace: str | None = NAMESPACE


class PutBatchInput(OpInput):
    namespace: str | None = NAMESPACE
    items: list[MemoryIn] = Field(min_length=1, max_length=100, description="1 to 100 memories, stored all or none.")


class PutOutput(BaseModel):
    memory_id: str
    namespace: str
    key: str | None
    replaced: bool = Field(description="true when a memory with this key was there and was replaced.")
    expires_at: datetime | None


class PutBatchOutput(BaseModel):
    namespace: str
    memories: list[PutOutput]
    tokens: int = Field(description="Word pieces embedded, billed at the embedding model's rate.")


class SearchInput(OpInput):
    namespace: str | None = NAMESPACE
    query: str = Field(min_length=1, max_length=4096, description="What you are looking for, in your own words.")
    top_k: int = Field(default=5, ge=1, le=50, description="Hits to return at most.")
    filter: Metadata = Field(
        default_factory=dict,
        max_length=16,
        description="Metadata equalities every hit must have, e.g. {'kind': 'fact'}.",
    )
    min_score: float = Field(default=0.0, ge=-1, le=1, description="Drop hits whose score is below this.")


class Hit(BaseModel):
    memory_id: str
    namespace: str
    key: str | None
    text: str
    metadata: dict[str, Scalar]
    score: float = Field(description="Cosine similarity of meaning to the query, -1 to 1 (higher is closer).")
    matched: list[Literal["meaning", "words"]] = Field(description="Which searches found it.")
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


class SearchOutput(BaseModel):
    namespace: str
    hits: list[Hit] = Field(description="Best first: meaning and words fused into one ranking.")


class GetInput(OpInput):
    memory_id: str | None = Field(default=None, max_length=64, description="The memory's id; or give its key.")
    key: str | None = Field(default=None, min_length=1, max_length=256, description="The memory's key, in namespace.")
    namespace: str | None = NAMESPACE

    @model_validator(mode="after")
    def one_way(self) -> GetInput:
        if (self.memory_id is None) == (self.key is None):
            raise ValueError("give memory_id, or key (with namespace), not both")
        return self


class MemoryOut(BaseModel):
    memory_id: str
    namespace: str
    key: str | None
    text: str
    metadata: dict[str, Scalar]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None


class ListInput(OpInput):
    namespace: str | None = NAMESPACE
    cursor: str | None = Field(default=None, max_length=64, description="next_cursor from the previous page.")
    limit: int = Field(default=50, ge=1, le=200, description="Memories per page.")


class ListOutput(BaseModel):
    namespace: str
    memories: list[MemoryOut] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Pass it as cursor for the next page; null on the last page.")


class NamespacesInput(OpInput):
    pass


class NamespaceInfo(BaseModel):
    namespace: str
    memories: int
    stored_bytes: int
    state: Literal["live", "stopped"] = Field(
        description="stopped: its storage lease ran out of budget; writes are refused, reads still work."
    )
    created_at: datetime


class NamespacesOutput(BaseModel):
    namespaces: list[NamespaceInfo]


class DeleteInput(OpInput):
    memory_id: str | None = Field(default=None, max_length=64, description="Delete this one memory.")
    namespace: str | None = Field(
        default=None,
        pattern=NAMESPACE_PATTERN,
        description="Without memory_id: delete this whole namespace and every memory in it (asks to confirm).",
    )

    @model_validator(mode="after")
    def one_way(self) -> DeleteInput:
        if (self.memory_id is None) == (self.namespace is None):
            raise ValueError("give memory_id to delete one memory, or namespace to delete a whole namespace")
        return self


class DeleteOutput(BaseModel):
    deleted: int = Field(description="Memories deleted (0: it was gone already).")
    namespace: str | None = Field(description="The namespace deleted, when a whole one was.")
