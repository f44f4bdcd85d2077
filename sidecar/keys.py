"""Private keys for private_key_jwt (RFC 7523): which are accepted, how they sign, what to register."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

MAX_PEM_LENGTH = 16_384
# Loading an RSA key costs tens of milliseconds, and every provider read, public view and client
# assertion needs it: each distinct key is loaded once. The PEM is in memory with its provider anyway.
LOADED_KEYS = 256

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def signing_key(pem: object) -> SigningKey:
    """The unencrypted PEM private key, if RSA of 2048 bits or more or EC P-256; else ValueError."""
    if not isinstance(pem, str) or len(pem) > MAX_PEM_LENGTH:
        raise ValueError("not a PEM string")
    return _loaded(pem)


@lru_cache(maxsize=LOADED_KEYS)
def _loaded(pem: str) -> SigningKey:
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("unsupported key type")


def signing_algorithm(key: SigningKey) -> str:
    """The JWS algorithm for a private_key_jwt key."""
    return "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"


def public_jwk(pem: str, key_id: str = "") -> dict[str, Any]:
    """The JWK to register at the provider for private_key_jwt."""
    key = signing_key(pem)
    if isinstance(key, rsa.RSAPrivateKey):
        jwk, alg = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "RS256"
    else:
        jwk, alg = ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "ES256"
    return {**jwk, "alg": alg, "use": "sig", **({"kid": key_id} if key_id else {})}
