"""API tokens made before tokens expired get the default lifetime, from now."""

from django.conf import settings
from django.db import migrations
from django.utils import timezone


def give_tokens_an_expiry(apps, schema_editor):
    AuthToken = apps.get_model("knox", "AuthToken")
    expiry = timezone.now() + settings.REST_KNOX["TOKEN_TTL"]
    AuthToken.objects.filter(expiry__isnull=True).update(expiry=expiry)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("knox", "0009_extend_authtoken_field"),
    ]

    operations = [migrations.RunPython(give_tokens_an_expiry, migrations.RunPython.noop)]
