"""Integrations shipped with tubeworker and registered through its own entry points, like
any plugin: they import only the public API (``tubeworker``) and their own library."""
