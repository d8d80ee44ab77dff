"""The model parameters every llama.cpp model is loaded with: no extra buffer types where
ggml has AMX kernels without our fix of their tile configuration, whose matrix product
crashes the process (``llama_cpu``, ``common/llama_source``). The real check is the model
tier itself: on an AMX CPU its every decode runs the fixed AMX kernels, and it would die
in the first one without the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_cpp import llama_cpp as bindings

from common import llama_source
from skills.inference.engines import llama_cpu


@pytest.mark.parametrize(("compiled", "fixed"), [(True, False), (True, True), (False, False)])
def test_extra_buffer_types_are_off_exactly_where_amx_is_compiled_in_without_the_fix(
    monkeypatch: pytest.MonkeyPatch, compiled: bool, fixed: bool
) -> None:
    monkeypatch.setattr(llama_cpu, "amx_compiled", lambda: compiled)
    monkeypatch.setattr(llama_cpu, "amx_fixed", lambda: fixed)
    assert llama_cpu.model_params().use_extra_bufts is (not compiled or fixed)


def test_llama_cpp_python_loads_with_the_same_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_cpu, "amx_compiled", lambda: True)
    monkeypatch.setattr(llama_cpu, "amx_fixed", lambda: False)
    monkeypatch.setattr(bindings, "llama_model_default_params", bindings.llama_model_default_params)
    llama_cpu.use_everywhere()
    llama_cpu.use_everywhere()  # twice: still the library's defaults underneath, not itself
    assert bindings.llama_model_default_params().use_extra_bufts is False
    assert llama_cpu.library_defaults()().use_extra_bufts is True


def test_the_llama_cpp_python_that_setup_installed_carries_the_fix() -> None:
    assert llama_source.installed_has_fix(), "scripts/setup builds llama-cpp-python with common/llama_source"


# The function as llama.cpp's amx/mmq.cpp has it in llama-cpp-python 0.3.36.
STACK_CONFIG = """#if defined(__AMX_INT8__)
inline void ggml_tile_config_init(void) {
    static thread_local bool done = false;

    if (done) {
        return;
    }

    alignas(64) tile_config_t tc = {};
    tc.palette_id = 1;
    tc.rows[0] = 8;   tc.colsb[0] = 64;

    _tile_loadconfig(&tc);
    done = true;
}
#endif
"""


def test_the_patch_moves_the_tile_configuration_to_static_storage_once(tmp_path: Path) -> None:
    mmq = tmp_path / "ggml/src/ggml-cpu/amx/mmq.cpp"
    mmq.parent.mkdir(parents=True)
    mmq.write_text(STACK_CONFIG)
    assert llama_source.patch_amx(tmp_path)
    patched = mmq.read_text()
    assert "alignas(64) tile_config_t tc = {};" not in patched
    assert "alignas(64) static const tile_config_t tc = ggml_tile_config_make();" in patched
    maker = patched[patched.index("static tile_config_t ggml_tile_config_make(void) {") :]
    assert maker.index("tc.rows[0] = 8;") < maker.index("return tc;") < maker.index("inline void ggml_tile_config_init")
    assert patched.rstrip().endswith(f"const int {llama_source.MARKER} = 1;")
    assert llama_source.patch_amx(tmp_path)
    assert mmq.read_text() == patched  # once


def test_code_the_patch_does_not_know_is_left_alone_and_unmarked(tmp_path: Path) -> None:
    mmq = tmp_path / "ggml/src/ggml-cpu/amx/mmq.cpp"
    mmq.parent.mkdir(parents=True)
    changed = STACK_CONFIG.replace("alignas(64) tile_config_t tc = {};", "alignas(64) static tile_config_t tc;")
    mmq.write_text(changed)
    assert not llama_source.patch_amx(tmp_path)
    assert mmq.read_text() == changed


def test_the_source_is_the_version_the_project_requires() -> None:
    assert llama_source.requirement().startswith("llama-cpp-python>=")
