"""Agents are paid for from now on only while their subscription is active
(Agent.billing_active, which Agent.transition reads): set it from each
agent's subscription. An agent without one (made by an operator before
plans were required) is not paid for; reconciliation pauses it if it runs."""

from django.db import migrations


def billing_active_from_subscriptions(apps, schema_editor):
    Agent = apps.get_model("agents", "Agent")
    Subscription = apps.get_model("billing", "Subscription")
    paid = Subscription.objects.filter(status="active").values("agent_id")
    Agent.objects.filter(pk__in=paid).update(billing_active=True)
    Agent.objects.exclude(pk__in=paid).update(billing_active=False)


class Migration(migrations.Migration):
    dependencies = [
        ("agents", "0007_limits_model_steps_and_billing_active"),
        ("billing", "0005_subscription_complimentary"),
    ]

    operations = [
        migrations.RunPython(billing_active_from_subscriptions, migrations.RunPython.noop),
    ]
