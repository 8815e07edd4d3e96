"""The handlers, tested with tubeworker's test kit: no beanstalkd needed."""

from __future__ import annotations

from hello_handlers.jobs import greet

from tubeworker.testing import run


def test_a_greeting_is_put_for_the_next_reader() -> None:
    outcome = run(greet, payload={"name": " Ada "}, task="hello.greet")
    assert outcome.done
    (put,) = outcome.puts
    assert put.tube == "greetings"
    assert put.json() == {"greeting": "Hello, Ada!", "for_job": 1}


def test_a_job_without_a_name_is_buried_not_retried() -> None:
    outcome = run(greet, payload={"nom": "Ada"}, task="hello.greet")
    assert outcome.buried
    assert outcome.reason == "hello.greet needs a \"name\", got {'nom': 'Ada'}"
    assert outcome.puts == ()
