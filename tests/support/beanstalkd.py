"""Tests use the same private-beanstalkd helper as ``tubeworker dev``."""

from tubeworker.cli.devserver import (
    BeanstalkdMissing,
    BeanstalkdProcess,
    find_beanstalkd,
    free_port,
)

__all__ = ["BeanstalkdMissing", "BeanstalkdProcess", "find_beanstalkd", "free_port"]
