"""The model parameters every llama.cpp model is loaded with: no extra buffer types where
ggml has AMX kernels, whose matrix product crashes the process (``llama_cpu``). The real
check is the model tier itself, which dies in its first decode on an AMX CPU without this."""

from __future__ import annotations

import pytest
from llama_cpp import llama_cpp as bindings

from skills.inference.engines import llama_cpu


@pytest.mark.parametrize("amx", [True, False])
def test_extra_buffer_types_are_off_exactly_where_amx_is_compiled_in(
    monkeypatch: pytest.MonkeyPatch, amx: bool
) -> None:
    monkeypatch.setattr(llama_cpu, "amx_compiled", lambda: amx)
    assert llama_cpu.model_params().use_extra_bufts is (not amx)


def test_llama_cpp_python_loads_with_the_same_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpu, "amx_compiled", lambda: True)
    monkeypatch.setattr(bindings, "llama_model_default_params", bindings.llama_model_default_params)
    llama_cpu.use_everywhere()
    llama_cpu.use_everywhere()  # twice: still the library's defaults underneath, not itself
    assert bindings.llama_model_default_params().use_extra_bufts is False
    assert llama_cpu.library_defaults()().use_extra_bufts is True
