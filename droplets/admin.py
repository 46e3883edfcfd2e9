from __future__ import annotations

from django import forms
from django.contrib import admin

from droplets.models import Droplet


class DropletAdminForm(forms.ModelForm):
    # Write-only: the stored key is never rendered back into the page.
    tls_client_key = forms.CharField(
        label="TLS client key",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "autocomplete": "off"}),
        help_text=(
            "PEM. Stored encrypted and never shown again; leave empty to keep the current key."
        ),
    )

    control_plane_url = forms.URLField(
        required=False,
        assume_scheme="https",
        help_text=Droplet._meta.get_field("control_plane_url").help_text,
    )

    class Meta:
        model = Droplet
        fields = [
            "name",
            "digitalocean_id",
            "ip_address",
            "status",
            "vcpus",
            "memory_mb",
            "max_capacity",
            "docker_url",
            "tls_ca_cert",
            "tls_client_cert",
            "tls_client_key",
            "agent_subnet",
            "control_plane_url",
        ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial["tls_client_key"] = ""

    def clean_tls_client_key(self) -> str | None:
        return self.cleaned_data["tls_client_key"] or self.instance.tls_client_key


@admin.register(Droplet)
class DropletAdmin(admin.ModelAdmin):
    form = DropletAdminForm
    list_display = [
        "name",
        "ip_address",
        "status",
        "active_container_count",
        "max_capacity",
        "docker_url",
    ]
    list_filter = ["status"]
    search_fields = ["name", "ip_address"]
    readonly_fields = ["active_container_count", "key_on_file", "created_at", "updated_at"]

    @admin.display(boolean=True, description="Client key on file")
    def key_on_file(self, obj: Droplet) -> bool:
        return obj.tls_client_key is not None
