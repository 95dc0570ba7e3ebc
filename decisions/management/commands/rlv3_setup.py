"""Idempotent first-run setup used by `make run`: operators group, admin user and token, schedule, champion."""

from __future__ import annotations

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Ensure the operators group, an admin user with an API token, the nightly schedule and a champion model."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("RLV3_ADMIN_USER", "admin"))
        parser.add_argument("--no-champion", action="store_true", help="Do not train a first champion.")
        parser.add_argument("--champion-timesteps", type=int, default=int(os.environ.get("RLV3_BOOTSTRAP_TIMESTEPS", 20_000)))

    def handle(self, *args, username, no_champion, champion_timesteps, **options):
        operators, _ = Group.objects.get_or_create(name=settings.RLV3_OPERATORS_GROUP)
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = os.environ.get("RLV3_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"created admin user {username!r} with password {password}")
        user.groups.add(operators)
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"admin: http://127.0.0.1:8000/admin/  (user {username})")
        self.stdout.write(f"API token: {token.key}")
        self.stdout.write(f'try: curl -H "Authorization: Token {token.key}" http://127.0.0.1:8000/api/v1/rl/v3/status')

        from training import services as training_services

        schedule = training_services.nightly_schedule_ensure()
        self.stdout.write(f"nightly retraining: {schedule}")
        if not no_champion:
            version = training_services.champion_ensure(timesteps=champion_timesteps, stdout=self.stdout)
            self.stdout.write(f"champion: v{version.version}")
