"""The inference skill's handlers."""

from __future__ import annotations

import time

from common.errors import InvalidInput
from scheduler.pricing import PriceCatalog, Usage, format_money
from scheduler.tasks import TaskContext, TextReports
from skills.base import Money
from skills.inference import models as m
from skills.inference.catalog import ModelCatalog
from skills.inference.engines.base import GenerateRequest, Message, Spent, prompt_bound
from skills.inference.pool import BackendStatus

# Beyond the engine's own time: loading the model on first use, queueing for a slot.
GENERATE_DEADLINE_S = 600.0


def catalog(ctx: TaskContext) -> ModelCatalog:
    return ctx.service(ModelCatalog)


def money(catalog: PriceCatalog, micros: int) -> Money:
    return Money(micros=micros, amount=format_money(micros, catalog.currency))


def prices_of(prices: PriceCatalog, model: str) -> m.ModelPrices | None:
    rates = {kind: prices.rates.get(f"tokens.{kind}:{model}") for kind in ("input", "cached_input", "output")}
    if any(rate is None for rate in rates.values()):
        return None
    return m.ModelPrices(
        **{f"{kind}_per_mtok": money(prices, rate.price(1_000_000)) for kind, rate in rates.items() if rate}
    )


def check_priced(prices: PriceCatalog, model: str) -> None:
    if prices_of(prices, model) is None:
        raise InvalidInput(
            f"model {model!r} has no price in catalog {prices.version}, so it cannot be billed: "
            "add it to the price catalog (prices_file), or use another model."
        )


async def models(ctx: TaskContext, args: m.ModelsInput) -> m.ModelsOutput:
    prices = ctx.service(PriceCatalog)
    listed = []
    for name, engine in catalog(ctx).engines.items():
        available, detail = engine.availability()
        priced = prices_of(prices, name)
        listed.append(
            m.ModelInfo(
                name=name,
                engine=engine.spec.engine,
                context_length=engine.spec.context_length,
                prices=priced,
                available=available and priced is not None,
                detail=detail if priced is not None else f"{detail}; no price in the catalog, so it is not offered",
                embeddings=engine.spec.embeddings or engine.spec.engine == "llama",
                policy=engine.spec.policy,
                backends=[backend_info(prices, status) for status in engine.status()],
            )
        )
    return m.ModelsOutput(models=listed)


def backend_info(prices: PriceCatalog, status: BackendStatus) -> m.BackendInfo:
    cost = status.cost
    latency = None
    if status.ttft_p50_ms is not None and status.ttft_p95_ms is not None:
        latency = m.BackendLatency(
            ttft_p50_ms=round(status.ttft_p50_ms, 1), ttft_p95_ms=round(status.ttft_p95_ms, 1), samples=status.samples
        )
    return m.BackendInfo(
        name=status.name,
        engine=status.engine,
        available=status.available,
        detail=status.detail,
        health=status.health,
        back_in_s=status.back_in_s,
        in_flight=status.in_flight,
        capacity=status.capacity,
        failures=status.failures,
        last_error=status.last_error,
        latency=latency,
        cost=m.ModelPrices(
            input_per_mtok=money(prices, cost.input_per_mtok),
            cached_input_per_mtok=money(prices, cost.cached_input_per_mtok),
            output_per_mtok=money(prices, cost.output_per_mtok),
        ),
    )


async def generate(ctx: TaskContext, args: m.GenerateInput) -> m.GenerateOutput:
    """Generate a reply; its text streams to the caller as progress while it is produced."""
    engine = catalog(ctx).engine(args.model)
    check_priced(ctx.service(PriceCatalog), args.model)
    context = engine.spec.context_length
    if args.max_tokens >= context:
        raise InvalidInput(
            f"max_tokens {args.max_tokens} is over what {args.model} can produce: its context is {context} "
            "tokens, prompt included. Ask for fewer."
        )
    messages = [Message(role=msg.role, content=msg.content) for msg in args.messages]
    request = GenerateRequest(
        messages=messages, max_tokens=args.max_tokens, temperature=args.temperature, stop=args.stop, seed=args.seed
    )
    started = time.monotonic()
    first: list[float] = []
    reports = TextReports(ctx)  # MCP's at most ten a second

    async def on_text(text: str) -> None:
        if not first:
            first.append(time.monotonic())
        await reports.add(text)

    try:
        completion = await engine.generate(ctx.tenant_id, request, on_text)
    except BaseException:
        # Cancelled or past its deadline: what the model produced until then is billed.
        ctx.add_usage(token_usage(args.model, request.spent))
        raise
    # Counted before the last text goes out: a cancel that lands meanwhile bills it all.
    ctx.add_usage(token_usage(args.model, Spent.of(completion)))
    await reports.flush()
    return m.GenerateOutput(
        model=args.model,
        text=completion.text,
        finish_reason=completion.finish_reason,
        usage=m.TokenUsage(
            prompt_tokens=completion.prompt_tokens,
            cached_tokens=completion.cached_tokens,
            completion_tokens=completion.completion_tokens,
        ),
        max_tokens=args.max_tokens,
        time_to_first_token_ms=int((first[0] - started) * 1000) if first else None,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


def token_usage(model: str, spent: Spent) -> Usage:
    return Usage.tokens(
        model,
        input=spent.prompt_tokens - spent.cached_tokens,
        cached_input=spent.cached_tokens,
        output=spent.completion_tokens,
    )


def generate_worst_case(args: m.GenerateInput) -> Usage:
    prompt = prompt_bound([Message(role=msg.role, content=msg.content) for msg in args.messages])
    return Usage.tokens(args.model, input=prompt, output=args.max_tokens)


async def embed(ctx: TaskContext, args: m.EmbedInput) -> m.EmbedOutput:
    engine = catalog(ctx).engine(args.model)
    check_priced(ctx.service(PriceCatalog), args.model)
    if engine.spec.engine != "llama" and not engine.spec.embeddings:
        raise InvalidInput(f"model {args.model!r} does not make embeddings: inference_models says which do.")
    result = await engine.embed(ctx.tenant_id, args.input)
    ctx.add_usage(Usage.tokens(args.model, input=result.prompt_tokens))
    dimensions = len(result.vectors[0]) if result.vectors else 0
    return m.EmbedOutput(
        model=args.model,
        vectors=result.vectors,
        dimensions=dimensions,
        prompt_tokens=result.prompt_tokens,
    )


def embed_worst_case(args: m.EmbedInput) -> Usage:
    return Usage.tokens(args.model, input=sum(len(text.encode()) + 8 for text in args.input))
