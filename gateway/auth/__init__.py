"""Who is this and may they do this: TLS client identities, SASL mechanisms
(PLAIN, SCRAM, EXTERNAL) as sans-I/O objects, password files and ACL rules.

Not built yet; every listener currently admits every client.
"""
