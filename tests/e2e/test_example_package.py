"""A third-party handler package end to end: examples/hello-handlers is built and installed
into the fresh virtualenv that holds tubeworker's wheel (the session's ``installed``, shared
with test_install.py), `tubeworker handlers` there discovers its entry point, and
`tubeworker run` there runs its handler against a real beanstalkd. Its own tests, written
with tubeworker.testing, pass too."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import greenstalk
import pytest

from tests.e2e.test_install import clean_env
from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.process import REPO
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "hello-handlers"


def example_copy(tmp_path: Path) -> Path:
    """The example's sources outside the work tree: building or testing them leaves
    build/, *.egg-info and __pycache__ behind."""
    copy = tmp_path / "hello-handlers"
    shutil.copytree(
        EXAMPLE, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    return copy


@pytest.fixture
def with_example(installed: Path, tmp_path: Path) -> Iterator[Path]:
    """The shared virtualenv with hello-handlers installed too, for this test only."""
    pip = [str(installed / "bin" / "python"), "-m", "pip"]
    install = subprocess.run(
        [*pip, "install", "--quiet", str(example_copy(tmp_path))],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    try:
        yield installed
    finally:
        subprocess.run(
            [*pip, "uninstall", "--quiet", "--yes", "hello-handlers"],
            capture_output=True,
            env=clean_env(),
            timeout=120,
        )


def test_given_the_example_package_then_its_own_tests_pass(tmp_path: Path) -> None:
    copy = example_copy(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
        cwd=copy,
        env=clean_env(PYTHONPATH=str(copy / "src")),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_given_the_example_installed_then_discovered_and_run_by_the_daemon(
    with_example: Path, beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    tubeworker = str(with_example / "bin" / "tubeworker")
    listed = subprocess.run(
        [tubeworker, "handlers"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    (line,) = [line for line in listed.stdout.splitlines() if line.startswith("hello.greet ")]
    assert line.split()[:3] == ["hello.greet", "hello_handlers.jobs:greet", "hello-handlers"]
    assert "max_attempts=3" in line
    assert "BROKEN" not in listed.stdout

    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="hello") as client:
        job_id = client.put(json.dumps({"task": "hello.greet", "payload": {"name": "Ada"}}))
    out, err = tmp_path / "daemon.out", tmp_path / "daemon.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        daemon = subprocess.Popen(
            [tubeworker, "run", "--server", beanstalkd.address, "--tube", "hello"],
            cwd=tmp_path,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="greetings") as reader:

            def greeted() -> bool:
                assert daemon.poll() is None, err.read_text()
                try:
                    reader.peek_ready()
                except greenstalk.NotFoundError:
                    return False
                return True

            wait_until_sync(greeted, timeout=30, what="the example's handler to put a greeting")
            greeting = json.loads(reader.peek_ready().body)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=20) == 0, err.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
    assert greeting == {"greeting": "Hello, Ada!", "for_job": job_id}
    events = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    (done,) = [e for e in events if e.get("event") == "job done"]
    assert (done["job_id"], done["handler"]) == (job_id, "hello.greet")
    assert any(e.get("event") == "greeted" and e.get("greeting") == "Hello, Ada!" for e in events)
    assert "Traceback" not in err.read_text()
