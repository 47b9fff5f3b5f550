import os
import sys

# Tests import shared fixtures (hf_fixtures, fake_anthropic) by module name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Files holding a slow test run first (order within a file unchanged): under
    `pytest -n 2 --dist loadfile` (make test) the long files start early instead of
    leaving one worker alone at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
