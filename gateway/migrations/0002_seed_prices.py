"""Seed the price table with the providers' public list prices (USD per 1M tokens).

Taken from openai.com/api/pricing and anthropic.com/pricing (standard tier).
Operators keep them current in admin; a model with no row is refused.
"""

from decimal import Decimal

from django.db import migrations

# provider, model, input, cached input (cache read), output
PRICES = [
    ("openai", "gpt-5", "1.25", "0.125", "10.00"),
    ("openai", "gpt-5-mini", "0.25", "0.025", "2.00"),
    ("openai", "gpt-5-nano", "0.05", "0.005", "0.40"),
    ("openai", "gpt-4.1", "2.00", "0.50", "8.00"),
    ("openai", "gpt-4.1-mini", "0.40", "0.10", "1.60"),
    ("openai", "gpt-4.1-nano", "0.10", "0.025", "0.40"),
    ("openai", "gpt-4o", "2.50", "1.25", "10.00"),
    ("openai", "gpt-4o-mini", "0.15", "0.075", "0.60"),
    ("openai", "o3", "2.00", "0.50", "8.00"),
    ("openai", "o4-mini", "1.10", "0.275", "4.40"),
    ("anthropic", "claude-opus-4-5", "5.00", "0.50", "25.00"),
    ("anthropic", "claude-opus-4-1", "15.00", "1.50", "75.00"),
    ("anthropic", "claude-sonnet-4-5", "3.00", "0.30", "15.00"),
    ("anthropic", "claude-sonnet-4-0", "3.00", "0.30", "15.00"),
    ("anthropic", "claude-haiku-4-5", "1.00", "0.10", "5.00"),
    ("anthropic", "claude-3-5-haiku-latest", "0.80", "0.08", "4.00"),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("gateway", "ModelPrice")
    for provider, model, inp, cached, out in PRICES:
        ModelPrice.objects.update_or_create(
            provider=provider,
            model=model,
            defaults={
                "input_per_mtok": Decimal(inp),
                "cached_input_per_mtok": Decimal(cached),
                "output_per_mtok": Decimal(out),
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("gateway", "ModelPrice")
    for provider, model, *_ in PRICES:
        ModelPrice.objects.filter(provider=provider, model=model).delete()


class Migration(migrations.Migration):
    dependencies = [("gateway", "0001_initial")]

    operations = [migrations.RunPython(seed, unseed)]
