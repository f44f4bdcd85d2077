"""The README's quick start as a new user follows it: `oauth-sidecar dev` started as a process, a
first secret connected to the built-in demo provider in the browser, refreshed, and read with the
`bao kv get` line the banner prints."""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from sidecar.devvault import free_port

BIN = Path(sys.executable).parent


@pytest.fixture
def dev(tmp_path):
    """`oauth-sidecar dev` on a free port, as the README runs it; its banner, then Ctrl-C."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "SIDECAR_"))},
        "SIDECAR_BIND": f"127.0.0.1:{port}",
        "HOME": str(tmp_path),
        "PATH": f"{BIN}:{os.environ['PATH']}",  # as after `source .venv/bin/activate`
    }
    proc = subprocess.Popen(
        [str(BIN / "oauth-sidecar"), "dev"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    banner = ""
    while "Press Ctrl-C" not in banner:
        line = proc.stdout.readline()
        assert line, f"dev exited early: {proc.stderr.read()}"
        banner += line
    seen: list[str] = []  # tokens the test read, which the sidecar's output must never show
    yield f"http://127.0.0.1:{port}", banner, env, seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert seen and not any(token in out + err for token in seen)


def read_line(banner: str) -> str:
    """The banner's line that reads the first secret's token with the reader token."""
    (line,) = re.findall(r"^  (VAULT_ADDR=\S+ VAULT_TOKEN=\S+ \S+ kv get -field=access_token \S+/first)$", banner, re.M)
    return line


@pytest.mark.process
def test_the_quick_start_connects_refreshes_and_reads_a_first_secret(dev, page: Page, tmp_path):
    base, banner, env, seen = dev
    login_token = re.search(r"^Login token\s+(\S+)", banner, re.M)[1]
    demo_url = re.search(r"^Demo provider\s+(\S+)", banner, re.M)[1]
    assert f"1. Open {base}/settings" in banner and "provider demo" in banner

    page.goto(base)  # the front door leads to Settings, which asks for a token
    expect(page).to_have_url(f"{base}/settings/login")
    page.get_by_label("Vault token").fill(login_token)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Add OAuth 2.0 provider secret").click()
    page.get_by_label("Name").fill("first")
    page.get_by_label("Provider").select_option("demo")
    page.get_by_role("button", name="Continue").click()
    expect(page).to_have_url(re.compile(re.escape(demo_url)))  # the demo provider's own login page
    page.get_by_label("User name").fill("ada")
    page.get_by_role("button", name="Log in and allow").click()
    expect(page.get_by_role("status").last).to_have_text("first is connected to demo.")
    expect(page.get_by_role("row", name="first").get_by_text("active")).to_be_visible()
    page.screenshot(path=str(tmp_path / "connected.png"), full_page=True)

    def read() -> str:
        done = subprocess.run(["bash", "-c", read_line(banner)], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    first = read()
    seen.append(first)
    assert requests.get(f"{demo_url}/userinfo", headers={"Authorization": f"Bearer {first}"}).status_code == 200
    page.get_by_role("button", name="Refresh first now").click()
    expect(page.get_by_role("status")).to_have_text("first refreshed.")
    second = read()
    seen.append(second)
    assert second != first  # a new token, which the demo provider accepts, in place of the old one
    assert requests.get(f"{demo_url}/userinfo", headers={"Authorization": f"Bearer {second}"}).status_code == 200
