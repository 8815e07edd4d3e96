"""The package's handlers. Each is registered in pyproject.toml under its task name."""

from __future__ import annotations

from tubeworker import Bury, Job, handler


@handler(max_attempts=3)
async def greet(job: Job) -> None:
    """``{"name": "Ada"}``: greet someone, and put the greeting in the ``greetings`` tube
    for whoever reads it next."""
    name = job.payload.get("name") if isinstance(job.payload, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise Bury(f'hello.greet needs a "name", got {job.payload!r}')
    greeting = f"Hello, {name.strip()}!"
    job.log.info("greeted", greeting=greeting)
    await job.put({"greeting": greeting, "for_job": job.id}, tube="greetings")
