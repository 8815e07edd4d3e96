"""The README followed literally by a newcomer: its Install section's commands, run one by
one in a fresh virtualenv (a checkout, a git URL, a wheel, the Sentry extra, then the
handler package), the example package's install line, and then its first handler: the
README's `myapp/jobs.py` and entry point as a package, its `worker.toml`, and its
`check`, `run` and `put` commands against a real beanstalkd.

Only what cannot be literal is changed, and said where: paths (`/path/to/tubeworker` is a
copy of this checkout; the git URL is a `git+file://` clone of it), the server's address,
and the mailer's URL (a local HTTP server: no test reaches anything but loopback)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import greenstalk
import pytest

from tests.e2e.test_install import clean_env
from tests.support.beanstalkd import BeanstalkdProcess, free_port
from tests.support.docs import Block, block, blocks
from tests.support.process import REPO
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

GIT_URL = "git+https://git.example.com/you/tubeworker.git@main"
MAILER_URL = "https://mailer.example/send"
_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", ".typecheck",
    ".hypothesis",
)  # fmt: skip


def readme_block(language: str, containing: str) -> Block:
    (found,) = [
        b for b in blocks(REPO / "README.md") if b.language == language and containing in b.code
    ]
    return found


class _Mailer(BaseHTTPRequestHandler):
    posts: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        _Mailer.posts.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@dataclass
class Newcomer:
    """A fresh virtualenv where the Install section was followed, and its working folder."""

    venv: Path
    workdir: Path
    src: Path  # /path/to/tubeworker
    ran: list[str]  # the Install section's lines, as run
    mailer: str

    def tool(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=clean_env(**env),
            timeout=600,
        )


def checkout_copy(root: Path) -> Path:
    """This checkout as a user has it (a copy, and a git repository for the git URL)."""
    src = root / "tubeworker"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "checkout"]):
        subprocess.run([*git, *args], check=True, capture_output=True, timeout=120)
    return src


def myapp_package(workdir: Path, mailer: str) -> Path:
    """The README's handler and entry point, as the package `./myapp`."""
    package = workdir / "myapp"
    (package / "myapp").mkdir(parents=True)
    (package / "myapp" / "__init__.py").write_text("")
    jobs = readme_block("python", "# myapp/jobs.py").code
    assert MAILER_URL in jobs
    (package / "myapp" / "jobs.py").write_text(jobs.replace(MAILER_URL, mailer))
    entry_points = readme_block("toml", '[project.entry-points."tubeworker.handlers"]').code
    (package / "pyproject.toml").write_text(
        '[project]\nname = "myapp"\nversion = "0.1"\n\n' + entry_points
    )
    return package


def as_run(line: str, newcomer: Newcomer) -> list[str]:
    """One of the Install section's lines, with the newcomer's paths."""
    words = shlex.split(line, comments=True)
    out: list[str] = []
    for word in words:
        if word == "pip":
            out += [newcomer.tool("python"), "-m", "pip"]
        elif word == "tubeworker":
            out.append(newcomer.tool("tubeworker"))
        elif word == f"tubeworker @ {GIT_URL}":
            out.append(f"tubeworker @ git+file://localhost{newcomer.src}@main")  # pip: a host
        elif word.startswith("/path/to/tubeworker"):
            out.append(str(newcomer.src) + word.removeprefix("/path/to/tubeworker"))
        elif "*" in word:
            (match,) = newcomer.workdir.glob(word)
            out.append(str(match))
        else:
            out.append(word)
    return out


def installs_tubeworker(line: str) -> bool:
    return line.startswith("pip install") and "tubeworker" in line.split("#")[0]


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Newcomer]:
    root = tmp_path_factory.mktemp("newcomer")
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Mailer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        workdir = root / "app"
        workdir.mkdir()
        mailer = f"http://127.0.0.1:{server.server_address[1]}/send"
        myapp_package(workdir, mailer)
        env = root / "venv"
        venv.create(env, with_pip=True)
        person = Newcomer(env, workdir, checkout_copy(root), [], mailer)
        for line in readme_block("sh", "pip install /path/to/tubeworker").code.splitlines():
            if installs_tubeworker(line):  # each way must work on its own
                person.run(
                    [person.tool("python"), "-m", "pip", "uninstall", "-q", "-y", "tubeworker"]
                )
            argv = as_run(line, person)
            result = person.run(argv)
            assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
            person.ran.append(line)
            if installs_tubeworker(line):
                version = person.run([person.tool("tubeworker"), "--version"])
                assert version.stdout.startswith("tubeworker "), (line, version.stderr)
        yield person
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_install_section_works_as_written(newcomer: Newcomer) -> None:
    assert len(newcomer.ran) == 7  # every line of the block ran, in order
    listed = newcomer.run([newcomer.tool("tubeworker"), "handlers"])
    assert listed.returncode == 0, listed.stderr
    assert "send-welcome" in listed.stdout
    assert "myapp" in listed.stdout
    sentry = newcomer.run([newcomer.tool("python"), "-c", "import sentry_sdk"])
    assert sentry.returncode == 0, "the [sentry] extra brought sentry-sdk"


def test_the_example_package_installs_as_its_readme_says(newcomer: Newcomer) -> None:
    # examples/hello-handlers/README.md's block, its one pip line.
    found = block("examples/hello-handlers/README.md", "pip install . ./examples/hello-handlers")
    (line,) = [line for line in found.code.splitlines() if line.startswith("pip install")]
    # Its README is read at the root of a tubeworker checkout: run it in our copy.
    argv = [newcomer.tool("python"), "-m", "pip", *shlex.split(line, comments=True)[1:]]
    result = subprocess.run(
        argv, capture_output=True, text=True, cwd=newcomer.src, env=clean_env(), timeout=600
    )
    assert result.returncode == 0, result.stderr
    listed = newcomer.run([newcomer.tool("tubeworker"), "handlers"])
    assert "hello.greet" in listed.stdout, listed.stdout


def test_the_first_handler_runs_as_the_readme_says(newcomer: Newcomer) -> None:
    config = readme_block("toml", "[worker]").code
    commands = readme_block("sh", "tubeworker check -c worker.toml").code.splitlines()
    with BeanstalkdProcess() as beanstalkd:
        host, port = beanstalkd.address.rsplit(":", 1)
        (newcomer.workdir / "worker.toml").write_text(
            config.replace("127.0.0.1:11300", beanstalkd.address)
        )
        check, run, put = (as_run(line, newcomer) for line in commands)
        checked = newcomer.run(check)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        log = newcomer.workdir / "daemon.log"
        with open(log, "wb") as out:
            daemon = subprocess.Popen(
                run,
                cwd=newcomer.workdir,
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # `tubeworker put` reads the server from the environment (the README's default
            # is 127.0.0.1:11300; ours is on a free port).
            put_result = newcomer.run(put, TUBEWORKER_SERVERS=beanstalkd.address)
            assert put_result.returncode == 0, put_result.stderr

            def done() -> bool:
                lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
                return any(e.get("event") == "job done" for e in lines)

            wait_until_sync(done, timeout=30, what="the README's job done")
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
            try:
                code = daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=10)
                raise
        assert code == 0, log.read_text()
        assert json.loads(_Mailer.posts[-1]) == {"user": 42}
        with greenstalk.Client((host, int(port)), use="audit", watch="audit") as client:
            audit = client.reserve(timeout=5)
            assert json.loads(audit.body) == {"task": "audit", "payload": {"user": 42}}


def test_the_example_tests_run_as_its_readme_says(newcomer: Newcomer, tmp_path: Path) -> None:
    # examples/hello-handlers/README.md: "`pip install -e '.[test]'`, then `pytest`", in its
    # folder (a copy: an editable install writes beside the sources).
    readme = (REPO / "examples" / "hello-handlers" / "README.md").read_text(encoding="utf-8")
    assert "(`pip install -e '.[test]'`,\n  then `pytest`)" in readme
    example = tmp_path / "hello-handlers"
    shutil.copytree(REPO / "examples" / "hello-handlers", example, ignore=_IGNORE)
    pip = [newcomer.tool("python"), "-m", "pip"]
    for argv in ([*pip, "install", "-e", ".[test]"], [newcomer.tool("pytest")]):
        result = subprocess.run(
            argv, capture_output=True, text=True, cwd=example, env=clean_env(), timeout=600
        )
        assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
