"""beanstalkd: the protocol, sans I/O, and the thin Trio client over it.

``protocol.py`` is the import path for the protocol's names (``from tubeworker.beanstalk
import protocol as p``); it re-exports ``replies.py`` (the replies and stats records, and
how they are decoded), ``commands.py`` (the commands, their bytes and the replies each may
get) and ``connection.py`` (:class:`Connection`, the pipelined parser, and ``NEED_DATA``),
each importing only those before it. ``client.py`` is the Trio client; ``address.py``
where a server listens (the client re-exports it); ``tls.py`` the client's TLS contexts.
"""
