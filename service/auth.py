"""Stateless identity: HS256 tokens signed with the shared secret, verified once per instance."""

from __future__ import annotations

import enum
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import jwt
import msgspec

from .config import Secret
from .schemas import TOKEN_MAX

ALGORITHM: Final = "HS256"
MAX_TOKEN_LENGTH: Final = TOKEN_MAX
VOTER_ID_BYTES: Final = 16


class Role(enum.StrEnum):
    VOTER = "voter"
    ADMIN = "admin"


class Claims(msgspec.Struct, frozen=True):
    sub: str
    role: Role
    iat: int
    exp: int
    # An admin token made for one board (POST /boards) names it; a site admin's names none.
    board: str | None = None

    def admin_of(self, slug: str) -> bool:
        """Whether these claims administer the board `slug`."""
        return self.role is Role.ADMIN and (self.board is None or self.board == slug)


class TokenMissing(Exception):
    """No bearer token where one is required."""


class TokenInvalid(Exception):
    """Forged, expired, malformed or otherwise unusable token."""


class Forbidden(Exception):
    """A valid token whose role may not do this."""


def key_id(key: str) -> str:
    """Public, stable name of a key, so a verifier picks the right one during rotation."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def bearer_token(authorization: str | None) -> str:
    """The token of an 'Authorization: Bearer <token>' header."""
    if not authorization:
        raise TokenMissing("a bearer token is required")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise TokenInvalid("Authorization must be 'Bearer <token>'")
    return token


class Tokens:
    """Mint and verify tokens; remembers verified tokens in a bounded LRU (a memo, not sessions)."""

    def __init__(
        self,
        secret: Secret,
        *,
        voter_ttl: int,
        admin_ttl: int,
        cache_size: int,
        board_admin_ttl: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._signing_key = secret.keys[0]
        self._signing_kid = key_id(secret.keys[0])
        self._keys = {key_id(k): k for k in secret.keys}
        self._ttl = {Role.VOTER: voter_ttl, Role.ADMIN: admin_ttl}
        self._board_admin_ttl = admin_ttl if board_admin_ttl is None else board_admin_ttl
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def ttl(self, role: Role, board: str | None = None) -> int:
        """How long a token of this role (an admin's: of one board, or of the site) lives."""
        return self._board_admin_ttl if role is Role.ADMIN and board else self._ttl[role]

    def issue(
        self, role: Role, subject: str | None = None, *, board: str | None = None
    ) -> tuple[str, Claims]:
        """A new token; voters get a random, unguessable id; `board` makes an admin token
        that administers that board only."""
        if board is not None and role is not Role.ADMIN:
            raise ValueError("only an admin token is made for one board")
        now = int(self._clock())
        sub = subject or secrets.token_urlsafe(VOTER_ID_BYTES)
        claims = Claims(sub=sub, role=role, iat=now, exp=now + self.ttl(role, board), board=board)
        payload = msgspec.structs.asdict(claims)
        if board is None:
            del payload["board"]
        token = jwt.encode(
            payload,
            self._signing_key,
            algorithm=ALGORITHM,
            headers={"kid": self._signing_kid},
        )
        return token, claims

    def known(self, token: str) -> bool:
        """Verified before and still remembered: checking it again costs no signature check."""
        return token in self._cache

    def verify(self, token: str) -> Claims:
        """Claims of a valid token, or TokenInvalid."""
        now = self._clock()
        claims = self._cache.get(token)
        if claims is not None:
            if claims.exp <= now:
                del self._cache[token]
                raise TokenInvalid("token has expired")
            self._cache.move_to_end(token)
            return claims
        claims = self._decode(token)
        if claims.exp <= now:
            raise TokenInvalid("token has expired")
        # Signed by us, yet living longer than its role allows: minted with a leaked key or by
        # an old build; a lifetime is a promise of the server, not of the token.
        if claims.exp - claims.iat > self.ttl(claims.role, claims.board):
            raise TokenInvalid("token lifetime exceeds what its role allows")
        self._cache[token] = claims
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return claims

    def _decode(self, token: str) -> Claims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenInvalid("token is too long")
        try:
            header = jwt.get_unverified_header(token)
            key = self._keys.get(str(header.get("kid")))
            if key is None:
                raise TokenInvalid("token was not signed by a key this server knows")
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "role", "iat", "exp"]},
            )
            return msgspec.convert(payload, Claims)
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("token has expired") from None
        except (jwt.PyJWTError, msgspec.ValidationError, TypeError, ValueError) as exc:
            raise TokenInvalid(f"token is not valid: {exc}") from None


def require_admin(claims: Claims, slug: str) -> Claims:
    """Pass claims through when they administer the board `slug` (a site admin's do)."""
    if claims.role is not Role.ADMIN:
        raise Forbidden("this operation needs an admin token")
    if not claims.admin_of(slug):
        raise Forbidden("this admin token is for another board")
    return claims


def require_role(claims: Claims, role: Role) -> Claims:
    """Pass claims through when their role may act as `role`; admins may do what voters do."""
    if role is Role.ADMIN and claims.role is not Role.ADMIN:
        raise Forbidden("this operation needs an admin token")
    return claims
