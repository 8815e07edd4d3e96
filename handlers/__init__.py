"""Built-in handlers, registered through the ``tubeworker.handlers`` entry-point group."""
