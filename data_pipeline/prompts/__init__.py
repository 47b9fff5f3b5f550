"""Prompt templates, one file per stage (`$name` placeholders, string.Template syntax).
The first line of each, `TASK: <name>`, names the stage for humans and for the demo
author tool."""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def template(name: str) -> string.Template:
    return string.Template((PROMPTS_DIR / f"{name}.txt").read_text(encoding="utf-8"))


def render(name: str, **values) -> str:
    """The prompt `name` with every placeholder filled (a missing one is an error)."""
    return template(name).substitute(**{k: str(v) for k, v in values.items()})


def task_of(prompt: str) -> str:
    """The stage name a rendered prompt starts with."""
    first = prompt.split("\n", 1)[0]
    return first[len("TASK: "):].strip() if first.startswith("TASK: ") else ""
