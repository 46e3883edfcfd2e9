"""Two starting plans, so a fresh install can be used at once (development mode
needs no Stripe price). Operators edit them, or add their own, in admin."""

from decimal import Decimal

from django.db import migrations

PLANS = [
    {
        "name": "Starter",
        "description": "One personal agent for everyday tasks.",
        "monthly_price": Decimal("9.00"),
        "sort_order": 1,
        "max_agents": 1,
        "cpu_limit": Decimal("0.50"),
        "memory_limit": "512m",
        "pids_limit": 100,
        "daily_token_cap": 200_000,
        "monthly_cost_cap": Decimal("10.00"),
        "max_tokens_per_request": 4096,
        "max_tool_calls_per_run": 20,
        "max_runtime_seconds": 600,
        "max_tool_calls_per_day": 500,
        "max_requests_per_minute": 60,
        "allowed_tools": [
            "calendar.list_events",
            "gmail.search",
            "gmail.get_message",
            "drive.search",
            "drive.get_file",
        ],
    },
    {
        "name": "Pro",
        "description": "Up to three agents with more room and higher caps.",
        "monthly_price": Decimal("29.00"),
        "sort_order": 2,
        "max_agents": 3,
        "cpu_limit": Decimal("1.00"),
        "memory_limit": "1g",
        "pids_limit": 200,
        "daily_token_cap": 1_000_000,
        "monthly_cost_cap": Decimal("50.00"),
        "max_tokens_per_request": 8192,
        "max_tool_calls_per_run": 50,
        "max_runtime_seconds": 1800,
        "max_tool_calls_per_day": 2000,
        "max_requests_per_minute": 120,
        "allowed_tools": [
            "calendar.list_events",
            "gmail.search",
            "gmail.get_message",
            "drive.search",
            "drive.get_file",
        ],
    },
]


def create_plans(apps, schema_editor):
    Plan = apps.get_model("billing", "Plan")
    if Plan.objects.exists():
        return
    for fields in PLANS:
        Plan.objects.create(**fields)


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [migrations.RunPython(create_plans, migrations.RunPython.noop)]
