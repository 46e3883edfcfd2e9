"""The kill switch's replay store is keyed by (agent, signature).

Rows written before this migration name no agent. They only matter for the
ten minutes a signature can pass the timestamp check, and since v1 signatures
are now accepted only with a body that names the agent, they are dropped
rather than guessed at.
"""

import django.db.models.deletion
from django.db import migrations, models


def forget_unbound_signatures(apps, schema_editor):
    apps.get_model("agents", "UsedKillSignature").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0010_gateway_counters"),
    ]

    operations = [
        migrations.RunPython(forget_unbound_signatures, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="usedkillsignature",
            name="signature",
            field=models.CharField(max_length=64),
        ),
        migrations.AddField(
            model_name="usedkillsignature",
            name="agent",
            field=models.ForeignKey(
                db_constraint=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="agents.agent",
            ),
            preserve_default=False,
        ),
        migrations.AddConstraint(
            model_name="usedkillsignature",
            constraint=models.UniqueConstraint(
                fields=("agent", "signature"), name="kill_signature_used_once_per_agent"
            ),
        ),
    ]
