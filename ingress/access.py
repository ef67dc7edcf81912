"""Who may manage what: the one check every management call makes (HTTP and CLI alike).

A `member` key manages nothing; an `admin` key manages its own org only; an `operator`
key manages every org. An admin naming another org gets 403 whatever the path; an id
it cannot see is answered 404 by the caller of `visible`, exactly as a missing one.
"""

from __future__ import annotations

from ingress.keys import Identity
from schemas.errors import GatewayError


def forbidden(message: str = "this key may not manage the gateway: use an admin key") -> GatewayError:
    return GatewayError(403, "forbidden", message)


def managing_org(caller: Identity, org: str | None) -> str:
    """The org a management call acts on: an admin's own (`org` omitted or the same), or
    the one an operator names. 403 for members and for admins naming another org; 400
    when the operator names none."""
    if caller.role == "operator":
        if not org:
            raise GatewayError(400, "missing_org", "an operator key must name the org",
                               param="org")
        return org
    if caller.role != "admin":
        raise forbidden()
    if org and org != caller.org:
        raise forbidden(f"this key manages organization {caller.org!r} only")
    return caller.org


def require_manager(caller: Identity) -> None:
    """403 unless the caller may manage at least its own org."""
    if caller.role not in ("admin", "operator"):
        raise forbidden()


def visible(caller: Identity, org: str) -> bool:
    """Whether a record of `org` exists for this caller (else: answer 404, not 403)."""
    return caller.role == "operator" or (caller.role == "admin" and caller.org == org)
