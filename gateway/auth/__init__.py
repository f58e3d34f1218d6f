"""Who is this: users, SASL mechanisms (PLAIN, SCRAM, EXTERNAL) as sans-I/O
objects, JWT bearer tokens, and the ``Authenticator`` the listeners call
(docs/security.md, "Users, SASL and tokens"). ACL rules are another module.
"""

from .authenticator import Authenticator, is_loopback
from .identity import AuthError, AuthFailure, Identity, Limits
from .sasl import Challenge, Failure, SaslExchange, SaslStep, Success
from .tokens import Claims, JwtVerifier, TokenError, looks_like_jwt
from .users import ScramCredential, UserRecord, Users, UsersFileError, UserStore

__all__ = [
    "AuthError",
    "AuthFailure",
    "Authenticator",
    "Challenge",
    "Claims",
    "Failure",
    "Identity",
    "JwtVerifier",
    "Limits",
    "SaslExchange",
    "SaslStep",
    "ScramCredential",
    "Success",
    "TokenError",
    "UserRecord",
    "UserStore",
    "Users",
    "UsersFileError",
    "is_loopback",
    "looks_like_jwt",
]
