"""Every shell command the README shows, run as written, in README order, so the manual
cannot drift from the CLI.

A command is a line of a fenced ```bash/sh/shell/console block or of an indented (4-space)
block, with `\\` continuations joined. A command that cannot run here (offline, on CPU, in
well under a minute) says so at its end: `# needs: ANTHROPIC_API_KEY`, `# needs: TPU`,
`# needs: network`, `# needs: a Hugging Face model folder`, `# needs: minutes on CPU`; it is
skipped, and any other `needs:` reason is an error. `make test` is this suite; `make demo`
(minutes on CPU) runs here as `msm demo --dry-run`, the cut-down demo runs for real in
tests/test_experiment_demo.py. The commands run in a scratch folder that mirrors the
repository (links to its files), so their `runs/...` outputs never land in the checkout.
"""

import dataclasses
import os
import re
import shlex
from pathlib import Path

import pytest

from msm_jax.cli import UsageError, build_parser, main, parse

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SHELL_FENCES = ("bash", "sh", "shell", "console")
NEEDS = ("ANTHROPIC_API_KEY", "TPU", "network", "a Hugging Face model", "minutes on CPU")
SPECIAL = {"make demo": ["demo", "--dry-run"]}  # msm argv run in place of a `make` target
_NEEDS = re.compile(r"#\s*needs:\s*(.+?)\s*$")


@dataclasses.dataclass
class Command:
    line: int  # README line of the command's first line
    text: str  # continuations joined, comments kept

    @property
    def needs(self):
        m = _NEEDS.search(self.text)
        return m.group(1) if m else None

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)

    def where(self) -> str:
        return f"README.md:{self.line}: `{self.text.strip()}`"


def blocks(lines: list[str]):
    """(first line number, [lines]) of each shell block: fenced with a shell language, or
    indented by 4 spaces after a blank line or a heading, outside any fence."""
    i, n = 0, len(lines)
    while i < n:
        fence = re.match(r"^\s*```\s*(\w*)", lines[i])
        if fence:
            end = next((j for j in range(i + 1, n) if lines[j].strip().startswith("```")), n)
            if fence.group(1).lower() in SHELL_FENCES:
                yield i + 2, lines[i + 1:end]
            i = end + 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (
                i == 0 or not lines[i - 1].strip() or lines[i - 1].startswith("#")):
            end = i
            while end < n and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            yield i + 1, [line[4:] for line in lines[i:end]]
            i = end
            continue
        i += 1


def readme_commands(text: str) -> list[Command]:
    commands = []
    for first, body in blocks(text.splitlines()):
        pending = None
        for k, raw in enumerate(body):
            line = raw.rstrip()
            if pending is None:
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                pending = Command(first + k, "")
            pending.text += (" " if pending.text else "") + line.rstrip().rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(pending)
                pending = None
        if pending is not None:
            commands.append(pending)
    return commands


COMMANDS = readme_commands(README.read_text())


def plan(cmd: Command) -> str:
    """'skip: why', 'msm', 'special', or an error naming the README line."""
    if cmd.needs is not None:
        if not cmd.needs.startswith(NEEDS):
            raise AssertionError(f"{cmd.where()}: unknown `# needs:` reason {cmd.needs!r}; use one of {NEEDS}")
        return f"skip: needs {cmd.needs}"
    argv = cmd.argv
    if argv == ["make", "test"]:
        return "skip: the test suite itself"
    if " ".join(argv) in SPECIAL:
        return "special"
    if argv and argv[0] == "msm":
        return "msm"
    raise AssertionError(f"{cmd.where()}: not an `msm` command this test can run offline; "
                         f"end it with `# needs: ...` ({', '.join(NEEDS)}) if it cannot")


def test_readme_has_command_blocks_and_every_command_is_runnable_or_marked():
    assert len(COMMANDS) >= 20
    plans = {cmd.line: plan(cmd) for cmd in COMMANDS}
    runnable = [line for line, p in plans.items() if p == "msm"]
    assert len(runnable) >= 10, plans


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.needs is None and c.argv and c.argv[0] == "msm"],
                         ids=lambda c: f"README.md:{c.line}")
def test_readme_msm_command_parses(cmd):
    try:
        parse(build_parser(), cmd.argv[1:])
    except UsageError as e:
        pytest.fail(f"{cmd.where()}: {e}")


def test_extraction_joins_continuations_and_reads_markers():
    text = ("intro\n\n    msm run a.yaml out=x \\\n        --launcher tpu   # needs: TPU\n    msm train b.yaml\n\n"
            "```bash\nmake demo   # the demo\n```\n```\nnot a command\n```\n")
    cmds = readme_commands(text)
    assert [(c.line, c.argv, c.needs) for c in cmds] == [
        (3, ["msm", "run", "a.yaml", "out=x", "--launcher", "tpu"], "TPU"),
        (5, ["msm", "train", "b.yaml"], None),
        (8, ["make", "demo"], None)]


def mirror_repo(dest: Path) -> None:
    """A folder whose entries link to the repository's, minus outputs, for commands that
    write `runs/...` relative to where they run."""
    for entry in REPO.iterdir():
        if entry.name not in ("runs", ".git", ".venv") and not entry.name.startswith(".pytest"):
            (dest / entry.name).symlink_to(entry)


@pytest.mark.slow
def test_every_readme_command_runs_in_order(tmp_path, monkeypatch, capsys):
    """The tour of the README on the shipped demo corpora: tokenizer, shards, two training
    stages, export and import with parity checks, the value eval and its report. Slow: the
    JAX compiles of the two training stages and the eval dominate (330 s measured on 2 cores
    shared with ~6 other busy processes; about 2 min of CPU)."""
    mirror_repo(tmp_path)
    env_key = os.environ.pop("ANTHROPIC_API_KEY", None)  # nothing here may reach the paid API
    ran, skipped = [], []
    try:
        for cmd in COMMANDS:
            action = plan(cmd)
            if action.startswith("skip"):
                skipped.append((cmd.line, action))
                continue
            monkeypatch.chdir(tmp_path)
            argv = cmd.argv[1:] if action == "msm" else SPECIAL[" ".join(cmd.argv)]
            capsys.readouterr()
            status = main(argv)
            err = capsys.readouterr().err
            assert status == 0, f"{cmd.where()} exited {status}:\n{err[-2000:]}"
            ran.append(cmd.line)
    finally:
        if env_key is not None:
            os.environ["ANTHROPIC_API_KEY"] = env_key
    assert len(ran) >= 10 and (tmp_path / "runs" / "tour" / "report" / "report.md").is_file()
    print(f"ran {len(ran)} README commands, skipped {len(skipped)}: {skipped}")
