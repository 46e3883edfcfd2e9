"""Syncing droplet rows from the DigitalOcean API, against a local fake of that API."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command

from droplets.digitalocean import DigitalOceanError, list_tagged_droplets
from droplets.models import Droplet, DropletEvent, DropletStatus
from droplets.sync import SyncAction, sync_droplets_from_digitalocean
from droplets.tests.factories import DropletFactory
from droplets.tests.fake_digitalocean import (  # noqa: F401 - fixtures
    TAG,
    TOKEN,
    FakeDigitalOcean,
    digitalocean_api_fixture,
    fake_digitalocean_fixture,
)

pytestmark = pytest.mark.django_db


def run_sync(*args: str) -> str:
    out = io.StringIO()
    call_command("sync_droplets", *args, stdout=out)
    return out.getvalue()


def known_droplet(**fields) -> Droplet:
    """A row synced before: a TLS droplet whose URL derives from its address."""
    ip_address = fields.pop("ip_address", "203.0.113.50")
    return DropletFactory(ip_address=ip_address, docker_url=f"tcp://{ip_address}:2376", **fields)


def state() -> list[tuple]:
    rows = Droplet.objects.order_by("digitalocean_id", "name").values_list(
        "digitalocean_id",
        "name",
        "ip_address",
        "docker_url",
        "status",
        "vcpus",
        "memory_mb",
        "max_capacity",
        "updated_at",
    )
    return [*rows, ("events", DropletEvent.objects.count())]


# --- What the sync does with each droplet --------------------------------------------------


def test_new_tagged_droplets_are_created_in_maintenance_without_tls(digitalocean_api):
    digitalocean_api.add(101, "sc-fra1-1", "203.0.113.10", memory=4096, vcpus=2)
    digitalocean_api.add(102, "sc-fra1-2", "203.0.113.11", memory=256, vcpus=1, region="ams3")

    report = sync_droplets_from_digitalocean()

    assert [o.action for o in report.outcomes] == [SyncAction.CREATED, SyncAction.CREATED]
    big = Droplet.objects.get(digitalocean_id=101)
    assert (big.name, big.ip_address, big.docker_url) == (
        "sc-fra1-1",
        "203.0.113.10",
        "tcp://203.0.113.10:2376",
    )
    assert (big.status, big.vcpus, big.memory_mb, big.max_capacity) == (
        DropletStatus.MAINTENANCE,
        2,
        4096,
        8,
    )
    assert (big.tls_ca_cert, big.tls_client_cert, big.tls_client_key) == ("", "", None)
    assert Droplet.objects.get(digitalocean_id=102).max_capacity == 1  # never zero
    event = big.events.get()
    assert event.kind == "created"
    assert "no agents until an operator adds its Docker TLS CA" in event.message
    assert "fra1" in event.message


def test_request_asks_for_the_tag_with_the_bearer_token(digitalocean_api):
    digitalocean_api.add(101, "sc-1", "203.0.113.10")

    list_tagged_droplets(tag="fleet-a")

    [request] = digitalocean_api.requests
    assert (request.path, request.authorization) == ("/v2/droplets", f"Bearer {TOKEN}")
    assert request.query == {"tag_name": "fleet-a", "per_page": "200"}


def test_known_droplet_gets_digitalocean_name_address_and_size(digitalocean_api):
    row = known_droplet(
        digitalocean_id=101,
        name="old-name",
        ip_address="203.0.113.50",
        vcpus=1,
        memory_mb=1024,
        max_capacity=3,
    )
    digitalocean_api.add(101, "new-name", "203.0.113.51", vcpus=4, memory=8192)

    report = sync_droplets_from_digitalocean()

    assert [o.action for o in report.outcomes] == [SyncAction.UPDATED]
    row.refresh_from_db()
    assert (row.name, row.ip_address, row.docker_url, row.vcpus, row.memory_mb) == (
        "new-name",
        "203.0.113.51",
        "tcp://203.0.113.51:2376",
        4,
        8192,
    )
    # The operator's choices stay theirs.
    assert (row.status, row.max_capacity) == (DropletStatus.ACTIVE, 3)
    event = row.events.get()
    assert event.kind == "synced"
    assert "name old-name → new-name" in event.message
    assert "ip_address 203.0.113.50 → 203.0.113.51" in event.message


def test_operator_docker_url_is_kept_when_the_address_changes(digitalocean_api):
    row = DropletFactory(
        digitalocean_id=101,
        name="sc-1",
        ip_address="203.0.113.50",
        docker_url="tcp://sc-1.internal.example:2376",
        vcpus=2,
        memory_mb=2048,
    )
    digitalocean_api.add(101, "sc-1", "203.0.113.51", vcpus=2, memory=2048)

    sync_droplets_from_digitalocean()

    row.refresh_from_db()
    assert (row.ip_address, row.docker_url) == ("203.0.113.51", "tcp://sc-1.internal.example:2376")


def test_droplet_no_longer_tagged_goes_to_maintenance_and_is_kept(digitalocean_api):
    gone = known_droplet(
        digitalocean_id=999,
        name="sc-gone",
        ip_address="203.0.113.99",
        active_container_count=2,
    )
    local = DropletFactory(digitalocean_id=None, name="local")
    digitalocean_api.add(101, "sc-1", "203.0.113.10")

    report = sync_droplets_from_digitalocean()

    assert (SyncAction.MISSING, 999) in [(o.action, o.digitalocean_id) for o in report.outcomes]
    gone.refresh_from_db()
    assert gone.status == DropletStatus.MAINTENANCE
    assert gone.active_container_count == 2
    event = gone.events.get()
    assert event.kind == "missing"
    assert f'under tag "{TAG}"' in event.message
    assert "2 agent container(s) are left alone" in event.message
    local.refresh_from_db()
    assert local.status == DropletStatus.ACTIVE
    assert not local.events.exists()


def test_untagged_droplets_are_ignored(digitalocean_api):
    digitalocean_api.add(101, "sc-1", "203.0.113.10")
    digitalocean_api.add(201, "someone-elses-db", "198.51.100.7", tags=["database"])
    digitalocean_api.add(202, "untagged", "198.51.100.8", tags=[])

    sync_droplets_from_digitalocean()

    assert list(Droplet.objects.values_list("digitalocean_id", flat=True)) == [101]


def test_listing_is_read_across_pages(digitalocean_api):
    digitalocean_api.max_per_page = 2
    for n in range(5):
        digitalocean_api.add(100 + n, f"sc-{n}", f"203.0.113.{10 + n}")

    report = sync_droplets_from_digitalocean()

    assert report.count(SyncAction.CREATED) == 5
    assert set(Droplet.objects.values_list("digitalocean_id", flat=True)) == set(range(100, 105))
    assert digitalocean_api.pages_requested() == [1, 2, 3]
    assert {r.authorization for r in digitalocean_api.requests} == {f"Bearer {TOKEN}"}
    assert {r.query["tag_name"] for r in digitalocean_api.requests} == {TAG}


def test_second_run_over_the_same_listing_changes_and_records_nothing(digitalocean_api):
    known_droplet(digitalocean_id=101, name="sc-1-old", ip_address="203.0.113.60")
    known_droplet(digitalocean_id=999, name="sc-gone", ip_address="203.0.113.99")
    digitalocean_api.add(101, "sc-1", "203.0.113.10")
    digitalocean_api.add(102, "sc-2", "203.0.113.11")
    sync_droplets_from_digitalocean()
    before = state()
    assert before[-1] == ("events", 3)

    report = sync_droplets_from_digitalocean()

    assert state() == before
    assert [(o.action, o.detail) for o in report.outcomes] == [
        (SyncAction.UNCHANGED, ""),
        (SyncAction.UNCHANGED, ""),
        (SyncAction.MISSING, "already in maintenance"),
    ]


def test_droplet_without_public_address_yet_is_skipped(digitalocean_api):
    digitalocean_api.add(101, "sc-booting", None, status="new", private_ip=None)

    report = sync_droplets_from_digitalocean()

    assert [o.action for o in report.outcomes] == [SyncAction.SKIPPED]
    assert "no public IPv4 address yet" in report.outcomes[0].detail
    assert not Droplet.objects.exists()


def test_address_of_a_manually_registered_droplet_is_not_taken(digitalocean_api):
    manual = DropletFactory(digitalocean_id=None, name="manual", ip_address="203.0.113.10")
    digitalocean_api.add(101, "sc-1", "203.0.113.10")

    report = sync_droplets_from_digitalocean()

    [outcome] = report.outcomes
    assert outcome.action == SyncAction.SKIPPED
    assert "already belongs to droplet manual" in outcome.detail
    assert "set its DigitalOcean id to 101" in outcome.detail
    assert list(Droplet.objects.all()) == [manual]


def test_empty_listing_does_not_take_the_fleet_out_of_service(digitalocean_api):
    row = known_droplet(digitalocean_id=101, name="sc-1")

    with pytest.raises(CommandError, match=r'no droplet tagged "saferclaw".*--allow-empty'):
        run_sync()
    row.refresh_from_db()
    assert row.status == DropletStatus.ACTIVE

    run_sync("--allow-empty")
    row.refresh_from_db()
    assert row.status == DropletStatus.MAINTENANCE


# --- Failures: nothing changes, and the token stays out of every message -------------------


def test_bad_token_fails_with_clear_error_and_changes_nothing(digitalocean_api, settings):
    wrong_token = "dop_v1_this_one_was_revoked_0123456789abcdef"
    settings.DIGITALOCEAN_API_TOKEN = wrong_token
    known_droplet(digitalocean_id=999, name="sc-gone")
    digitalocean_api.add(101, "sc-1", "203.0.113.10")
    before = state()

    with pytest.raises(CommandError) as excinfo:
        run_sync()

    message = str(excinfo.value)
    assert "DigitalOcean refused the API token" in message
    assert "401 Unauthorized: Unable to authenticate you" in message
    assert "DIGITALOCEAN_API_TOKEN" in message
    assert wrong_token not in message
    assert state() == before


def test_missing_token_is_refused_before_any_request(digitalocean_api, settings):
    settings.DIGITALOCEAN_API_TOKEN = ""

    with pytest.raises(DigitalOceanError, match="DIGITALOCEAN_API_TOKEN is not set") as excinfo:
        list_tagged_droplets(tag=TAG)

    assert excinfo.value.permanent
    assert digitalocean_api.requests == []


@pytest.mark.parametrize(
    ("status", "permanent", "words"),
    [
        (500, False, "server error (500 server_error"),
        (503, False, "server error (503"),
        (429, False, "rate limit"),
        (403, True, "refused the API token (403"),
        (404, True, "no such endpoint (404"),
    ],
)
def test_http_failures_say_whether_a_retry_can_help(digitalocean_api, status, permanent, words):
    digitalocean_api.fail(status)

    with pytest.raises(DigitalOceanError) as excinfo:
        list_tagged_droplets(tag=TAG)

    assert excinfo.value.permanent is permanent
    assert words in str(excinfo.value)
    assert TOKEN not in str(excinfo.value)


def test_server_error_through_the_command_changes_nothing(digitalocean_api):
    known_droplet(digitalocean_id=999, name="sc-gone")
    digitalocean_api.add(101, "sc-1", "203.0.113.10")
    digitalocean_api.fail(500)
    before = state()

    with pytest.raises(CommandError, match=r"server error.*try again later"):
        run_sync()

    assert state() == before


def test_failure_on_a_later_page_changes_nothing(digitalocean_api):
    """A partial listing would mark the droplets on the unread pages missing."""
    digitalocean_api.max_per_page = 1
    known_droplet(digitalocean_id=102, name="sc-2", ip_address="203.0.113.11")
    digitalocean_api.add(101, "sc-1", "203.0.113.10")
    digitalocean_api.add(102, "sc-2", "203.0.113.11")
    digitalocean_api.fail(500, on_page=2)
    before = state()

    with pytest.raises(DigitalOceanError):
        sync_droplets_from_digitalocean()

    assert digitalocean_api.pages_requested() == [1, 2]
    assert state() == before


def test_token_is_not_sent_over_plain_http_to_another_machine(digitalocean_api, settings):
    settings.DIGITALOCEAN_API_URL = "http://api.digitalocean.com"

    with pytest.raises(DigitalOceanError, match="must be an https:// URL") as excinfo:
        list_tagged_droplets(tag=TAG)

    assert excinfo.value.permanent


def test_unreachable_api_is_transient(settings):
    with FakeDigitalOcean() as closed:
        url = closed.url  # a port that is free again once the fake has stopped
    settings.DIGITALOCEAN_API_URL = url
    settings.DIGITALOCEAN_API_TOKEN = TOKEN

    with pytest.raises(DigitalOceanError, match="unreachable") as excinfo:
        list_tagged_droplets(tag=TAG)

    assert not excinfo.value.permanent
    assert TOKEN not in str(excinfo.value)


@pytest.mark.parametrize("elsewhere", ["127.0.0.2", "127.0.0.1"], ids=["other-host", "other-port"])
def test_next_link_to_another_origin_is_not_followed(digitalocean_api, elsewhere):
    digitalocean_api.max_per_page = 1
    digitalocean_api.add(101, "sc-1", "203.0.113.10")
    digitalocean_api.add(102, "sc-2", "203.0.113.11")
    with FakeDigitalOcean(host=elsewhere) as thief:
        thief.droplets = digitalocean_api.droplets
        digitalocean_api.link_base = thief.url

        with pytest.raises(DigitalOceanError, match="another origin") as excinfo:
            sync_droplets_from_digitalocean()

        assert thief.requests == []
    assert excinfo.value.permanent
    assert digitalocean_api.pages_requested() == [1]
    assert not Droplet.objects.exists()


def test_redirect_is_not_followed(digitalocean_api):
    with FakeDigitalOcean(host="127.0.0.2") as thief:
        digitalocean_api.redirect_to = f"{thief.url}/v2/droplets"

        with pytest.raises(DigitalOceanError, match="redirects are not followed") as excinfo:
            list_tagged_droplets(tag=TAG)

        assert thief.requests == []
    assert excinfo.value.permanent


# --- The command's output ------------------------------------------------------------------


def test_command_prints_one_line_per_droplet_and_a_summary(digitalocean_api):
    known_droplet(
        digitalocean_id=101, name="sc-1", ip_address="203.0.113.10", vcpus=2, memory_mb=2048
    )
    known_droplet(
        digitalocean_id=102, name="sc-2", ip_address="203.0.113.11", vcpus=1, memory_mb=1024
    )
    known_droplet(digitalocean_id=999, name="sc-gone", ip_address="203.0.113.99")
    digitalocean_api.add(101, "sc-1", "203.0.113.10", vcpus=2, memory=2048, tags=["fleet-b"])
    digitalocean_api.add(102, "sc-2", "203.0.113.11", vcpus=2, memory=2048, tags=["fleet-b"])
    digitalocean_api.add(103, "sc-3", "203.0.113.12", tags=["fleet-b"])

    output = run_sync("--tag", "fleet-b")

    assert output.splitlines() == [
        "unchanged sc-1 (DigitalOcean id 101)",
        "updated   sc-2 (DigitalOcean id 102): vcpus 1 → 2, memory_mb 1024 → 2048",
        "created   sc-3 (DigitalOcean id 103): 203.0.113.12, in maintenance until its TLS "
        "material is added",
        "missing   sc-gone (DigitalOcean id 999): active → maintenance",
        'DigitalOcean tag "fleet-b": 1 created, 1 updated, 1 unchanged, 1 missing, 0 skipped',
    ]
