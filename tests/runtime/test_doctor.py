"""What `cloudskills doctor` says of the local model engine's CPU kernels."""

from __future__ import annotations

import llama_cpp

from skills.inference.engines.llama_cpu import amx_fixed, describe_kernels, extra_buffer_types, kernels

SAPPHIRE_RAPIDS = (
    "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | REPACK = 1 | "
)
ZEN3 = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 0 | REPACK = 1 | "


def test_the_kernels_are_named_and_amx_is_said_to_be_on_only_with_the_fix() -> None:
    described = describe_kernels(SAPPHIRE_RAPIDS, fixed=False)
    assert described.startswith("AVX2, AVX512, AVX512_VNNI, AVX512_BF16, AMX_INT8; AMX buffers off")
    assert "llama.cpp issue 20824" in described and "scripts/setup" in described
    fixed = describe_kernels(SAPPHIRE_RAPIDS, fixed=True)
    assert fixed.startswith("AVX2, AVX512, AVX512_VNNI, AVX512_BF16, AMX_INT8; AMX computes")
    refused = describe_kernels(SAPPHIRE_RAPIDS, fixed=True, granted=False)
    assert "AMX not granted" in refused and "AVX-512 computes" in refused
    for fix in (True, False):
        assert describe_kernels(ZEN3, fix) == "AVX2"
        assert describe_kernels("CPU : SSE3 = 1 | ", fix) == "no AVX2 or AVX-512"


def test_this_machines_llama_cpp_is_described() -> None:
    info = llama_cpp.llama_print_system_info().decode()
    offered = extra_buffer_types()
    assert kernels() == describe_kernels(info, amx_fixed(), "AMX" in offered)
    # Where ggml offers its AMX buffers (compiled in, and granted by the kernel), setup built
    # them fixed, so AMX computes.
    assert ("AMX computes" in kernels()) == ("AMX_INT8 = 1" in info and "AMX" in offered)
    assert "AMX" not in offered or "AMX_INT8 = 1" in info
