"""The outbox is the project's now (safer_claw 0001 took its state and table)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_outbox_task"),
        ("safer_claw", "0001_outbox_task"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="OutboxTask")],
        ),
    ]
