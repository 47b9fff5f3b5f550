import os
import sys

# Tests import shared fixtures (hf_fixtures, fake_anthropic) by module name.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
