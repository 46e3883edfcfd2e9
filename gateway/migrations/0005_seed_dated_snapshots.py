"""Dated snapshots priced on their own rows (USD per 1M tokens, standard tier).

A snapshot is never priced as its alias: ``gpt-4o-2024-05-13`` costs twice what
``gpt-4o`` does. From openai.com/api/pricing and anthropic.com/pricing; operators
keep them current in admin. Cache writes: Anthropic 1.25x input (5 min) and 2x
(1 h); OpenAI bills none. A model without a row is refused.
"""

from decimal import Decimal

from django.db import migrations

# provider, model, input, cached input (cache read), output
SNAPSHOTS = [
    ("openai", "gpt-5-2025-08-07", "1.25", "0.125", "10.00"),
    ("openai", "gpt-5-mini-2025-08-07", "0.25", "0.025", "2.00"),
    ("openai", "gpt-5-nano-2025-08-07", "0.05", "0.005", "0.40"),
    ("openai", "gpt-4.1-2025-04-14", "2.00", "0.50", "8.00"),
    ("openai", "gpt-4.1-mini-2025-04-14", "0.40", "0.10", "1.60"),
    ("openai", "gpt-4.1-nano-2025-04-14", "0.10", "0.025", "0.40"),
    ("openai", "gpt-4o-2024-11-20", "2.50", "1.25", "10.00"),
    ("openai", "gpt-4o-2024-08-06", "2.50", "1.25", "10.00"),
    # The first gpt-4o snapshot: twice the alias's price, and no cached-input discount.
    ("openai", "gpt-4o-2024-05-13", "5.00", "5.00", "15.00"),
    ("openai", "gpt-4o-mini-2024-07-18", "0.15", "0.075", "0.60"),
    ("openai", "o3-2025-04-16", "2.00", "0.50", "8.00"),
    ("openai", "o4-mini-2025-04-16", "1.10", "0.275", "4.40"),
    ("anthropic", "claude-opus-4-5-20251101", "5.00", "0.50", "25.00"),
    ("anthropic", "claude-opus-4-1-20250805", "15.00", "1.50", "75.00"),
    ("anthropic", "claude-sonnet-4-5-20250929", "3.00", "0.30", "15.00"),
    ("anthropic", "claude-sonnet-4-20250514", "3.00", "0.30", "15.00"),
    ("anthropic", "claude-haiku-4-5-20251001", "1.00", "0.10", "5.00"),
    ("anthropic", "claude-3-5-haiku-20241022", "0.80", "0.08", "4.00"),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("gateway", "ModelPrice")
    for provider, model, inp, cached, out in SNAPSHOTS:
        price = Decimal(inp)
        anthropic = provider == "anthropic"
        ModelPrice.objects.update_or_create(
            provider=provider,
            model=model,
            defaults={
                "input_per_mtok": price,
                "cached_input_per_mtok": Decimal(cached),
                "cache_write_5m_per_mtok": price * Decimal("1.25") if anthropic else Decimal(0),
                "cache_write_1h_per_mtok": price * 2 if anthropic else Decimal(0),
                "output_per_mtok": Decimal(out),
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("gateway", "ModelPrice")
    for provider, model, *_ in SNAPSHOTS:
        ModelPrice.objects.filter(provider=provider, model=model).delete()


class Migration(migrations.Migration):
    dependencies = [("gateway", "0004_runs_prices_and_full_charges")]

    operations = [migrations.RunPython(seed, unseed)]
