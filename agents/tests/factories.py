import factory

from agents.models import Agent
from safer_claw.accounts.tests.factories import UserFactory


class AgentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Agent

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"agent-{n}")
    ai_api_key = factory.Sequence(lambda n: f"sk-test-provider-key-{n:04d}")
