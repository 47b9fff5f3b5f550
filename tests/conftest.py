import os
import sys

# Tests import shared fixtures (hf_fixtures, fake_anthropic) by module name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests compile hundreds of tiny programs and run each a few times: with XLA's cheapest backend
# optimisation they compile faster (test_model.py + test_sampling.py together: 170 s -> 131 s). Results
# may differ in the last float bits from an optimised build; tests compare within one setting or with
# tolerances. Set before JAX is imported; an XLA_FLAGS of the caller's own wins. Worker
# subprocesses get the same flags from train_fixtures.worker_env.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")


def pytest_collection_modifyitems(config, items):
    """Files holding a slow test run first (order within a file unchanged): under
    `pytest -n 2 --dist loadfile` (make test) the long files start early instead of
    leaving one worker alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
