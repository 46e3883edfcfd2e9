import factory

from agents.models import Agent
from safer_claw.accounts.tests.factories import UserFactory


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"agent-{n}")
    ai_api_key = factory.Sequence(lambda n: f"sk-test-provider-key-{n:04d}")


def paid(agent: Agent) -> Agent:
    """``agent`` as billing leaves one whose subscription is active: only such an
    agent may be deployed or started (DESIGN.md trust boundary 5)."""
    Agent.objects.filter(pk=agent.pk).update(billing_active=True)
    agent.billing_active = True
    return agent
