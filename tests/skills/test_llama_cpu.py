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


@pytest.mark.parametrize(("compiled", "fixed"), [(True, False), (True, True), (False, False), (False, True)])
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
    assert llama_cpu.amx_fixed()  # the library this process loaded, too


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
    llama_source.patch_amx(tmp_path)
    patched = mmq.read_text()
    assert "alignas(64) tile_config_t tc = {};" not in patched
    assert "alignas(64) static const tile_config_t tc = ggml_tile_config_make();" in patched
    maker = patched[patched.index("static tile_config_t ggml_tile_config_make(void) {") :]
    assert maker.index("tc.rows[0] = 8;") < maker.index("return tc;") < maker.index("inline void ggml_tile_config_init")
    assert patched.rstrip().endswith(f"const int {llama_source.MARKER} = {llama_source.FIX_VERSION};")
    llama_source.patch_amx(tmp_path)
    assert mmq.read_text() == patched  # once


@pytest.mark.parametrize(
    "changed",
    [
        STACK_CONFIG.replace("alignas(64) tile_config_t tc = {};", "alignas(64) static tile_config_t tc;"),
        STACK_CONFIG.replace("    tc.palette_id = 1;\n", "    tc.palette_id = 1;\n    ggml_amx_thread_init();\n"),
        STACK_CONFIG.replace("    _tile_loadconfig(&tc);\n", ""),
    ],
    ids=["no stack config", "a call among the assignments", "no load inside the function"],
)
def test_code_the_patch_does_not_know_is_refused_and_left_alone(tmp_path: Path, changed: str) -> None:
    mmq = tmp_path / "ggml/src/ggml-cpu/amx/mmq.cpp"
    mmq.parent.mkdir(parents=True)
    mmq.write_text(changed + "void later(void) {\n    _tile_loadconfig(&tc);\n}\n")
    before = mmq.read_text()
    with pytest.raises(llama_source.UnknownSource):
        llama_source.patch_amx(tmp_path)
    assert mmq.read_text() == before


def test_the_source_is_the_exact_version_the_project_pins() -> None:
    assert llama_source.requirement() == f"llama-cpp-python=={llama_source.pinned_version()}"


def test_the_wheel_cache_is_keyed_by_the_build_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    plain = llama_source.wheel_cache()
    assert plain.parent == tmp_path / "cloudskills" / "llama-cpp-python"
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_NATIVE=OFF")
    assert llama_source.wheel_cache() != plain
