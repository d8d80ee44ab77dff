"""llama-cpp-python's own OpenAI-compatible server (``python -m llama_cpp.server``, same
arguments), loading its model as our engine does (``llama_cpu``): without AMX buffers
where they crash, so the tests that use it as a real peer run on every CPU."""

import runpy

from skills.inference.engines.llama_cpu import use_everywhere

use_everywhere()
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
