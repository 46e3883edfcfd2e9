# Calls are charged to the control plane's runs (agents.Run), not to a run id the
# agent chose; the ledger keeps what each call reserved so a call that never
# reports usage is charged all of it; prices gain cache writes by lifetime.

from decimal import Decimal

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

ZERO = Decimal("0")


def cache_write_prices(apps, schema_editor):
    # Anthropic: 1.25x input for a 5-minute cache write, 2x for one hour.
    # OpenAI caches by itself and bills no writes.
    ModelPrice = apps.get_model("gateway", "ModelPrice")
    for price in ModelPrice.objects.all():
        if price.provider == "anthropic":
            price.cache_write_5m_per_mtok = price.input_per_mtok * Decimal("1.25")
            price.cache_write_1h_per_mtok = price.input_per_mtok * 2
        else:
            price.cache_write_5m_per_mtok = ZERO
            price.cache_write_1h_per_mtok = ZERO
        price.save(update_fields=["cache_write_5m_per_mtok", "cache_write_1h_per_mtok"])


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0010_gateway_counters"),
        ("gateway", "0003_agentrun_related_name"),
    ]

    operations = [
        migrations.DeleteModel(name="AgentRun"),
        migrations.DeleteModel(name="RateWindow"),
        migrations.RemoveField(model_name="usagerecord", name="run_id"),
        migrations.AddField(
            model_name="usagerecord",
            name="run",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="usage_records",
                to="agents.run",
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="tool_names",
            field=models.JSONField(
                blank=True, default=list, help_text="The tools the model asked for."
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="dropped_tools",
            field=models.JSONField(
                blank=True,
                default=list,
                help_text="Tools off the allow-list, removed from the request.",
            ),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="reserved_output_tokens",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="reserved_tool_calls",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="usagerecord",
            name="charged_reservation",
            field=models.BooleanField(
                default=False,
                help_text="No usage came from the provider (a timeout, a broken stream, a "
                "crash): the call was charged its full reservation.",
            ),
        ),
        migrations.AlterField(
            model_name="usagerecord",
            name="status",
            field=models.CharField(
                choices=[
                    ("pending", "In flight (reserved)"),
                    ("ok", "OK"),
                    ("upstream_error", "Upstream error"),
                    ("client_gone", "Client disconnected"),
                    ("refused_response", "Response refused (a tool not offered)"),
                    ("swept", "Never settled: charged its reservation by the sweeper"),
                ],
                db_index=True,
                default="pending",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="modelprice",
            name="cache_write_5m_per_mtok",
            field=models.DecimalField(
                decimal_places=6,
                default=ZERO,
                max_digits=12,
                validators=[django.core.validators.MinValueValidator(ZERO)],
                verbose_name="cache write (5 min) $/Mtok",
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="modelprice",
            name="cache_write_1h_per_mtok",
            field=models.DecimalField(
                blank=True,
                decimal_places=6,
                help_text="Empty: a request that asks for a one-hour cache is refused.",
                max_digits=12,
                null=True,
                validators=[django.core.validators.MinValueValidator(ZERO)],
                verbose_name="cache write (1 h) $/Mtok",
            ),
        ),
        migrations.RunPython(cache_write_prices, migrations.RunPython.noop),
    ]
