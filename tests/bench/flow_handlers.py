"""The handler of the flow-control benchmarks (``outage``, ``limits``), bound to their pool
in the generated config (``[handlers]``): a plain async function, default options.

Each job's body is ``{"n": N, "url": "http://127.0.0.1:PORT/call/N", ...}``. The handler
calls that URL through ``job.http``, the daemon's shared client, so flow control counts the
call under the API its host belongs to (``[api.NAME] hosts``). A 5xx, 408 or 429 is a
failed attempt (``Retry``: the pool's backoff); another 4xx buries the job (the benchmark's
own mistake, never expected).
"""

from __future__ import annotations

from tubeworker import Bury, Job, Retry


async def call_api(job: Job) -> None:
    url = job.json()["url"]
    response = await job.http.get(url, timeout=10)
    status = response.status_code
    if status >= 500 or status in (408, 429):
        raise Retry(reason=f"api answered {status}")
    if status >= 400:
        raise Bury(f"api answered {status}")
