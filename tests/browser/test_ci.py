"""CI runs exactly the README's test command, and does not pass when no tests were collected."""

import re
import stat
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2 and all(c.startswith("./scripts/setup.sh && ") for c in cmds)
    ci = ROOT / ".ci" / "run"
    assert ci.stat().st_mode & stat.S_IXUSR
    assert cmds[1] in ci.read_text().splitlines()


def test_ci_treats_no_tests_collected_as_failure():
    text = (ROOT / ".ci" / "run").read_text()
    assert re.search(r'"\$rc" -eq 5 \]; then.*?exit 1', text, re.S)
