"""Demo users, one per role, with passwords generated once and kept in the data directory."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from mes import roles

DEMO_USERS = [
    ("admin", roles.ADMIN, "Plant administrator"),
    ("supervisor", roles.SUPERVISOR, "Line supervisor"),
    ("operator", roles.OPERATOR, "Station operator"),
    ("quality", roles.QUALITY_ENGINEER, "Quality engineer"),
    ("mlengineer", roles.ML_ENGINEER, "ML engineer"),
    ("integrator", roles.INTEGRATOR, "Legacy MES integration (machine account)"),
]


@dataclass(frozen=True)
class DemoCredential:
    username: str
    password: str
    role: str
    description: str


def _stored_passwords(path: Path) -> dict[str, str]:
    if path.exists():
        return {entry["username"]: entry["password"] for entry in json.loads(path.read_text())}
    return {}


@transaction.atomic
def demo_users_create(*, credentials_file: Path) -> list[DemoCredential]:
    """Create or repair the demo users; their passwords survive restarts (idempotent)."""
    User = get_user_model()
    stored = _stored_passwords(credentials_file)
    credentials = []
    for username, role, description in DEMO_USERS:
        password = stored.get(username) or secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username=username)
        user.first_name = description
        user.is_staff = role == roles.ADMIN
        user.is_superuser = role == roles.ADMIN
        if not user.check_password(password):
            user.set_password(password)
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        credentials.append(DemoCredential(username, password, role, description))
    credentials_file.parent.mkdir(parents=True, exist_ok=True)
    credentials_file.touch(mode=0o600)
    credentials_file.write_text(json.dumps([c.__dict__ for c in credentials], indent=2))
    return credentials
