"""What agents announces for the apps built on it to act on: agents imports none of
them (DESIGN.md), so it says what happened and they decide what follows."""

from django.dispatch import Signal

# A paid agent is `provisioning` again after reconciliation found it without a
# container, or found its deployer dead. Sent inside the transaction that made it
# so, with ``agent``: billing, which deploys what is paid for, queues the deploy
# in that transaction (billing.signals).
redeploy_wanted = Signal()
