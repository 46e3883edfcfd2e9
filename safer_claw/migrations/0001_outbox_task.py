"""The outbox moves from billing to the project, below every app (see safer_claw.outbox):
the model's state moves here and its table is renamed; no row is touched."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_outbox_task"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="OutboxTask",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        ("task", models.CharField(max_length=200)),
                        ("args", models.JSONField(default=list)),
                        ("created_at", models.DateTimeField(auto_now_add=True, db_index=True)),
                        ("attempts", models.PositiveIntegerField(default=0)),
                    ],
                    options={"ordering": ["created_at", "id"], "db_table": "billing_outboxtask"},
                ),
            ],
        ),
        migrations.AlterModelTable(name="outboxtask", table=None),
    ]
