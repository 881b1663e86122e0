"""The vote peer for bench/rest.py: the seed's ADR-003 snippet as a user would write it.

    python bench/peer_fastapi.py --port 9001      # secret from PEER_SECRET (or random)

FastAPI with a pydantic body, PyJWT tokens (HS256) whose verification is cached, one
`asyncio.Lock` around the in-memory store, served by uvicorn with uvloop and httptools, one
process, no access log. It serves the same contract as the service for what the benchmark
uses: `POST /auth/token` (201 {token, voter_id, expires_at}), `POST /features` (201, a voter may
propose), `PUT /features/{id}/vote` with a Bearer token and {"value": 1 | -1} (200 {feature_id,
value, up, down, score}; 401, 404, 422 otherwise), `GET /features/stats` ({seq, up, down,
total_votes, ...}) and `GET /healthz`. Nothing here is tuned: it is the peer's ordinary code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

import jwt
import uvicorn
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, ConfigDict, Field

SECRET = os.environ.get("PEER_SECRET") or secrets.token_urlsafe(32)
VOTER_TTL = 30 * 24 * 3600


class VoteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: Literal[1, -1]


class FeatureCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)


class VoteOut(BaseModel):
    feature_id: int
    value: int
    up: int
    down: int
    score: int


class TokenOut(BaseModel):
    token: str
    voter_id: str
    expires_at: datetime


@dataclass
class Feature:
    id: int
    title: str
    description: str
    up: int = 0
    down: int = 0
    votes: dict[str, int] = field(default_factory=dict)


@dataclass
class FeatureStore:
    features: dict[int, Feature] = field(default_factory=dict)
    seq: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def add(self, title: str, description: str) -> Feature:
        async with self.lock:
            feature = Feature(len(self.features) + 1, title, description)
            self.features[feature.id] = feature
            self.seq += 1
            return feature

    async def add_vote(self, feat_id: int, value: int, user_id: str) -> Feature:
        async with self.lock:
            feature = self.features.get(feat_id)
            if feature is None:
                raise HTTPException(404, "feature not found")
            old = feature.votes.get(user_id, 0)
            if old != value:
                feature.up += (value == 1) - (old == 1)
                feature.down += (value == -1) - (old == -1)
                feature.votes[user_id] = value
                self.seq += 1
            return feature


app = FastAPI(title="Feature Votes peer")
feat_store = FeatureStore()


@lru_cache(maxsize=10_000)
def verified_claims(token: str) -> dict[str, Any]:
    """Signature and claims checked once per token; `exp` is checked again on every use."""
    claims: dict[str, Any] = jwt.decode(
        token, SECRET, algorithms=["HS256"], options={"require": ["sub", "exp", "iat"]}
    )
    return claims


def current_voter(authorization: Annotated[str | None, Header()] = None) -> str:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401, "bearer token required")
    try:
        claims = verified_claims(authorization[7:])
    except jwt.InvalidTokenError:
        raise HTTPException(401, "invalid token") from None
    if claims["exp"] <= time.time():
        raise HTTPException(401, "token expired")
    return str(claims["sub"])


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/auth/token", status_code=201, response_model=TokenOut)
async def new_token() -> TokenOut:
    now = int(time.time())
    voter_id = secrets.token_urlsafe(16)
    claims = {"sub": voter_id, "role": "voter", "iat": now, "exp": now + VOTER_TTL}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    return TokenOut(
        token=token, voter_id=voter_id, expires_at=datetime.fromtimestamp(now + VOTER_TTL, UTC)
    )


@app.post("/features", status_code=201)
async def propose(
    body: FeatureCreate, voter: Annotated[str, Depends(current_voter)]
) -> dict[str, Any]:
    feature = await feat_store.add(body.title, body.description)
    return {"id": feature.id, "title": feature.title, "description": feature.description}


@app.get("/features/stats")
async def get_stats() -> dict[str, Any]:
    features = list(feat_store.features.values())
    up, down = sum(f.up for f in features), sum(f.down for f in features)
    return {
        "seq": feat_store.seq,
        "total_features": len(features),
        "total_votes": up + down,
        "up": up,
        "down": down,
    }


@app.put("/features/{feat_id}/vote", response_model=VoteOut)
async def add_vote(
    feat_id: int, vote: VoteCreate, voter: Annotated[str, Depends(current_voter)]
) -> VoteOut:
    feature = await feat_store.add_vote(feat_id, vote.value, user_id=voter)
    return VoteOut(
        feature_id=feature.id,
        value=vote.value,
        up=feature.up,
        down=feature.down,
        score=feature.up - feature.down,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
