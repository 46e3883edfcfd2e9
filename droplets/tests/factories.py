import factory

from droplets.models import Droplet


class DropletFactory(factory.django.DjangoModelFactory):
    """A local droplet (unix socket) by default: no TLS material needed."""

    class Meta:
        model = Droplet

    name = factory.Sequence(lambda n: f"droplet-{n}")
    ip_address = factory.Sequence(lambda n: f"10.10.{n // 250}.{n % 250 + 1}")
    docker_url = "unix:///var/run/docker.sock"
    max_capacity = 5
    vcpus = 2
    memory_mb = 4096
