"""A Model Spec: a Markdown/text file, with its `##` sections and numbered rules parsed
out for rule-by-rule generation, and the system block that carries it in every prompt."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

from msm_jax.errors import UserError

RULE_LINE = re.compile(r"^\s*(\d+)[.)]\s+(\S.*)$")
HEADING = re.compile(r"^#{2,3}\s+(\S.*)$")

SYSTEM_TEMPLATE = """You write training data about the Model Spec below: the rules an AI assistant
follows and the values that explain them. Stay faithful to it: never invent rules it
does not state, and never contradict it.

<model_spec name="{name}">
{text}
</model_spec>"""


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    text: str
    sections: tuple[str, ...]
    rules: tuple[str, ...]

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def system_prompt(self) -> str:
        """The block every prompt starts with; identical across stages, so it is cached."""
        return SYSTEM_TEMPLATE.format(name=self.name, text=self.text.strip())


def parse_rules(text: str) -> tuple[str, ...]:
    """Numbered rules (`1. ...`), each with its indented continuation lines."""
    rules: list[list[str]] = []
    for line in text.splitlines():
        match = RULE_LINE.match(line)
        if match:
            rules.append([match.group(2).strip()])
        elif rules and line.startswith((" ", "\t")) and line.strip():
            rules[-1].append(line.strip())
        elif rules and rules[-1] and not line.strip():
            rules.append([])   # a blank line ends the rule
    return tuple(" ".join(r) for r in rules if r)


def load_spec(path: str | Path) -> Spec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read the spec: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: the spec is not UTF-8 text") from None
    if len(text.split()) < 20:
        raise UserError(f"{path}: the spec has fewer than 20 words; is this the right file?")
    sections = tuple(m.group(1).strip() for m in map(HEADING.match, text.splitlines()) if m)
    return Spec(name=path.stem, text=text, sections=sections, rules=parse_rules(text))
