# The gateway's counters on Agent: tool calls per day reserved like tokens, the
# per-UTC-day allowance for model calls outside any run, and requests per minute.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0009_kill_agent_permission"),
    ]

    operations = [
        migrations.AddField(
            model_name="agent",
            name="reserved_tool_calls",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="agent",
            name="model_calls_outside_runs_today",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="agent",
            name="tool_calls_outside_runs_today",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="agent",
            name="reserved_model_calls_outside_runs",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="agent",
            name="rate_minute",
            field=models.BigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="agent",
            name="rate_count",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
