"""Sans-I/O protocol codecs: bytes in, events out; events in, bytes out.

Nothing here performs I/O, reads a clock, or imports trio or the core: a codec
holds one protocol's framing, validation and state rules, in the style of h11
and wsproto. Listeners own the sockets and drive the codecs.
"""
