"""Reliability suite: the real daemon against a real beanstalkd, with faults (see README)."""
