"""The repository keeps its promises: CI runs the README's test command; committed policies are current."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

from sidecar.config import Settings
from sidecar.policies import render

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    return re.findall(r"```sh\n((?:python3 -m venv |tests/run).*)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    run_cmd, test_cmd, fast_cmd = readme_commands()
    assert run_cmd.endswith("oauth-sidecar dev") and test_cmd == "tests/run"
    assert fast_cmd.endswith("pytest -m unit")  # the contributing section's fast layer
    assert test_cmd in (ROOT / ".ci" / "run").read_text().splitlines()
    assert (ROOT / "tests" / "run").read_text().rstrip().endswith('exec .venv/bin/pytest "$@"')


def test_the_test_command_names_the_packages_a_contributor_without_root_lacks(tmp_path):
    """tests/run installs missing Debian packages as root; anyone else is told which to install."""
    for tool in ("dirname", "bash"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    (tmp_path / "id").write_text("#!/bin/sh\necho 1000\n")  # not root
    (tmp_path / "id").chmod(0o755)
    told = subprocess.run(
        [shutil.which("bash"), str(ROOT / "tests" / "run")], env={"PATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert told.returncode == 1
    assert "need these Debian packages: " in told.stderr and "buildah debootstrap faketime nodejs npm" in told.stderr
    assert "apt-get install" in told.stderr and not (tmp_path / ".venv").exists()


def test_committed_policies_match_the_default_settings():
    rendered = render(Settings())
    committed = {p.stem: p.read_text() for p in (ROOT / "policies").glob("*.hcl")}
    assert committed == rendered


def test_the_code_passes_the_lint_security_rules_included():
    """ruff with the bandit (S) rules: a finding fails the tests, so CI runs the lint too."""
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
