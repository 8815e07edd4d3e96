"""tubeworker as a user installs it: a wheel in a fresh virtualenv, next to an application
that has its own `worker.py` and `handlers/` (the names tubeworker's folders have)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import greenstalk
import pytest

from tests.support.beanstalkd import BeanstalkdProcess
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.slow


def user_project(root: Path, server: BeanstalkdProcess) -> Path:
    """An application with a worker.py and a handlers/ package of its own."""
    project = root / "app"
    (project / "handlers").mkdir(parents=True)
    (project / "worker.py").write_text("print('the application worker module')\n")
    (project / "handlers" / "__init__.py").write_text("")
    (project / "handlers" / "jobs.py").write_text(
        "import os\n"
        "from tubeworker import Job, handler\n\n\n"
        "@handler(max_attempts=2)\n"
        "async def resize(job: Job) -> None:\n"
        "    with open(os.environ['APP_OUT'], 'a') as f:\n"
        "        f.write(job.body.decode() + '\\n')\n"
    )
    (project / "worker.toml").write_text(
        "[worker]\n"
        f'servers = ["{server.address}"]\n'
        "[logging]\n"
        'format = "json"\n'
        "[handlers]\n"
        '"app.resize" = "handlers.jobs:resize"\n'
        "[[pool]]\n"
        'tubes = ["app"]\n'
        "concurrency = 4\n"
        'handler = "app.resize"\n'
    )
    return project


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NOTIFY_SOCKET")}
    return {**env, **extra}


def test_given_the_wheel_then_only_the_tubeworker_package_is_installed(installed: Path) -> None:
    site = next((installed / "lib").glob("python3*/site-packages"))
    assert (site / "tubeworker" / "__init__.py").is_file()
    assert (site / "tubeworker" / "handlers" / "demo.py").is_file()
    assert not (site / "worker").exists()
    assert not (site / "handlers").exists()
    python = str(installed / "bin" / "python")
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u, tubeworker;"
            "print(tubeworker.__file__, u.find_spec('worker'), u.find_spec('handlers'))",
        ],
        capture_output=True,
        text=True,
        cwd=installed,
        env=clean_env(),
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split()[1:] == ["None", "None"]
    version = subprocess.run(
        [python, "-m", "tubeworker", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.startswith("tubeworker ")


def test_given_an_app_with_its_own_worker_and_handlers_then_its_handlers_run(
    installed: Path, beanstalkd: BeanstalkdProcess, tmp_path: Path
) -> None:
    project = user_project(tmp_path, beanstalkd)
    tubeworker = str(installed / "bin" / "tubeworker")
    # From anywhere, with no PYTHONPATH: [handlers] modules are found beside the config.
    check = subprocess.run(
        [tubeworker, "check", "-c", str(project / "worker.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    assert "max_attempts 2 (the handler's own)" in check.stdout
    listed = subprocess.run(
        [tubeworker, "handlers", "-c", str(project / "worker.toml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert "app.resize" in listed.stdout
    assert "demo.echo" in listed.stdout

    with greenstalk.Client((beanstalkd.host, beanstalkd.port), use="app") as client:
        for n in range(5):
            client.put(f"photo-{n}")
    out = tmp_path / "resized.txt"
    # As the issue saw it: the app's folder on PYTHONPATH, its worker.py and handlers/ first.
    daemon = subprocess.Popen(
        [tubeworker, "run", "-c", "worker.toml"],
        cwd=project,
        env=clean_env(PYTHONPATH=".", APP_OUT=str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def all_done() -> bool:
            assert daemon.poll() is None, daemon.communicate()[1]
            return out.exists() and len(out.read_text().splitlines()) == 5

        wait_until_sync(all_done, timeout=30, what="the app's handler to run 5 jobs")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            _, stderr = daemon.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            _, stderr = daemon.communicate(timeout=5)
    assert daemon.returncode == 0, stderr
    assert sorted(out.read_text().splitlines()) == [f"photo-{n}" for n in range(5)]
