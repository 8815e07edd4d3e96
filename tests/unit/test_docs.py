"""Every code block of the README, docs/ and the examples' READMEs is run by a test, or says
why not (a shell session that needs a cluster, a listing). A new block without an entry
here fails; an entry naming a test that does not exist, or that does not read the block it
claims to run, fails too. The blocks that need no server run here."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from tests.support.docs import REPO, Block, all_blocks, block, blocks, run_block
from tubeworker.config import load_config
from tubeworker.envelope import read_envelope
from tubeworker.testing import run

Key = tuple[str, str]
HERE = "tests/unit/test_docs.py"
INSTALL = "tests/e2e/test_install_docs.py"
HTTP_JSON = (
    '{"task": "http.request", "payload": {"method": "POST", "url": "https://hooks.example/orders",'
)
WS_JSON = '{"task": "websocket.send", "payload": {"url": "wss://push.example/socket",'
DASHBOARD = (
    "tubeworker dashboard --server 127.0.0.1:11300 --token-file /etc/tubeworker/control-token \\"
)
RUN_FLAGS = ".venv/bin/tubeworker run --server 127.0.0.1:11300 --tube emails --tube 'tenant-*' --concurrency 50"  # noqa: E501

#: The test that runs each block as written (it reads the block from the docs file). A
#: block is named by its file and its first line, up to a gap of two spaces.
SPOOL_TESTS = "tests/integration/test_spool.py"
CONTRACTS = "tests/e2e/test_contracts.py"
RUN_BY: dict[Key, str] = {
    (
        "README.md",
        "pip install /path/to/tubeworker",
    ): f"{INSTALL}::test_the_install_section_works_as_written",
    ("README.md", "# myapp/jobs.py"): f"{INSTALL}::test_the_first_handler_runs_as_the_readme_says",
    (
        "README.md",
        '[project.entry-points."tubeworker.handlers"]',
    ): f"{INSTALL}::test_the_install_section_works_as_written",
    (
        "README.md",
        "# tests/test_jobs.py",
    ): f"{HERE}::test_the_handler_examples_pass_their_own_tests",
    ("README.md", "[worker]"): f"{INSTALL}::test_the_first_handler_runs_as_the_readme_says",
    (
        "README.md",
        "# myapp/welcome.py",
    ): f"{CONTRACTS}::test_given_malformed_payloads_then_each_is_buried_once_with_its_field_named",
    (
        "docs/security.md",
        "[security]",
    ): "tests/e2e/test_signed_jobs.py::test_given_required_signatures_then_only_signed_jobs_run",
    (
        "docs/security.md",
        "<?php",
    ): "tests/e2e/test_signed_jobs.py::test_given_required_signatures_then_only_signed_jobs_run",
    (
        "docs/workflows.md",
        "# myapp/imports.py",
    ): "tests/e2e/test_chains.py::test_given_kills_then_every_step_runs_at_least_once_and_in_order",
    (
        "docs/workflows.md",
        "# the app: an import split into chunks, then a summary",
    ): "tests/e2e/test_chains.py::test_given_kills_then_every_step_runs_at_least_once_and_in_order",
    (
        "README.md",
        "# an import in chunks, and one summary once every chunk is done",
    ): "tests/e2e/test_batches.py::test_given_the_readme_batch_then_its_summary_runs_once_after_its_ten_chunks",  # noqa: E501
    (
        "docs/workflows.md",
        "# myapp/batch_import.py",
    ): "tests/e2e/test_batches.py::test_given_the_docs_import_then_the_summary_runs_once_after_every_chunk",  # noqa: E501
    (
        "docs/workflows.md",
        "# the app: an import in chunks, and a summary once they all ended",
    ): "tests/e2e/test_batches.py::test_given_the_docs_import_then_the_summary_runs_once_after_every_chunk",  # noqa: E501
    (
        "docs/unique.md",
        "# myapp/receipts.py",
    ): "tests/e2e/test_idempotency.py::test_given_an_outbox_and_an_idempotent_handler_then_each_receipt_is_mailed_once",  # noqa: E501
    (
        "docs/unique.md",
        "# myapp/orders.py (the web app)",
    ): "tests/e2e/test_idempotency.py::test_given_an_outbox_and_an_idempotent_handler_then_each_receipt_is_mailed_once",  # noqa: E501
    (
        "docs/unique.md",
        "# myapp/orders.py",
    ): "tests/e2e/test_unique.py::test_given_two_daemons_then_no_key_ever_runs_twice_at_once",
    (
        "docs/contracts.md",
        "# myapp/welcome.py, version 2",
    ): f"{CONTRACTS}::test_given_a_rolling_deploy_then_no_job_fails_and_each_runs_once_where_understood",  # noqa: E501
    (
        "README.md",
        "tubeworker check -c worker.toml",
    ): f"{INSTALL}::test_the_first_handler_runs_as_the_readme_says",
    (
        "examples/hello-handlers/README.md",
        "pip install . ./examples/hello-handlers",
    ): f"{INSTALL}::test_the_example_package_installs_as_its_readme_says",
    (
        "docs/handlers.md",
        "# myapp/jobs.py",
    ): f"{HERE}::test_the_full_handler_example_runs_under_the_test_kit",
    (
        "docs/handlers.md",
        "# tests/test_jobs.py",
    ): f"{HERE}::test_the_handler_examples_pass_their_own_tests",
    (
        "docs/handlers.md",
        '[project.entry-points."tubeworker.handlers"]',
    ): f"{HERE}::test_the_toml_blocks_are_valid_config",
    (
        "docs/handlers.md",
        '{"task": "send-welcome", "payload": {"user_id": 42}}',
    ): f"{HERE}::test_the_envelopes_shown_are_envelopes",
    ("docs/handlers.md", HTTP_JSON): f"{HERE}::test_the_envelopes_shown_are_envelopes",
    ("docs/handlers.md", WS_JSON): f"{HERE}::test_the_envelopes_shown_are_envelopes",
    (
        "docs/handlers.md",
        '[settings."http.request"]',
    ): f"{HERE}::test_the_toml_blocks_are_valid_config",
    ("docs/handlers.md", "[middleware]"): f"{HERE}::test_the_toml_blocks_are_valid_config",
    ("docs/configuration.md", "[worker]"): f"{HERE}::test_the_toml_blocks_are_valid_config",
    ("docs/flow-control.md", "[api.partner]"): f"{HERE}::test_the_toml_blocks_are_valid_config",
    ("docs/schedules.md", "[[schedule]]"): f"{HERE}::test_the_toml_blocks_are_valid_config",
    (
        "docs/producing.md",
        "from tubeworker.producer import Producer",
    ): f"{SPOOL_TESTS}::test_the_docs_spool_example_and_commands_run_as_written",
    (
        "docs/producing.md",
        "tubeworker spool status /var/lib/myapp/tubeworker-spool.db",
    ): f"{SPOOL_TESTS}::test_the_docs_spool_example_and_commands_run_as_written",
    ("docs/schedules.md", "[[heartbeat]]"): f"{HERE}::test_the_toml_blocks_are_valid_config",
    ("README.md", "[[schedule]]"): f"{HERE}::test_the_toml_blocks_are_valid_config",
    (
        "docs/producing.md",
        "from tubeworker.producer import NoServerAvailable, Producer",
    ): "tests/integration/test_producer.py::test_readme_sync_example_in_a_web_app",
    (
        "docs/producing.md",
        "import trio",
    ): "tests/integration/test_producer.py::test_readme_async_example_in_trio",
    (
        "docs/producing.md",
        "from tubeworker import Job, handler",
    ): "tests/unit/test_producer.py::test_readme_handler_examples",
    (
        "docs/producing.md",
        "from tubeworker.producer import (",
    ): "tests/integration/test_producer.py::test_readme_errors_example",
    (
        "docs/architecture.md",
        "import trio",
    ): "tests/integration/test_client_beanstalkd.py::test_the_docs_protocol_client_example_runs",
}

#: Blocks no test runs literally, and why (and what covers them instead).
NOT_RUN: dict[Key, str] = {
    (
        "README.md",
        "make demo",
    ): "make test is what CI runs (.ci/run); make demo runs `tubeworker demo`, as tests/e2e/test_daemon_process.py does",  # noqa: E501
    (
        "README.md",
        "FROM python:3.11-slim",
    ): "no image is built (no registry, no network): its RUN line is the checkout install that tests/e2e/test_install_docs.py runs",  # noqa: E501
    (
        "docs/contracts.md",
        "payload of task 'send-welcome' is invalid: payload.user_id: input should be a valid integer, unable to parse string as an integer; payload.email: field required",  # noqa: E501
    ): "a reason as the log shows it: tests/e2e/test_contracts.py checks each field's words",
    (
        "docs/contracts.md",
        "from myapp.welcome import SendWelcome",
    ): "needs a beanstalkd on 11300: tests/e2e/test_contracts.py makes the same calls (register, enqueue a model, PayloadInvalid)",  # noqa: E501
    (
        "docs/security.md",
        'echo "k2026-12: $(head -c 32 /dev/urandom | base64)" > /etc/tubeworker/signing-keys',
    ): "writes into /etc: the tests make their keys files with the same format (tests/e2e/test_signed_jobs.py)",  # noqa: E501
    (
        "docs/security.md",
        'producer = Producer(servers, encryption_keys="/etc/myapp/encryption-keys")',
    ): "needs keys in /etc and a server: tests/e2e/test_job_secrets.py makes the same calls",
    (
        "docs/tls.md",
        "# a CA, kept off the servers once the certificates are made",
    ): "an operator's commands: tests/support/tls.py makes the tests' certificates with the same openssl calls",  # noqa: E501
    (
        "docs/tls.md",
        "[worker]",
    ): "needs a TLS server at bs.internal: tests/e2e/test_tls.py writes the same [tls] table",
    (
        "docs/tls.md",
        "kubectl create secret generic beanstalkd-tls \\",
    ): "needs a Kubernetes cluster: tests/e2e/test_tls_kubernetes.py checks the manifest and runs its stunnel config",  # noqa: E501
    (
        "docs/security.md",
        "tubeworker audit --since 1h",
    ): "a server on 11300: tests/e2e/test_audit.py runs tubeworker audit --json --since 1h",
    (
        "docs/admin.md",
        "tubeworker stats [TUBE...] [--json] [--watch]",
    ): "a listing of the commands: each is run by tests/e2e/test_admin_cli.py",
    (
        "docs/architecture.md",
        "worker/observe/",
    ): "a map of the folders, not code: tests/unit/test_layering.py checks the layers",
    (
        "docs/configuration.md",
        RUN_FLAGS,
    ): "commands against a beanstalkd on 11300: their flags run in tests/e2e/test_daemon_process.py and tests/e2e/test_admin_cli.py",  # noqa: E501
    (
        "docs/operations.md",
        "tubeworker check -c worker.toml",
    ): "needs a Kubernetes cluster: the manifests are checked by tests/e2e/test_deploy_kubernetes.py",  # noqa: E501
    (
        "docs/operations.md",
        "promtool check rules deploy/prometheus/alerts.yml",
    ): "what tests/e2e/test_deploy_prometheus.py runs (promtool check and test, a real Prometheus)",
    (
        "docs/operations.md",
        DASHBOARD,
    ): "needs daemons at those addresses: tests/browser/test_dashboard_readonly.py runs tubeworker dashboard --server",  # noqa: E501
}


def test_every_block_is_run_by_a_test_or_says_why() -> None:
    keys = {b.key for b in all_blocks()}
    assert sorted(keys - RUN_BY.keys() - NOT_RUN.keys()) == [], "blocks nobody runs"
    assert sorted((RUN_BY.keys() | NOT_RUN.keys()) - keys) == [], "entries for no block"
    assert RUN_BY.keys().isdisjoint(NOT_RUN.keys())


@pytest.mark.parametrize("key", sorted(RUN_BY), ids=lambda key: f"{key[0]}:{key[1][:30]}")
def test_each_named_test_exists_and_reads_its_block(key: Key) -> None:
    path, first_line = key
    test_file, name = RUN_BY[key].split("::")
    source = (REPO / test_file).read_text(encoding="utf-8")
    assert f"def {name}(" in source, f"{test_file} has no {name}"
    if test_file == HERE:
        return  # the tests below read the blocks by their keys
    # It reads the block from its file, by its first line.
    assert path in source or (path == "README.md" and "readme_block(" in source), test_file
    assert first_line in source, (test_file, first_line)


# --------------------------------------------------------------------------- blocks run here


def _write_handler_project(root: Path, tests: Block) -> Path:
    """The README's handler as a newcomer's project, with the given test file."""
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "jobs.py").write_text(block("README.md", "# myapp/jobs.py").code)
    (root / "tests").mkdir()
    (root / "tests" / "test_jobs.py").write_text(tests.code)
    (root / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    return root


@pytest.mark.parametrize("path", ["README.md", "docs/handlers.md"])
def test_the_handler_examples_pass_their_own_tests(path: str, tmp_path: Path) -> None:
    # As a newcomer runs them: pytest in the project's folder, the package beside it.
    tests = block(path, "# tests/test_jobs.py")
    project = _write_handler_project(tmp_path, tests)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = tests.code.count("\ndef test_") + tests.code.count("\nasync def test_")
    assert f"{count} passed" in result.stdout


def test_the_full_handler_example_runs_under_the_test_kit() -> None:
    done = run_block("docs/handlers.md", "# myapp/jobs.py")
    send_welcome = done["send_welcome"]
    http = httpx.MockTransport(lambda request: httpx.Response(200))
    envelope = run(send_welcome, payload={"user_id": 42}, http=http)  # type: ignore[arg-type]
    assert envelope.done, envelope.reason
    raw = run(send_welcome, body=b'{"user_id": 42}', http=http)  # type: ignore[arg-type]
    assert raw.done, raw.reason  # in a pool bound to it: the raw body, as JSON
    assert [put.tube for put in raw.puts] == ["audit"]


def test_the_envelopes_shown_are_envelopes() -> None:
    shown = [b for b in blocks(REPO / "docs" / "handlers.md") if b.language == "json"]
    tasks = [read_envelope(json.dumps(json.loads(b.code)).encode()).task for b in shown]
    assert tasks == ["send-welcome", "http.request", "websocket.send"]


def test_the_toml_blocks_are_valid_config(tmp_path: Path) -> None:
    # Each config block of docs/ and the README loads as a config of its own (with a pool
    # where it shows none); pyproject's entry points are TOML that pip reads.
    checked = 0
    for b in all_blocks():
        if b.language != "toml":
            continue
        checked += 1
        if "entry-points" in b.first_line:
            assert tomllib.loads(b.code)["project"]["entry-points"]["tubeworker.handlers"]
            continue
        text = b.code if "[[pool]]" in b.code else b.code + '\n[[pool]]\ntubes = ["x"]\n'
        if "/etc/tubeworker/signing-keys" in text:  # a keys file of the documented format
            keys = tmp_path / "signing-keys"
            keys.write_text(f"k2026-12: {base64.b64encode(bytes(32)).decode()}\n")
            text = text.replace("/etc/tubeworker/signing-keys", str(keys))
        if "/etc/tubeworker/tls/" in text:  # files the config checks are readable
            for name in ("ca.pem", "client.pem", "client.key"):
                (tmp_path / name).write_text("(a PEM file)\n")
            text = text.replace("/etc/tubeworker/tls/", f"{tmp_path}/")
        path = tmp_path / f"block{checked}.toml"
        path.write_text(text)
        load_config(path, env={})
    assert checked == 13
