"""The model parameters every llama.cpp model we load uses, whatever the CPU.

llama.cpp puts a model's weights in an *extra* buffer type where one suits the CPU: the
AMX buffer on CPUs with Intel AMX (Sapphire Rapids and later), when ggml was compiled with
AMX, as a native build of llama-cpp-python is on such a machine; elsewhere the repack
buffer (Q4_0, IQ4_NL, Q8_0 weights laid out for AVX2/AVX-512). As released, ggml's AMX
matrix product loads a tile configuration the compiler left half written, and the first
decode dies of a general protection fault: the process is gone, llama-server's alike
(llama.cpp issue 20824). ``scripts/setup`` builds llama-cpp-python with that fixed
(``common/llama_source``), and the build says so by a symbol of its own: there the AMX
buffers are on, and AMX computes (a prompt about 5x and a lone sequence's decode about
2.5x as fast as AVX-512 on two cores). A llama.cpp with AMX compiled in but without the
fix loads every model without extra buffer types (llama-server's ``--no-repack``): the
weights stay in plain CPU buffers and the AVX-512 kernels compute. Elsewhere they stay on.

The low-level path (``llama_batch``) takes ``model_params()``; llama-cpp-python's ``Llama``
(the embedding context, its server) reads ``llama_model_default_params``, which
``use_everywhere`` makes this module's.
"""

from __future__ import annotations

import ctypes
import functools
import re
import threading
from typing import Any

from common.llama_source import FIX_VERSION, fix_in

_lock = threading.Lock()
_library_defaults: Any = None  # llama-cpp-python's own llama_model_default_params


@functools.cache
def amx_compiled() -> bool:
    """Whether this llama.cpp's ggml has AMX kernels (and so an AMX buffer type)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


@functools.cache
def amx_fixed() -> bool:
    """Whether the llama.cpp this process loaded was built with our fix of its AMX tile
    configuration (asked of the library in use, not of a file on disk)."""
    from llama_cpp import llama_cpp as bindings

    return fix_in(bindings._lib) == FIX_VERSION


def amx_safe() -> bool:
    """Whether the AMX buffers may be used: not compiled in, or compiled in and fixed."""
    return not amx_compiled() or amx_fixed()


# The CPU features of llama.cpp's build worth naming (llama_print_system_info's).
SHOWN_FEATURES = ("AVX2", "AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8")


def describe_kernels(system_info: str, fixed: bool, granted: bool = True) -> str:
    """What llama.cpp computes with, from its system info, whether the build has the AMX fix
    and whether ggml offers its AMX buffers here (the kernel granted AMX to the process), as
    ``cloudskills doctor`` says."""
    built = {name for name, value in re.findall(r"(\w+) = (\d+)", system_info) if value == "1"}
    shown = ", ".join(name for name in SHOWN_FEATURES if name in built) or "no AVX2 or AVX-512"
    if "AMX_INT8" in built and fixed and granted:
        shown += "; AMX computes (built with the fix of llama.cpp issue 20824)"
    elif "AMX_INT8" in built and fixed:
        shown += "; AMX not granted to this process by the kernel (arch_prctl): AVX-512 computes"
    elif "AMX_INT8" in built:
        shown += (
            "; AMX buffers off, as this build's matrix product crashes (llama.cpp issue 20824): AVX-512 computes"
            " (scripts/setup rebuilds llama-cpp-python with the fix)"
        )
    return shown


def extra_buffer_types() -> list[str]:
    """The extra buffer types llama.cpp's CPU device offers this process, by name: ``AMX``
    only where ggml has AMX kernels and the kernel granted AMX, ``CPU_REPACK``, ..."""
    from llama_cpp import llama_cpp as bindings

    library, pointer = bindings._lib, ctypes.c_void_p
    device_of_type = ctypes.CFUNCTYPE(pointer, ctypes.c_int)(("ggml_backend_dev_by_type", library))
    registry_of = ctypes.CFUNCTYPE(pointer, pointer)(("ggml_backend_dev_backend_reg", library))
    lookup = ctypes.CFUNCTYPE(pointer, pointer, ctypes.c_char_p)(("ggml_backend_reg_get_proc_address", library))
    name_of = ctypes.CFUNCTYPE(ctypes.c_char_p, pointer)(("ggml_backend_buft_name", library))
    cpu = device_of_type(0)  # GGML_BACKEND_DEVICE_TYPE_CPU
    listing = lookup(registry_of(cpu), b"ggml_backend_dev_get_extra_bufts") if cpu else None
    if not listing:
        return []
    types = ctypes.CFUNCTYPE(ctypes.POINTER(pointer), pointer)(listing)(cpu)
    names: list[str] = []
    while types and types[len(names)]:  # a list that ends with NULL
        names.append((name_of(types[len(names)]) or b"").decode(errors="replace"))
    return names


def kernels() -> str:
    """``describe_kernels`` of this process's llama.cpp."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return describe_kernels(info, amx_fixed(), "AMX" in extra_buffer_types())


def model_params() -> Any:
    """llama.cpp's default model parameters, without extra buffer types where AMX would crash."""
    params = library_defaults()()
    if not amx_safe():
        params.use_extra_bufts = False
    return params


def use_everywhere() -> None:
    """Make ``model_params`` the defaults llama-cpp-python's ``Llama`` loads a model with (idempotent)."""
    from llama_cpp import llama_cpp as bindings

    library_defaults()  # kept aside before it is replaced
    bindings.llama_model_default_params = model_params


def library_defaults() -> Any:
    global _library_defaults
    from llama_cpp import llama_cpp as bindings

    with _lock:
        if _library_defaults is None:
            _library_defaults = bindings.llama_model_default_params
        return _library_defaults
